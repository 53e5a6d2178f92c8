"""Stage `decode`: data/raw/<name>/ (any container) -> data/audio/<name>.wav, 16 kHz mono float32.

The crop recorded in provenance.json (offset_s into the stored file, crop_s long) is applied here,
so the WAV holds exactly round(crop_s * sample_rate) samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from requant.audio import check_audio, decode_audio, write_wav
from requant.common import atomic_path, fail, read_json, run_cli
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a speech key from params.yaml, or 'eval'")
    name = parser.parse_args().name
    params = load_params()
    if name != "eval" and name not in params.speeches:
        fail(f"'{name}' is neither 'eval' nor a speech in params.yaml ({', '.join(params.speeches)})")
    decode(RAW_DIR / name, AUDIO_DIR / f"{name}.wav", params.audio.sample_rate)


if __name__ == "__main__":
    run_cli(main)
