"""The fp32 reference of one evaluation clip: each section transcribed on its own, as a short clip.

Short clips are what every encoder handles well, so these transcripts are the yardstick the long
single pass of each variant is scored against (as in the original model card). They depend on the
fp32 model and the clip only, so a new recipe never re-runs them.
Each decoding in eval.decodings gets its own reference, so that a beam-decoded long pass is measured
against beam-decoded short clips. Run as `python -m stages.reference <clip>`. Output:
data/reference/<clip>/sections.json [{index, start_s, end_s, text: {decoding: text}}] and, when the
clip has a true transcript, truth.txt (a skipped clip:
skipped.json).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from requant.asr import SAMPLE_RATE, assemble_model_dir, decodings_for, load_asr, load_clip, recognize_all
from requant.common import atomic_path, fail, run_cli, write_json
from requant.evalsets import EVAL_AUDIO_DIR, RAW_EVAL_DIR, REFERENCE_DIR, SECTIONS_FILE, SKIPPED, TRUTH_FILE, clip_audio
from requant.params import BeamParams, load_params
from requant.scoring import make_sections

log = logging.getLogger("pipeline.reference")



def build_reference(
    audio_path: Path, raw_dir: Path, out_dir: Path, section_s: float, max_s: float, decoder: str, root: Path,
    decodings: dict[str, BeamParams | None] | None = None,
) -> list[dict]:
    """Each section alone through fp32, under each decoding (default: greedy only)."""
    decodings = decodings or {"greedy": None}
    audio = load_clip(audio_path, max_s)
    sections = make_sections(len(audio) / SAMPLE_RATE, section_s)
    with tempfile.TemporaryDirectory(prefix="reference-model-") as model_dir:
        assemble_model_dir("fp32", decoder, Path(model_dir), root)
        asr = load_asr(Path(model_dir))
        rows = []
        for section in tqdm(sections, desc="fp32 reference sections", unit="section"):
            clip = audio[round(section.start_s * SAMPLE_RATE) : round(section.end_s * SAMPLE_RATE)]
            found = recognize_all(asr, [clip], decodings).transcripts
            texts = {name: found[name][0].text.strip() for name in decodings}
            rows.append({"index": section.index, "start_s": section.start_s, "end_s": section.end_s, "text": texts})
            log.info("section %s: %s words", section.label, {k: len(v.split()) for k, v in texts.items()})
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        write_json(tmp / SECTIONS_FILE, rows)
        truth = raw_dir / "transcript.txt"
        if truth.is_file():
            shutil.copyfile(truth, tmp / TRUTH_FILE)
        else:
            log.info("no true transcript in %s: WER against the truth will not be reported", raw_dir)
    return rows


def main() -> None:
    p = load_params()
    if len(sys.argv) != 2 or sys.argv[1] not in p.eval_clips:
        fail(f"usage: python -m stages.reference <clip>, clip one of {', '.join(p.eval_clips)} (params.yaml eval_clips)")
    clip, out = sys.argv[1], REFERENCE_DIR / sys.argv[1]
    if (EVAL_AUDIO_DIR / clip / SKIPPED).is_file():
        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            shutil.copyfile(EVAL_AUDIO_DIR / clip / SKIPPED, tmp / SKIPPED)
        return
    build_reference(clip_audio(clip), RAW_EVAL_DIR / clip, out, p.eval.section_s, p.eval.max_s, p.eval.decoder,
                    Path("."), decodings_for(p.eval.decodings, p.beam))


if __name__ == "__main__":
    run_cli(main)
