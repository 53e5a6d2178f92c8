"""Passes past the 400 s cap at Parakeet scale: the twin's SmoothQuant int8 encoder, full and local attention.

    python -m bench.any_length [--work /tmp/web-check] [--full 1200] [--local 1200 3600] [--context 256 256]

Builds (or reuses, from `make web-check`'s folder) the Parakeet-size random twin and its SmoothQuant
int8 encoder, rewrites the int8 graph with the blockwise stage's own code (positions past the table,
blockwise attention, chunked subsampling; graph only, the weights stay where they are): once with full
attention, once with local attention over --context frames. Then one pass per length, each in its own
process (bench.tasks encoder_pass): pass time and peak RSS. The unrewritten graph cannot run past 400 s
(its positional table), so there is nothing to compare against but the rewrite's own cost curve.
JSON: metrics/bench_any_length.json.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from bench.cost import run_task
from bench.fixtures import child, prepare_twin, speech
from requant.common import run_cli, write_json
from requant.params import BlockwiseParams
from requant.long_pass import rewrite_long_pass

log = logging.getLogger("bench.any_length")
OUT = Path(__file__).resolve().parents[1] / "metrics/bench_any_length.json"


BUILD_INT8 = """
import sys
from pathlib import Path
from requant.static_int8 import build_int8
from stages.smoothquant import smooth_encoder
twin, work = Path(sys.argv[1]), Path(sys.argv[2])
smooth_encoder(twin / "encoder-model.onnx", work / "smoothed", work / "windows", alpha=0.5)
build_int8(work / "smoothed/encoder-model.onnx", work / "int8", work / "windows", 99.999, 0, min_cosine=-1.0)
"""


def int8_twin(work: Path, windows: int) -> Path:
    """The twin's SmoothQuant int8 encoder, MatMuls only, as this bench was measured with (built once)."""
    if not (work / "int8").is_dir():
        child("-c", BUILD_INT8, str(prepare_twin(work, windows)), str(work))
    return work / "int8/encoder-model.int8.onnx"


def rewritten(src: Path, context: list[int] | None) -> Path:
    model, report = rewrite_long_pass(onnx.load(src, load_external_data=False), BlockwiseParams(64, 256, 0.0),
                                      src.parent, context)
    if not report["sites"] or not report["positions"]["extended"]:
        raise SystemExit(f"{src}: the rewrite did not take the twin's graph: {report}")
    dst = src.with_name(f"{src.stem}.{'local' if context else 'full'}.onnx")
    onnx.save(model, dst)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/web-check"))
    parser.add_argument("--full", type=float, nargs="*", default=[1200.0], help="pass lengths, full attention (s)")
    parser.add_argument("--local", type=float, nargs="*", default=[1200.0, 3600.0], help="pass lengths, local (s)")
    parser.add_argument("--context", type=int, nargs=2, default=[256, 256])
    parser.add_argument("--windows", type=int, default=4, help="calibration windows for a new int8 twin")
    args = parser.parse_args()
    src = int8_twin(args.work, args.windows)
    plan = [("full", None, s) for s in args.full] + [("local", args.context, s) for s in args.local]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-any-length-") as scratch:
        work = Path(scratch)
        audio = work / "speech.npy"
        np.save(audio, speech(max(s for *_, s in plan), 12))
        models = {form: rewritten(src, context) for form, context, _ in plan}
        for form, context, seconds in plan:
            r = run_task("encoder_pass", {"model": str(models[form]), "audio": str(audio), "seconds": seconds}, work,
                         f"{form}-{seconds:g}")
            rows.append({"form": form, "context": context, "audio_s": seconds, "frames": r.get("frames"),
                         "finite": r.get("finite"), "pass_s": round(r["phases"]["pass"]["wall_s"], 1),
                         "peak_rss_gb": round(r["peak_rss_mb"] / 1e3, 2)})
            log.info("%s", rows[-1])
        for model in models.values():
            model.unlink()
    write_json(OUT, {"encoder": "twin SmoothQuant int8", "block": 64, "subsampling_block": 256, "passes": rows})
    print(f"{'attention':<22} {'pass':>8} {'frames':>7} {'time':>9} {'peak RSS':>9}")
    for r in rows:
        label = "full" if r["context"] is None else f"local {r['context']}"
        print(f"{label:<22} {r['audio_s'] / 60:>6.0f} min {r['frames']:>7} {r['pass_s']:>8.1f}s {r['peak_rss_gb']:>7.2f} GB")


if __name__ == "__main__":
    run_cli(main)
