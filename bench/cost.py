"""Cost of every transform stage and of one long pass per variant, on a Parakeet-shaped twin.

    python -m bench.cost --model <twin dir> --windows 8 32 --audio-s 390 --out metrics/bench.json

Every measurement runs in a child process (bench.tasks) so that its peak RSS is its own. Stages
(the project's own functions, chained as dvc.yaml chains them): pointwise, smoothquant and static int8
once per calibration-window count N (the default int8, pointwise convs quantized), the MatMul-only int8
as a labelled comparison, then int8_dynamic, the weight-only recipes, fp16 and shard, with a plain copy of the external data as the yardstick for
sharding. Variants: file size, session load time, peak RSS and wall time of one single pass over
--audio-s seconds, and over each of --lengths to show how the cost grows with the audio length.
Not part of `dvc repro`: the twin is too big for CI (tests/test_bench.py runs a tiny one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench import fixtures
from bench.gemm import gemm_rates
from bench.fixtures import pipeline_params
from bench.meter import MB, machine
from bench.report import markdown, targets
from bench.tasks import SAMPLE_RATE
from requant.common import fail, run_cli, write_json
from requant import onnx_graph, pointwise
from requant.params import Params

log = logging.getLogger("bench.cost")

ENCODER = "encoder-model.onnx"
VARIANT_FILES = {  # variant -> (folder under the work dir, or None for the twin itself; encoder file)
    "fp32": (None, ENCODER),
    "fp16": ("fp16", "encoder-model.fp16.onnx"),
    "fp32_sharded": ("fp32_sharded", ENCODER),
    "int8_dynamic": ("int8_dynamic", "encoder-model.int8.onnx"),
    "int8_smoothquant": ("int8_smoothquant", "encoder-model.int8.onnx"),  # the pipeline's default int8
    "int8_matmul_only": ("int8_matmul_only", "encoder-model.int8.onnx"),  # comparison: pointwise convs fp32
    "nbits_w8": ("nbits_w8", "encoder-model.w8.onnx"),
    "nbits_w4": ("nbits_w4", "encoder-model.w4.onnx"),
}
VOICES = [("en", "en-us+m2"), ("fr", "fr+m1"), ("en", "en-gb+m4"), ("fr", "fr-be+m5")]


# --- inputs -------------------------------------------------------------------------------------


def speech(seconds: float, index: int, seed: int) -> np.ndarray:
    """Synthetic speech (espeak-ng through demo.synth) or, where that is unavailable, shaped noise."""
    try:
        lang, voice = VOICES[index % len(VOICES)]
        return fixtures.speech(seconds, seed + index, lang, voice)
    except (ImportError, OSError) as err:  # no espeak-ng library: the costs do not depend on the words
        log.warning("synthetic speech unavailable (%s); using noise", err)
        rng = np.random.default_rng(seed + index)
        return (0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)


def write_windows(folder: Path, calib: list[np.ndarray], heldout: list[np.ndarray]) -> Path:
    """A data/windows-style folder (windows.npy + index.json) that the stage functions read."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "windows.npy", np.stack(calib + heldout).astype(np.float32))
    index = [{"speaker": f"bench{i}", "start_s": 0.0, "split": "calib"} for i in range(len(calib))]
    index += [{"speaker": f"bench_heldout{i}", "start_s": 0.0, "split": "heldout"} for i in range(len(heldout))]
    (folder / "index.json").write_text(json.dumps(index))
    return folder


# --- children -----------------------------------------------------------------------------------


