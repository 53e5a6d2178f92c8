"""The blockwise attention rewrite at Parakeet scale: one pass before and after, side by side.

    python -m bench.blockwise --twin /tmp/web-check/twin --int8 /tmp/web-check/int8 [--lengths 30 120 390]

Rewrites the twin's fp32 encoder and its SmoothQuant int8 encoder (graph only: the rewritten graph points at
the same weight files) and runs bench.tasks' `encoder_pass` on the original and the rewrite in turn, each in
its own process, for each pass length; prints pass time and peak RSS and writes metrics/bench_blockwise.json.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from bench.cost import run_task
from requant.attention import rewrite
from requant.common import run_cli, write_json

log = logging.getLogger("bench.blockwise")
OUT = Path("metrics/bench_blockwise.json")


def rewritten_beside(src: Path, block: int) -> Path:
    """The rewritten graph saved next to src (so that its external data resolves), named *.blockwise.onnx."""
    model = onnx.load(src, load_external_data=False)
    new, refused = rewrite(model, block)
    if refused:
        log.warning("%s: %d attention sites left as they were: %s", src, len(refused), refused[0])
    dst = src.with_name(src.stem + ".blockwise.onnx")
    onnx.save(new, dst)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twin", type=Path, required=True, help="python -m bench.twin folder")
    parser.add_argument("--int8", type=Path, required=True, help="folder of the twin's SmoothQuant int8 encoder")
    parser.add_argument("--lengths", type=float, nargs="+", default=[30.0, 120.0, 390.0])
    parser.add_argument("--block", type=int, default=64)
    args = parser.parse_args()
    from demo.synth import make_speech

    encoders = {"fp32": args.twin / "encoder-model.onnx", "int8_smoothquant": args.int8 / "encoder-model.int8.onnx"}
    with tempfile.TemporaryDirectory(prefix="bench-blockwise-") as scratch:
        work = Path(scratch)
        audio = work / "speech.npy"
        np.save(audio, make_speech("en", "en-us+m3", max(args.lengths), 11)[0])
        rows = []
        for name, src in encoders.items():
            pair = {"original": src, "blockwise": rewritten_beside(src, args.block)}
            for seconds in args.lengths:
                for form, model in pair.items():
                    r = run_task("encoder_pass", {"model": str(model), "audio": str(audio), "seconds": seconds},
                                 work, f"{name}-{form}-{seconds:g}")
                    rows.append({"variant": name, "form": form, "audio_s": seconds,
                                 "pass_s": round(r["phases"]["pass"]["wall_s"], 2),
                                 "peak_rss_gb": round(r["peak_rss_mb"] / 1e3, 2)})
            pair["blockwise"].unlink()
    write_json(OUT, {"block": args.block, "passes": rows})
    print(f"{'variant':<17} {'pass':>6} {'original s / GB':>16} {'blockwise s / GB':>17}")
    for name in encoders:
        for seconds in args.lengths:
            cell = {r["form"]: r for r in rows if r["variant"] == name and r["audio_s"] == seconds}
            print(f"{name:<17} {seconds:>5g}s {cell['original']['pass_s']:>9.1f} / {cell['original']['peak_rss_gb']:.2f}"
                  f" {cell['blockwise']['pass_s']:>10.1f} / {cell['blockwise']['peak_rss_gb']:.2f}")


if __name__ == "__main__":
    run_cli(main)
