"""diagnose's one pass at Parakeet scale: the fp32 encoder's pass alone, against the combined graph that
measures every quantized MatMul of a variant in the same pass (requant/matmul_errors.py).

    python -m bench.twin --out /tmp/twin --stock-int8
    python -m bench.diagnose_pass --twin /tmp/twin --lengths 30 390

The variant is the twin's stock int8 (every weighted MatMul quantized dynamically: the most kernels a
diagnosed variant has). Each pass runs in a process of its own, so that its peak RSS (VmHWM) is its own;
the table gives session load, pass time and peak per length, and metrics/bench_diagnose.json the figures
with the CPU. Not part of `dvc repro`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.meter import machine
from bench.fixtures import ROOT, speech
from requant import encoder_runs as runs
from requant import matmul_errors as errors
from requant.common import memory_bytes, run_cli, write_json
from requant.features import features


def one_pass(twin: Path, kind: str, audio: Path) -> dict[str, float]:
    """In this process: one pass of the fp32 encoder ("fp32") or of the error graph ("errors"); run_cli has
    glibc return large blocks, as in every stage."""
    signal, length = features(np.load(audio))
    feed = {"audio_signal": signal, "length": length}
    started, found = time.perf_counter(), {"int8": {}}
    with contextlib.ExitStack() as stack:
        if kind == "fp32":
            path, names = twin / "encoder-model.onnx", ["outputs"]
        else:
            path, found = stack.enter_context(errors.error_graph(twin / "encoder-model.onnx",
                                                                 {"int8": twin / "encoder-model.int8.onnx"}))
            names = ["outputs", *errors.sum_outputs(found)]
        session = runs.open_session(path)
        loaded = time.perf_counter()
        values = dict(zip(names, session.run(names, feed)))
        done = time.perf_counter()
    matmuls = len(found["int8"])
    worst = max(errors.relative_errors(values, found["int8"]).values()) if matmuls else None
    return {"load_s": round(loaded - started, 1), "pass_s": round(done - loaded, 1),
            "peak_rss_gb": round(memory_bytes("VmHWM") / 1e9, 2), "matmuls": matmuls, "worst_rel_error": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twin", type=Path, required=True, help="python -m bench.twin --out DIR --stock-int8")
    parser.add_argument("--lengths", type=float, nargs="+", default=[30.0, 390.0])
    parser.add_argument("--out", type=Path, default=ROOT / "metrics/bench_diagnose.json")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "AUDIO"), help=argparse.SUPPRESS)  # a child's pass
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_pass(args.twin, args.one[0], Path(args.one[1]))))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="diagnose-audio-") as folder:
        for seconds in args.lengths:
            audio = Path(folder) / f"{seconds:g}.npy"
            np.save(audio, speech(seconds, seed=11))
            for kind in ("fp32", "errors"):
                done = subprocess.run([sys.executable, "-m", "bench.diagnose_pass", "--twin", str(args.twin),
                                       "--one", kind, str(audio)], cwd=ROOT, capture_output=True, text=True,
                                      check=True, timeout=3600)
                rows.append({"audio_s": seconds, "kind": kind, **json.loads(done.stdout.splitlines()[-1])})
                print(rows[-1], flush=True)
    write_json(args.out, {"machine": machine(), "twin": str(args.twin), "passes": rows})
    print(f"\n{'pass':>6} {'graph':>7} {'load s':>7} {'pass s':>7} {'peak GB':>8}")
    for r in rows:
        print(f"{r['audio_s']:>5g}s {r['kind']:>7} {r['load_s']:>7} {r['pass_s']:>7} {r['peak_rss_gb']:>8}")


if __name__ == "__main__":
    run_cli(main)
