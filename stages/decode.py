"""Stage `decode`: data/raw/<name>/ (any container) -> data/audio/<name>.wav, 16 kHz mono float32.

An evaluation clip goes from data/raw/eval/<name>/ to data/audio/eval/<name>/audio.wav (or a
skipped.json, when its fetch was skipped).

The crop recorded in provenance.json (offset_s into the stored file, crop_s long) is applied here,
so the WAV holds exactly round(crop_s * sample_rate) samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from requant.audio import check_audio, decode_audio, write_wav
from requant.common import atomic_path, fail, read_json, run_cli, write_json
from requant.evalsets import EVAL_AUDIO_DIR, RAW_EVAL_DIR, SKIPPED, clip_audio
from requant.params import load_params

RAW_DIR, AUDIO_DIR = Path("data/raw"), Path("data/audio")


def decode(raw_dir: Path, out_wav: Path, sample_rate: int) -> int:
    """Decode the fetched clip in raw_dir to out_wav; return the number of samples written."""
    provenance_path = raw_dir / "provenance.json"
    if not provenance_path.is_file():
        fail(f"{provenance_path} is missing; run the fetch stage first (dvc repro)")
    provenance = read_json(provenance_path)
    source = raw_dir / provenance["file"]
    audio = decode_audio(source, sample_rate, float(provenance["offset_s"]), float(provenance["crop_s"]))
    check_audio(audio, str(source))
    with atomic_path(out_wav) as tmp:
        write_wav(tmp, audio, sample_rate)
    return len(audio)


def decode_eval_clip(raw_dir: Path, out_dir: Path, sample_rate: int) -> int:
    """An evaluation clip to out_dir/audio.wav, or out_dir/skipped.json; return the samples written."""
    provenance_path = raw_dir / "provenance.json"
    skipped = provenance_path.is_file() and "skipped" in read_json(provenance_path)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if skipped:
            write_json(tmp / SKIPPED, read_json(provenance_path))
            return 0
        return decode(raw_dir, tmp / clip_audio(out_dir.name).name, sample_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a speech key from params.yaml, or 'eval' and an eval_clips key")
    parser.add_argument("clip", nargs="?", help="the evaluation clip (with 'eval')")
    params = load_params()  # first: a key that DVC split into two arguments is named by the params check
    args = parser.parse_args()
    if args.name == "eval":
        if args.clip not in params.eval_clips:
            fail(f"'{args.clip}' is not in params.yaml eval_clips ({', '.join(params.eval_clips)})")
        decode_eval_clip(RAW_EVAL_DIR / args.clip, EVAL_AUDIO_DIR / args.clip, params.audio.sample_rate)
        return
    if args.name not in params.speeches:
        fail(f"'{args.name}' is neither 'eval' nor a speech in params.yaml ({', '.join(params.speeches)})")
    decode(RAW_DIR / args.name, AUDIO_DIR / f"{args.name}.wav", params.audio.sample_rate)


if __name__ == "__main__":
    run_cli(main)
