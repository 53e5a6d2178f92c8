"""Stage `decode`: data/raw/<name>/ (any container) -> data/audio/<name>.wav, 16 kHz mono float32.

An evaluation clip goes from data/raw/eval/<name>/ to data/audio/eval/<name>/audio.wav (or a
skipped.json, when its fetch was skipped).

The crop recorded in provenance.json (offset_s into the stored file, crop_s long) is applied here,
so the WAV holds exactly round(crop_s * sample_rate) samples.
"""

from __future__ import annotations

import argparse

from requant.clips import AUDIO_DIR, RAW_DIR, decode, decode_eval_clip
from requant.common import fail, run_cli
from requant.evalsets import EVAL_AUDIO_DIR, RAW_EVAL_DIR
from requant.params import load_params


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
