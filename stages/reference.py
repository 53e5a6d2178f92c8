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

import shutil
import sys
from pathlib import Path

from requant.asr import decodings_for
from requant.clips import build_reference
from requant.common import atomic_path, fail, run_cli
from requant.evalsets import EVAL_AUDIO_DIR, RAW_EVAL_DIR, REFERENCE_DIR, SKIPPED, clip_audio
from requant.params import load_params


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
