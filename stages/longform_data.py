"""Stage `longform_data`: the long-form recordings (longform_clips), past one pass's 400 s cap.

Each clip goes the way the evaluation clips go, with the same code: fetched or, in the demo preset,
synthesized with held-out voices and a text seed of its own, decoded to 16 kHz mono, and transcribed by
fp32 in eval.section_s sections, each alone (requant/clips.py, as stages fetch, decode and reference):
the yardstick every way of decoding the whole recording is scored against, with the true transcript.
Output: data/longform/<clip>/{raw, audio/audio.wav, reference/sections.json + truth.txt}; a clip the
preset skips holds audio/skipped.json only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from demo.synth import make_speech
from requant.asr import decodings_for
from requant.clips import build_reference, decode_eval_clip, fetch
from requant.common import atomic_path, run_cli
from requant.evalsets import LONGFORM_DIR, SKIPPED, clip_audio
from requant.params import Params, load_params

log = logging.getLogger("pipeline.longform_data")

def build_longform_data(p: Params, out_dir: Path, root: Path = Path(".")) -> list[str]:
    """Every long-form clip into out_dir (atomically); return the clips that are scored (not skipped)."""
    scored = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name, clip in tqdm(p.longform_clips.items(), desc="long-form clips", unit="clip"):
            fetch(clip, p, tmp / name / "raw", make_speech)
            decode_eval_clip(tmp / name / "raw", tmp / name / "audio", p.audio.sample_rate)
            if (tmp / name / "audio" / SKIPPED).is_file():
                log.info("%s: skipped by the %s preset", name, p.preset)
                continue
            build_reference(clip_audio("audio", tmp / name), tmp / name / "raw", tmp / name / "reference",
                            p.eval.section_s, clip.crop_s, p.eval.decoder, root, decodings_for(["greedy"], p.beam))
            scored.append(name)
    return scored


def main() -> None:
    p = load_params()
    scored = build_longform_data(p, LONGFORM_DIR)
    log.info("long-form clips ready: %s", ", ".join(scored) or "none (every clip is skipped by this preset)")


if __name__ == "__main__":
    run_cli(main)
