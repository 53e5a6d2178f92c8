"""Where an encoder pass goes, per op type, at Parakeet scale: fp32 and the default int8, each as exported and
with the attention's glue rewritten (requant/glue.py), at 30 s and 390 s.

    python -m bench.op_profile --work /tmp/op-profile          # builds the twin there first if absent

The default int8 is built as the pipeline chains it (pointwise convs as MatMuls, SmoothQuant, static int8),
from the attention as exported; its glued form is the same graph with requant/glue.py applied, weights shared,
so the two differ in the glue alone. Each pass runs in a process of its own (bench.tasks.encoder_pass): one
plain pass for the time, then one under onnxruntime's profiler for the kernel time per op type. The table
and metrics/bench_op_profile.json carry the CPU kind and its bare int8-vs-fp32 GEMM ratio (bench.gemm): the
ceiling an int8 encoder's speed-up is measured against. Not part of `dvc repro`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx

from bench.cost import ENCODER, run_task
from bench.fixtures import ROOT, pipeline_params, prepare_twin, speech
from bench.gemm import gemm_rates
from bench.meter import machine
from requant import glue
from requant.common import run_cli, write_json
from requant.static_int8 import NAME as INT8_NAME

log = logging.getLogger("bench.op_profile")
CALIBRATION_WINDOWS = 4  # random weights: the calibration's quality says nothing; its cost is bench.cost's
TOP_OPS = 10


def build_int8(twin: Path, work: Path) -> Path:
    """The default int8 from the attention as exported: pointwise, smoothquant, static int8 (bench.tasks)."""
    int8 = work / "int8" / INT8_NAME
    if int8.is_file():
        return int8
    params = pipeline_params()
    run_task("pointwise", {"src": str(twin / ENCODER), "dst_dir": str(work / "pointwise"),
                           "windows_dir": str(work / "windows"), "glue": False}, work, "pointwise")
    run_task("smoothquant", {"src": str(work / "pointwise" / ENCODER), "dst_dir": str(work / "smoothed"),
                             "windows_dir": str(work / "windows"), "alpha": params.smooth.alpha}, work, "smoothquant")
    run_task("int8_static", {"src": str(work / "smoothed" / ENCODER), "dst_dir": str(work / "int8"),
                             "windows_dir": str(work / "windows"), "min_cosine": -1.0,
                             "percentile": params.quant.percentile, "reduce_range": params.quant.reduce_range},
             work, "int8")
    for folder in ("pointwise", "smoothed"):
        shutil.rmtree(work / folder)
    return int8


def glued_beside(encoder: Path) -> Path:
    """encoder with requant/glue.py applied, written beside it: a graph file reading the same weights."""
    model = onnx.load(encoder, load_external_data=False)
    log.info("%s: %s", encoder.name, glue.simplify(model))
    out = encoder.with_name(encoder.name.replace(".onnx", ".glued.onnx"))
    onnx.save(model, out)  # its external data references stay relative: the same weights file
    return out


def profile(encoders: dict[str, Path], lengths: list[float], work: Path) -> list[dict]:
    audio = work / "audio.npy"
    np.save(audio, speech(max(lengths), seed=11))
    (work / "profiles").mkdir(exist_ok=True)  # onnxruntime's profiler writes there
    rows = []
    for seconds in lengths:
        for name, encoder in encoders.items():
            args = {"model": str(encoder), "audio": str(audio), "seconds": seconds}
            plain = run_task("encoder_pass", args, work, f"{name}_{seconds:g}s")
            profiled = run_task("encoder_pass", {**args, "profile_dir": str(work / "profiles")}, work,
                                f"{name}_{seconds:g}s_profiled")
            rows.append({"encoder": name, "audio_s": seconds, "pass_s": plain["phases"]["pass"]["wall_s"],
                         "peak_rss_mb": plain["peak_rss_mb"], "kernel_s": round(sum(profiled["op_seconds"].values()), 3),
                         "op_seconds": profiled["op_seconds"]})
            log.info("%s at %g s: %.2f s", name, seconds, rows[-1]["pass_s"])
    return rows


def table(result: dict) -> str:
    m, g = result["machine"], result["machine"]["gemm"]
    lines = [f"Machine: {m['cpu_model']}, {m['cpus']} cores; {', '.join(m['isa'][-4:])}; bare GEMM int8 "
             f"{g['int8_vs_fp32']}x fp32.", "",
             "| encoder | pass | time | x fp32 | kernels | top ops (s) |", "|---|---|---|---|---|---|"]
    fp32 = {r["audio_s"]: r["pass_s"] for r in result["passes"] if r["encoder"] == "fp32"}
    for r in result["passes"]:
        top = ", ".join(f"{op} {s:.2f}" for op, s in list(r["op_seconds"].items())[:TOP_OPS])
        lines.append(f"| {r['encoder']} | {r['audio_s']:g} s | {r['pass_s']:.2f} s | "
                     f"{fp32[r['audio_s']] / r['pass_s']:.2f}x | {r['kernel_s']:.2f} s | {top} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/op-profile"))
    parser.add_argument("--lengths", type=float, nargs="+", default=[30.0, 390.0])
    parser.add_argument("--out", type=Path, default=ROOT / "metrics/bench_op_profile.json")
    args = parser.parse_args()
    twin = prepare_twin(args.work, CALIBRATION_WINDOWS)
    int8 = build_int8(twin, args.work)
    encoders = {"fp32": twin / ENCODER, "fp32 glued": glued_beside(twin / ENCODER),
                "int8": int8, "int8 glued": glued_beside(int8)}
    result = {"machine": {**machine(), "gemm": gemm_rates()}, "passes": profile(encoders, args.lengths, args.work)}
    write_json(args.out, result)
    print(table(result))


if __name__ == "__main__":
    run_cli(main)
