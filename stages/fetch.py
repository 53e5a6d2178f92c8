"""Stage `fetch`: one calibration speech -> data/raw/<name>/, or one evaluation clip -> data/raw/eval/<name>/.

The work is requant/clips.py's fetch. Sources, in order: a file `<name>.<ext>` in fetch.local_dir (speeches only) or a local path given as
the source is copied; otherwise the demo preset synthesizes speech with espeak-ng and the parakeet
preset downloads the crop with yt-dlp (youtube:<id> or an http(s) URL); a demo-only evaluation clip
(no source) gets a provenance.json that says it is skipped under the parakeet preset. provenance.json records
the source, the crop, where the crop starts inside the stored file (offset_s, used by the decode
stage), its sha256 and decoded duration, and the tool versions.
"""

from __future__ import annotations

import argparse

from demo.synth import make_speech
from requant.clips import RAW_DIR, fetch
from requant.common import fail, run_cli
from requant.evalsets import RAW_EVAL_DIR
from requant.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["speech", "eval"])
    parser.add_argument("name", help="the speech's (or evaluation clip's) key in params.yaml")
    params = load_params()  # first: a key that DVC split into two arguments is named by the params check
    args = parser.parse_args()
    clips = params.eval_clips if args.kind == "eval" else params.speeches
    group = "eval_clips" if args.kind == "eval" else "speeches"
    if args.name not in clips:
        fail(f"'{args.name}' is not in params.yaml {group} ({', '.join(clips)})")
    fetch(clips[args.name], params, (RAW_EVAL_DIR if args.kind == "eval" else RAW_DIR) / args.name, make_speech)


if __name__ == "__main__":
    run_cli(main)