def run_task(task: str, args: dict[str, Any], work: Path, label: str) -> dict[str, Any]:
    """Run one bench.tasks task in a fresh Python process; its log goes to work/logs/<label>.log."""
    for folder in ("logs", "results"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    args_path, result_path, log_path = (work / "results" / f"{label}.args.json", work / "results" / f"{label}.json",
                                        work / "logs" / f"{label}.log")
    args_path.write_text(json.dumps(args))
    result_path.unlink(missing_ok=True)
    log.info("%s ...", label)
    with open(log_path, "w") as log_file:
        done = subprocess.run([sys.executable, "-m", "bench.tasks", task, str(args_path), str(result_path)],
                              stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_MININTERVAL": "10"},
                              check=False)
    if done.returncode != 0 or not result_path.is_file():
        tail = "\n".join(log_path.read_text().splitlines()[-15:])
        fail(f"benchmark task {label} failed (exit {done.returncode}); its log {log_path} ends with:\n{tail}")
    record = json.loads(result_path.read_text())
    log.info("%s: %.1f s, peak RSS %.0f MB", label, record["wall_s"], record["peak_rss_mb"])
    return record


def _mb(files: dict[str, int]) -> float:
    return round(sum(files.values()) / MB, 1)


# --- the benchmark ------------------------------------------------------------------------------


def run_benchmark(model_dir: Path, work: Path, windows: list[int], audio_s: float, lengths: list[float],
                  params: Params, heldout: int, profile: tuple[str, ...] = (),
                  sweep_variants: tuple[str, ...] = tuple(VARIANT_FILES), seed: int = 0,
                  checkpoint: Path | None = None, stages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Measure every stage and variant on the twin in model_dir; scratch files go under work.

    With `checkpoint`, the results so far are written there after every measurement ("complete":
    false until the end), so an interrupted run still leaves its figures behind. With `stages`
    (records of an earlier run whose variants are still in work), only the passes are measured.
    """
    src = model_dir / ENCODER
    if not src.is_file():
        fail(f"{src} not found; build a twin first: python -m bench.twin --out {model_dir}")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    fp32_files = _encoder_files(src)
    result: dict[str, Any] = {
        "machine": {**machine(), "gemm": gemm_rates()},  # the CPU kind and its int8 GEMM ceiling
        "model": {"dir": str(model_dir), "encoder_mb": _mb(fp32_files),
                  "twin": json.loads((model_dir / "twin.json").read_text()) if (model_dir / "twin.json").is_file()
                  else None},
        "settings": {"windows": sorted(windows), "window_s": params.windows.window_s, "heldout_windows": heldout,
                     "audio_s": audio_s, "lengths": sorted({*lengths, audio_s}), "alpha": params.smooth.alpha,
                     "percentile": params.quant.percentile, "reduce_range": params.quant.reduce_range,
                     "shard_budget_mb": params.shard.budget_mb,
                     "speech": "demo.synth" if _has_synth() else "noise"},
        "stages": [], "variants": {}, "complete": False,
    }

    def save() -> None:
        result["total_wall_s"] = round(time.perf_counter() - started, 1)
        if checkpoint is not None:
            write_json(checkpoint, result)

    if stages is None:
        long_audio = _make_audio(work, windows, params.windows.window_s, heldout, max([audio_s, *lengths]), seed)
        for record in _stages(model_dir, work, windows, params):
            result["stages"].append(record)
            save()
    else:
        result["stages"] = stages
        long_audio = work / "long_audio.npy"
        if not long_audio.is_file() or len(np.load(long_audio, mmap_mode="r")) < max([audio_s, *lengths]) * SAMPLE_RATE:
            fail(f"{long_audio} is missing or too short: --passes-only needs the --work folder of a full run")
    encoders = {variant: (model_dir if folder is None else work / folder) / name
                for variant, (folder, name) in VARIANT_FILES.items()}
    for variant, encoder in encoders.items():
        result["variants"][variant] = {"encoder_files": _encoder_files(encoder), "passes": []}
        result["variants"][variant]["encoder_mb"] = _mb(result["variants"][variant]["encoder_files"])
    # the long pass of every variant first (then a profiled one where asked: where its time goes, per
    # operator type), then the length sweep of the sweep variants
    sweep = [(v, s) for s in sorted(set(lengths) - {audio_s}) for v in encoders if v in sweep_variants]
    for variant, seconds in [(v, audio_s) for v in encoders] + sweep:
        record = _long_pass(encoders[variant], long_audio, seconds, work, variant, None)
        if variant in profile and seconds == audio_s:  # a pass of its own: the figures stay unprofiled
            profiled = _long_pass(encoders[variant], long_audio, seconds, work, f"{variant}_profiled",
                                  work / "profiles")
            result["variants"][variant]["profile"] = {"audio_s": seconds, "op_seconds": profiled["op_seconds"],
                                                      "pass_s": profiled["pass_s"]}
        result["variants"][variant]["passes"].append(record)
        result["variants"][variant]["passes"].sort(key=lambda p: p["audio_s"])
        save()
    result["targets"] = targets(result["stages"], result["variants"], audio_s)
    result["complete"] = True
    save()
    return result


def _encoder_files(encoder: Path) -> dict[str, int]:
    """The encoder graph and its external data files (name -> bytes)."""
    return {p.name: p.stat().st_size for p in sorted(encoder.parent.iterdir())
            if p.name == encoder.name or p.name.startswith(f"{encoder.name}.data")}


def _make_audio(work: Path, windows: list[int], window_s: float, heldout: int, long_s: float, seed: int) -> Path:
    """Calibration windows for each N (the smaller sets spread over the largest, as the windows stage
    spreads over speakers), the held-out windows, and one long clip; returns the long clip's path."""
    started = time.perf_counter()
    calib = [speech(window_s, i, seed) for i in range(max(windows))]
    held = [speech(window_s, 100 + i, seed) for i in range(heldout)]
    for n in windows:
        picked = [calib[i] for i in np.unique(np.linspace(0, len(calib) - 1, n).round().astype(int))]
        write_windows(work / f"windows_{n}", picked, held)
    np.save(work / "check_audio.npy", held[0])
    np.save(work / "long_audio.npy", speech(long_s, 200, seed))
    log.info("audio ready in %.1f s", time.perf_counter() - started)
    return work / "long_audio.npy"


def _stages(model_dir: Path, work: Path, windows: list[int], params: Params) -> Iterator[dict[str, Any]]:
    """Run every transform stage once, as the pipeline chains them: pointwise, then smoothquant and static int8
    once per N (the default int8, pointwise convs quantized), the MatMul-only comparison at the largest N
    (int8_compare@matmul_only: the same smoothed graph with its pointwise MatMuls kept fp32), int8_dynamic and
    the weight-only recipes (from the pointwise graph, as stage nbits), fp16 and shard; yield each record."""
    src, pointwise_dir = model_dir / ENCODER, work / "pointwise_convs"

    def stage(name: str, n: int | None, task: str, args: dict[str, Any], label: str) -> dict[str, Any]:
        record = run_task(task, args, work, label)
        return {"stage": name, "windows": n, "output_mb": _mb(record["files"]), **record}

    yield stage("pointwise", None, "pointwise", {"src": str(src), "dst_dir": str(pointwise_dir),
                                                  "windows_dir": str(work / f"windows_{max(windows)}")}, "pointwise")
    for n in sorted(windows):
        windows_dir = work / f"windows_{n}"
        smoothed, int8_dir = work / f"smoothed_{n}", work / f"int8_smoothquant_{n}"
        yield stage("smoothquant", n, "smoothquant", {"src": str(pointwise_dir / ENCODER), "dst_dir": str(smoothed),
                                                      "windows_dir": str(windows_dir), "alpha": params.smooth.alpha},
                    f"smoothquant_N{n}")
        # min_cosine -1: random weights say nothing about accuracy; the figure is recorded, not gated
        int8_args = {"src": str(smoothed / ENCODER), "windows_dir": str(windows_dir), "min_cosine": -1.0,
                     "percentile": params.quant.percentile, "reduce_range": params.quant.reduce_range}
        yield stage("int8_static", n, "int8_static", {**int8_args, "dst_dir": str(int8_dir)}, f"int8_static_N{n}")
        if n == max(windows):
            keep = pointwise.rewritten_matmuls(onnx_graph.load_graph(smoothed / ENCODER).graph)
            yield stage("int8_matmul_only", n, "int8_static",
                        {**int8_args, "dst_dir": str(work / "int8_matmul_only"), "keep_fp32": keep}, "int8_matmul_only")
            shutil.rmtree(work / "int8_smoothquant", ignore_errors=True)
            int8_dir.rename(work / "int8_smoothquant")
        else:
            shutil.rmtree(int8_dir)
        shutil.rmtree(smoothed)  # 2.4 GB at Parakeet size; the variants are the int8 files
    yield stage("int8_dynamic", None, "int8_dynamic", {"src": str(src), "dst_dir": str(work / "int8_dynamic")},
                "int8_dynamic")
    for recipe, spec in ((r, s) for r, s in params.nbits.items() if not s.aware):  # aware: bench.quantize_more
        yield stage(f"nbits_{recipe}", None, "nbits",
                    {"src": str(pointwise_dir / ENCODER), "dst_dir": str(work / f"nbits_{recipe}"),
                     "name": f"encoder-model.{recipe}.onnx", "recipe": dataclasses.asdict(spec)}, f"nbits_{recipe}")
    shutil.rmtree(pointwise_dir)
    yield stage("fp16", None, "fp16", {"base_dir": str(model_dir), "dst_dir": str(work / "fp16")}, "fp16")
    yield stage("shard", None, "shard", {"src": str(src), "dst_dir": str(work / "fp32_sharded"),
                                         "budget_bytes": int(params.shard.budget_mb * 1_000_000),
                                         "check_audio": str(work / "check_audio.npy")}, "shard")
    data_file = model_dir / f"{ENCODER}.data"
    if data_file.is_file():  # the yardstick: a plain copy of the same bytes, right after sharding
        yield stage("disk_copy", None, "disk_copy", {"src": str(data_file), "dst": str(work / "copy" / data_file.name)},
                    "disk_copy")
        shutil.rmtree(work / "copy")


def _long_pass(encoder: Path, audio: Path, seconds: float, work: Path, variant: str,
               profile_dir: Path | None) -> dict[str, Any]:
    args: dict[str, Any] = {"model": str(encoder), "audio": str(audio), "seconds": seconds}
    if profile_dir is not None:  # onnxruntime's profiler
        profile_dir.mkdir(exist_ok=True)
        args["profile_dir"] = str(profile_dir)
    record = run_task("encoder_pass", args, work, f"pass_{variant}_{seconds:g}s")
    if not record["finite"]:
        log.warning("%s: the %g s pass produced non-finite outputs", variant, seconds)
    phases = record["phases"]
    return {"audio_s": seconds, "wall_s": record["wall_s"], "peak_rss_mb": record["peak_rss_mb"],
            "load_s": phases["load"]["wall_s"], "load_peak_rss_mb": phases["load"]["peak_rss_mb"],
            "pass_s": phases["pass"]["wall_s"], "pass_cpu_s": phases["pass"]["cpu_s"],
            "pass_peak_rss_mb": phases["pass"]["peak_rss_mb"],
            "frames": record["frames"], "finite": record["finite"],
            **({"op_seconds": record["op_seconds"]} if "op_seconds" in record else {})}


def _has_synth() -> bool:
    try:
        import demo.synth  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="twin folder (python -m bench.twin)")
    parser.add_argument("--windows", type=int, nargs="+", default=[8, 32], help="calibration window counts N")
    parser.add_argument("--audio-s", type=float, default=390.0, help="length of the single pass per variant")
    parser.add_argument("--lengths", type=float, nargs="*", default=[30.0, 120.0], help="extra pass lengths")
    parser.add_argument("--window-s", type=float, help="calibration window length (default: params.yaml)")
    parser.add_argument("--heldout", type=int, help="held-out windows (default: as many as params.yaml gives)")
    parser.add_argument("--shard-mb", type=float, help="shard budget in MB (default: params.yaml, parakeet preset)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: <model>-bench-work, removed after)")
    parser.add_argument("--sweep-variants", nargs="*", default=list(VARIANT_FILES), choices=list(VARIANT_FILES),
                        help="variants that also run the --lengths passes (default: all)")
    parser.add_argument("--profile", nargs="*", default=[], choices=list(VARIANT_FILES),
                        help="variants that get one more --audio-s pass under onnxruntime's profiler (time per op)")
    parser.add_argument("--passes-only", action="store_true",
                        help="re-measure the passes only, keeping the stages of --out (needs the --work of that run)")
    parser.add_argument("--out", type=Path, default=Path("metrics/bench.json"))
    args = parser.parse_args()
    params = pipeline_params()
    if args.window_s:
        params = dataclasses.replace(params, windows=dataclasses.replace(params.windows, window_s=args.window_s))
    if args.shard_mb:
        params = dataclasses.replace(params, shard=dataclasses.replace(params.shard, budget_mb=args.shard_mb))
    heldout = args.heldout or len(params.speeches) * params.windows.heldout_per_speaker
    work = args.work or args.model.with_name(f"{args.model.name}-bench-work")
    stages = None
    if args.passes_only:
        if args.work is None or not args.out.is_file():
            fail("--passes-only needs --work and --out of an earlier full run (their variants and stages)")
        stages = json.loads(args.out.read_text())["stages"]
    result = run_benchmark(args.model, work, args.windows, args.audio_s, args.lengths, params, heldout,
                           tuple(args.profile), tuple(args.sweep_variants), checkpoint=args.out, stages=stages)
    print(markdown(result))
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    run_cli(main)
