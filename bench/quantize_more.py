"""What quantizing the pointwise convs and activation-aware weight-only buy, on the Parakeet-size twin.

    python -m bench.quantize_more [--work /tmp/web-check] [--windows 4] [--short 30] [--long 390]

One run, side by side on one machine (the CPU is recorded: the int8 and weight-only ratios differ
between CPU kinds). Built with the stages' own functions, each step in its own process (bench.tasks):
the pointwise rewrite of the twin, SmoothQuant, static int8 over every weighted MatMul and pointwise
conv (the default) and over the MatMuls only (the convs fp32, as before), round-to-nearest and
activation-aware w8/w4. Then per variant: file size and one --short s pass; the fp32 and int8 encoders
again over --long s through the blockwise rewrite (graph only); the default int8 once more under
onnxruntime's profiler (time per op type). Builds are kept in <work>/quantize-more and reused by a later run (--build-only
stops after them, so that the passes can be timed on a quiet machine). JSON: metrics/bench_quantize_more.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import onnx

from bench.cost import pipeline_params, run_task
from bench.meter import machine
from bench.fixtures import prepare_twin, speech
from requant import onnx_graph as og
from requant import pointwise
from requant.common import run_cli, write_json
from requant.long_pass import rewrite_long_pass

log = logging.getLogger("bench.quantize_more")
OUT = Path(__file__).resolve().parents[1] / "metrics/bench_quantize_more.json"
INT8 = "encoder-model.int8.onnx"


def build(twin: Path, work: Path, windows: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    """Every variant's encoder file, and each build step's record (time, peak RSS, summary)."""
    params = pipeline_params()
    steps: dict[str, dict] = {}

    def step(label: str, task: str, args: dict) -> None:
        done = work / "results" / f"{label}.json"
        if Path(args["dst_dir"]).is_dir() and done.is_file():  # built by an earlier (--build-only) run
            steps[label] = json.loads(done.read_text())
        else:
            steps[label] = run_task(task, args, work, label)

    src = twin / "encoder-model.onnx"
    step("pointwise", "pointwise", {"src": str(src), "dst_dir": str(work / "pointwise"), "windows_dir": str(windows)})
    pw = work / "pointwise/encoder-model.onnx"
    step("smoothquant", "smoothquant", {"src": str(pw), "dst_dir": str(work / "smoothed"),
                                        "windows_dir": str(windows), "alpha": params.smooth.alpha})
    smoothed = work / "smoothed/encoder-model.onnx"
    keep = pointwise.rewritten_matmuls(og.load_graph(smoothed).graph)
    static = {"src": str(smoothed), "windows_dir": str(windows), "percentile": params.quant.percentile,
              "reduce_range": params.quant.reduce_range, "min_cosine": -1.0}  # random weights: recorded, not gated
    step("int8_smoothquant", "int8_static", {**static, "dst_dir": str(work / "int8_smoothquant")})
    step("int8_matmul_only", "int8_static", {**static, "dst_dir": str(work / "int8_matmul_only"), "keep_fp32": keep})
    step("int8_dynamic", "int8_dynamic", {"src": str(src), "dst_dir": str(work / "int8_dynamic")})
    files = {"fp32": src, "int8_dynamic": work / "int8_dynamic" / INT8, "int8_matmul_only": work / "int8_matmul_only" / INT8,
             "int8_smoothquant": work / "int8_smoothquant" / INT8}
    for name, spec in params.nbits.items():
        args = {"src": str(pw), "dst_dir": str(work / f"nbits_{name}"), "name": f"encoder-model.{name}.onnx",
                "recipe": dataclasses.asdict(spec), "windows_dir": str(windows),
                "aware": dataclasses.asdict(params.aware)}
        step(f"nbits_{name}", "nbits", args)
        files[f"nbits_{name}"] = work / f"nbits_{name}" / f"encoder-model.{name}.onnx"
    return files, steps


def blockwise(encoder: Path) -> Path:
    """The blockwise rewrite of `encoder` beside it (graph only: it reads the same weights)."""
    model, _ = rewrite_long_pass(onnx.load(encoder, load_external_data=False), pipeline_params().blockwise,
                                 encoder.parent)
    dst = encoder.with_name(f"{encoder.stem}.blockwise.onnx")
    onnx.save(model, dst)
    return dst


def mb(encoder: Path) -> float:
    return round(sum(p.stat().st_size for p in og.data_files(og.load_graph(encoder), encoder.parent))
                 / 1e6 + encoder.stat().st_size / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/web-check"), help="holds (or gets) the twin")
    parser.add_argument("--windows", type=int, default=4, help="calibration windows")
    parser.add_argument("--lengths", type=float, nargs="+", default=[30.0, 120.0], help="passes of every variant (s)")
    parser.add_argument("--long", type=float, default=390.0, help="blockwise pass of fp32 and the int8s (s)")
    parser.add_argument("--build-only", action="store_true", help="build the variants and stop (a later run reuses them)")
    args = parser.parse_args()
    twin = prepare_twin(args.work, args.windows)
    work = args.work / "quantize-more"
    files, steps = build(twin, work, args.work / "windows")
    if args.build_only:
        return
    audio = work / "speech.npy"
    np.save(audio, speech(max(*args.lengths, args.long), 21))
    short = min(args.lengths)

    def one_pass(label: str, encoder: Path, seconds: float, profile: bool = False) -> dict:
        task_args = {"model": str(encoder), "audio": str(audio), "seconds": seconds}
        if profile:
            task_args["profile_dir"] = str(work / "profiles")
            (work / "profiles").mkdir(exist_ok=True)
        record = run_task("encoder_pass", task_args, work, f"{label}-{seconds:g}s{'-profiled' if profile else ''}")
        return {"audio_s": seconds, "pass_s": round(record["phases"]["pass"]["wall_s"], 2),
                "peak_rss_mb": round(record["peak_rss_mb"], 1), **({"op_seconds": record["op_seconds"]} if profile else {})}

    # the layout of metrics/bench.json's variants, so that the report reads either file
    variants = {name: {"encoder_mb": mb(path), "passes": [one_pass(name, path, s) for s in sorted(args.lengths)]}
                for name, path in files.items()}
    for name in ("fp32", "int8_matmul_only", "int8_smoothquant"):
        variants[name]["blockwise_pass"] = one_pass(f"{name}-blockwise", blockwise(files[name]), args.long)
    profile = one_pass("int8_smoothquant", files["int8_smoothquant"], short, profile=True)
    fp32 = variants["fp32"]
    for row in variants.values():
        row["speedup"] = {f"{p['audio_s']:g}": round(f["pass_s"] / p["pass_s"], 2)
                          for p, f in zip(row["passes"], fp32["passes"])}
        if "blockwise_pass" in row:
            row["speedup"][f"{args.long:g} blockwise"] = round(fp32["blockwise_pass"]["pass_s"] / row["blockwise_pass"]["pass_s"], 2)
    result = {"machine": machine(), "windows": args.windows, "lengths_s": sorted(args.lengths), "long_s": args.long,
              "steps": {k: {"wall_s": round(v["wall_s"], 1), "peak_rss_gb": round(v["peak_rss_mb"] / 1e3, 2),
                            **{key: v[key] for key in ("summary", "aware") if v.get(key)}} for k, v in steps.items()},
              "variants": variants, "int8_profile": {"audio_s": short, "op_seconds": profile["op_seconds"]}}
    write_json(OUT, result)
    print(f"CPU: {result['machine']['cpu_model']} ({result['machine']['cpus']} cores); pass s (x fp32)")
    columns = [f"{s:g} s" for s in sorted(args.lengths)] + [f"{args.long:g} s blockwise"]
    print(f"{'variant':<20} {'MB':>7} " + " ".join(f"{c:>18}" for c in columns))
    for name, row in variants.items():
        passes = row["passes"] + ([row["blockwise_pass"]] if "blockwise_pass" in row else [])
        cells = [f"{p['pass_s']:.2f} ({ratio:.2f}x)" for p, ratio in zip(passes, row["speedup"].values())]
        print(f"{name:<20} {row['encoder_mb']:>7.0f} " + " ".join(f"{c:>18}" for c in cells))
    top = sorted(profile["op_seconds"].items(), key=lambda kv: -kv[1])[:6]
    print("int8 (default) at", f"{short:g} s, time per op type:", ", ".join(f"{k} {v:.2f} s" for k, v in top))


if __name__ == "__main__":
    run_cli(main)
