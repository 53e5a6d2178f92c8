"""Stage `leaderboard_data`: the Open ASR Leaderboard's long-form sets, each recording at 16 kHz with its truth
and fp32's short-section references -> data/leaderboard/.

Each set (params.yaml leaderboard_sets) comes from its Hugging Face dataset repo at the pinned revision
(requant/leaderboard.py): the first leaderboard.recordings rows, decoded whole. The demo presets synthesize
two recordings of leaderboard.demo_minutes per set instead, in held-out voices and text seeds of their own,
through the same code as the evaluation clips. With leaderboard.recordings 0 the track is off and the
folder holds skipped.json. Output: data/leaderboard/<set>/<nnn>/{raw, audio/audio.wav, reference/}.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from demo.synth import make_speech
from requant.asr import SAMPLE_RATE
from requant.audio import check_audio, decode_audio, write_wav
from requant.clips import build_reference, decode_eval_clip, fetch
from requant.common import atomic_path, fail, run_cli, sha256_file, write_json
from requant.evalsets import LEADERBOARD_DIR, SKIPPED, clip_audio
from requant.leaderboard import recordings, set_files
from requant.params import EvalClip, Params, load_params

log = logging.getLogger("pipeline.leaderboard_data")
DEMO_RECORDINGS = 2
DEMO_VOICES = ("en-us+m3", "en-gb+f2")  # held out: in neither training nor calibration


def demo_recording(p: Params, set_name: str, index: int, folder: Path) -> None:
    clip = EvalClip(name=f"leaderboard-{set_name}-{index:03d}", lang="en", source=None, start_s=0.0,
                    crop_s=p.leaderboard.demo_minutes * 60, demo_voice=DEMO_VOICES[index % len(DEMO_VOICES)])
    fetch(clip, p, folder / "raw", make_speech)
    decode_eval_clip(folder / "raw", folder / "audio", SAMPLE_RATE)


def downloaded_set(p: Params, set_name: str, out: Path) -> int:
    """The set's first leaderboard.recordings recordings into out/<nnn>/{raw, audio}; how many there were."""
    spec = p.leaderboard_sets[set_name]
    count = 0
    for found in recordings(spec, set_files(spec), p.leaderboard.recordings):
        raw = out / f"{found.index:03d}" / "raw"
        raw.mkdir(parents=True)
        source = raw / f"source{found.suffix}"
        source.write_bytes(found.audio)
        audio = decode_audio(source, SAMPLE_RATE)
        check_audio(audio, found.source)
        if len(audio) > p.leaderboard.max_s * SAMPLE_RATE:
            fail(f"{found.source}: {len(audio) / SAMPLE_RATE:.0f} s, over leaderboard.max_s="
                 f"{p.leaderboard.max_s:g}; raise it in params.yaml (one pass takes any length, in more memory)")
        (raw / "transcript.txt").write_text(found.text + "\n", encoding="utf-8")
        write_json(raw / "provenance.json", {"name": f"{set_name}-{found.index:03d}", "source": found.source,
                                             "file": source.name, "sha256": sha256_file(source),
                                             "decoded_s": len(audio) / SAMPLE_RATE})
        (out / f"{found.index:03d}" / "audio").mkdir()
        write_wav(clip_audio("audio", out / f"{found.index:03d}"), audio, SAMPLE_RATE)
        count += 1
    return count


def build_leaderboard_data(p: Params, out_dir: Path, root: Path = Path(".")) -> dict[str, list[str]]:
    """Every set's recordings into out_dir (atomically); set -> its recordings' folder names."""
    found: dict[str, list[str]] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if not p.leaderboard.recordings:
            write_json(tmp / SKIPPED, {"skipped": "leaderboard.recordings is 0: the long-form track is off"})
            return found
        for set_name in tqdm(p.leaderboard_sets, desc="leaderboard sets", unit="set"):
            if p.is_demo:
                for index in range(min(DEMO_RECORDINGS, p.leaderboard.recordings)):
                    demo_recording(p, set_name, index, tmp / set_name / f"{index:03d}")
            else:
                (tmp / set_name).mkdir()
                downloaded_set(p, set_name, tmp / set_name)
            found[set_name] = sorted(path.name for path in (tmp / set_name).iterdir())
            for name in found[set_name]:
                folder = tmp / set_name / name
                build_reference(clip_audio("audio", folder), folder / "raw", folder / "reference", p.eval.section_s,
                                p.leaderboard.max_s, p.eval.decoder, root)
            log.info("%s: %d recordings", set_name, len(found[set_name]))
    return found


def main() -> None:
    build_leaderboard_data(load_params(), LEADERBOARD_DIR)


if __name__ == "__main__":
    run_cli(main)
