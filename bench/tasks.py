"""One benchmark task in its own process, so that its peak RSS (ru_maxrss) is its alone.

    python -m bench.tasks <task> <args.json> <result.json>

Each task calls the project's own stage functions and names the inner steps it wants timed as
phases (the functions are wrapped for the duration of the task, never edited). Imports happen
before the clock starts, so a task's wall time is its work alone; its peak RSS includes them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.meter import MB, Meter, cpu_seconds, instrumented
from requant import encoder_runs as runs
from requant.common import setup_logging
from requant.features import SAMPLE_RATE, features
from stages.fp16 import build_fp16
from requant.static_int8 import build_int8
from stages.int8_dynamic import build_dynamic_int8
from stages.nbits import build_nbits
from stages.pointwise import rewrite_encoder
from requant.params import AwareParams, GptqParams, NbitsRecipe
from stages.shard import shard_encoder
from stages.smoothquant import smooth_encoder

Task = Callable[[dict[str, Any], Meter], dict[str, Any]]
TASKS: dict[str, Task] = {}


def task(func: Task) -> Task:
    TASKS[func.__name__] = func
    return func


def folder_bytes(folder: Path) -> dict[str, int]:
    """Size of every file under folder (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _sync(paths: list[Path]) -> None:
    """Flush written files to disk, so that write timings are not just page-cache copies."""
    for path in paths:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


@task
def smoothquant(args: dict[str, Any], meter: Meter) -> dict[str, Any]:
    phases = {
        "statistics": "stages.smoothquant:activation_absmax",
        "write": "requant.onnx_graph:write_model",
        "fp32_checks": "requant.encoder_runs:encoder_outputs",
    }
    with instrumented(meter, phases):
        summary = smooth_encoder(Path(args["src"]), Path(args["dst_dir"]), Path(args["windows_dir"]), args["alpha"])
    return {"summary": summary, "files": folder_bytes(Path(args["dst_dir"]))}


@task
def int8_static(args: dict[str, Any], meter: Meter) -> dict[str, Any]:
    phases = {
        "quantize_static": "requant.static_int8:quantize_encoder",
        "calibration": "requant.static_int8:calibrate",
        "calibration_passes": "onnxruntime.quantization.calibrate:HistogramCalibrater.collect_data",
        "ort_load_shape_inference": "onnxruntime.quantization.quantize:load_model_with_shape_infer",
        "ort_quantize_rewrite": "onnxruntime.quantization.qdq_quantizer:QDQQuantizer.quantize_model",
        "save": "requant.onnx_graph:save_self_contained_if_small",
        "checks": "requant.encoder_runs:encoder_outputs",
    }
    with instrumented(meter, phases):
        fidelity = build_int8(Path(args["src"]), Path(args["dst_dir"]), Path(args["windows_dir"]), args["percentile"],
                              0, args["min_cosine"], reduce_range=args["reduce_range"],
                              keep_fp32=args.get("keep_fp32", ()))
    return {"fidelity": fidelity, "files": folder_bytes(Path(args["dst_dir"]))}


@task
def int8_dynamic(args: dict[str, Any], meter: Meter) -> dict[str, Any]:
    phases = {
        "ort_load_shape_inference": "onnxruntime.quantization.quantize:load_model_with_shape_infer",
        "ort_quantize_rewrite": "onnxruntime.quantization.onnx_quantizer:ONNXQuantizer.quantize_model",
        "save": "requant.onnx_graph:save_self_contained_if_small",
    }
    with instrumented(meter, phases):
        ops = build_dynamic_int8(Path(args["src"]), Path(args["dst_dir"]))
    return {"op_types": ops, "files": folder_bytes(Path(args["dst_dir"]))}


@task
def nbits(args: dict[str, Any], meter: Meter) -> dict[str, Any]:
    recipe = NbitsRecipe(**args["recipe"])
    settings = AwareParams(**args["aware"]) if "aware" in args else None
    gptq_settings = GptqParams(**args["gptq"]) if "gptq" in args else None
    phases = {"quantize": "onnxruntime.quantization.matmul_nbits_quantizer:MatMulNBitsQuantizer.process",
              "aware_scaling": "requant.aware:scale_for_grid", "hessians": "requant.gptq:stream_hessians",
              "gptq": "requant.gptq:gptq"}
    with instrumented(meter, phases):
        result = build_nbits(Path(args["src"]), Path(args["dst_dir"]), args["name"], recipe,
                             Path(args.get("windows_dir", ".")), settings, 0, gptq_settings)
    return {"op_types": result["ops"], "aware": result["aware"], "gptq": result["gptq"],
            "files": folder_bytes(Path(args["dst_dir"]))}


@task
def pointwise(args: dict[str, Any], meter: Meter) -> dict[str, Any]:
    with instrumented(meter, {"write": "requant.onnx_graph:write_model",
                              "checks": "requant.encoder_runs:encoder_outputs"}):
        summary = rewrite_encoder(Path(args["src"]), Path(args["dst_dir"]), Path(args["windows_dir"]),
                                  glue_attention=args.get("glue", True))
    return {"summary": summary, "files": folder_bytes(Path(args["dst_dir"]))}


@task
def fp16(args: dict[str, Any], meter: Meter) -> dict[str, Any]:
    with instrumented(meter, {"convert": "stages.fp16:convert_float_to_float16"}):
        build_fp16(Path(args["base_dir"]), Path(args["dst_dir"]))
    return {"files": folder_bytes(Path(args["dst_dir"]))}


@task
def shard(args: dict[str, Any], meter: Meter) -> dict[str, Any]:
    audio = np.load(args["check_audio"])
    with instrumented(meter, {"write": "requant.onnx_graph:write_model", "bit_identity_check": "stages.shard:_run_all_outputs"}):
        shards = shard_encoder(Path(args["src"]), Path(args["dst_dir"]), int(args["budget_bytes"]), audio, allow_oversize=True)
    with meter.phase("fsync"):
        _sync(shards)
    return {"shards": len(shards), "files": folder_bytes(Path(args["dst_dir"]))}


@task
def disk_copy(args: dict[str, Any], meter: Meter) -> dict[str, Any]:
    """The yardstick for sharding: one plain copy of the same external data file."""
    src, dst = Path(args["src"]), Path(args["dst"])
    dst.parent.mkdir(parents=True, exist_ok=True)
    with meter.phase("write"):
        shutil.copyfile(src, dst)
    with meter.phase("fsync"):
        _sync([dst])
    return {"files": {dst.name: dst.stat().st_size}}


@task
def encoder_pass(args: dict[str, Any], meter: Meter) -> dict[str, Any]:
    """Load one encoder and run one single pass over the first `seconds` of the audio."""
    audio = np.array(np.load(args["audio"], mmap_mode="r")[: round(args["seconds"] * SAMPLE_RATE)])  # not the rest
    with meter.phase("load"):
        session = _session(Path(args["model"]), args.get("profile_dir"), args.get("arena", True))
    with meter.phase("features"):
        signal, length = features(audio)
    with meter.phase("pass"):
        outputs, lengths = session.run(["outputs", "encoded_lengths"], {"audio_signal": signal, "length": length})
    record = {"audio_s": len(audio) / SAMPLE_RATE, "frames": int(lengths[0]), "output_shape": list(outputs.shape),
              "finite": bool(np.isfinite(outputs).all())}
    if args.get("save"):  # for a comparison of two encoders' outputs (bench.blockwise)
        np.save(args["save"], outputs)
    if args.get("profile_dir"):
        record["op_seconds"] = _op_seconds(Path(session.end_profiling()))
    return record


def _session(model: Path, profile_dir: str | None, arena: bool = True) -> ort.InferenceSession:
    """The stages' own session (arena: onnxruntime's CPU memory arena), or the same with its profiler on."""
    if not profile_dir:
        return runs.open_session(model, arena=arena)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(profile_dir) / model.stem)
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _op_seconds(profile: Path) -> dict[str, float]:
    """Kernel time per operator type (after onnxruntime's graph fusions), slowest first."""
    totals: dict[str, float] = {}
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1e6
    profile.unlink()
    return {op: round(s, 3) for op, s in sorted(totals.items(), key=lambda kv: -kv[1])}


def main() -> None:
    name, args_path, result_path = sys.argv[1:4]
    setup_logging()
    meter = Meter()
    started = time.perf_counter()
    result = TASKS[name](json.loads(Path(args_path).read_text()), meter)
    wall_s = time.perf_counter() - started
    # cpu_s / wall_s near the core count: the task had the machine; much lower: it shared the cores
    record = {"task": name, "wall_s": round(wall_s, 3), "cpu_s": round(cpu_seconds(), 1),
              "peak_rss_mb": round(meter.peak_bytes() / MB, 1), "phases": meter.summary(), **result}
    Path(result_path).write_text(json.dumps(record, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
