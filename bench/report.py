"""The benchmark's figures against the issue's targets, and its tables in markdown."""

from __future__ import annotations

import json
from typing import Any


def targets(stages: list[dict[str, Any]], variants: dict[str, Any], audio_s: float) -> dict[str, Any]:
    """The issue's figures: streaming statistics/calibration <= 8 GB and flat in N, sharding near a
    plain copy, SmoothQuant int8's long pass >= 1.5x faster than fp32 at <= 0.6x its peak RSS."""
    def stage_peaks(name: str, phase: str) -> dict[str, float]:
        return {str(s["windows"]): s["phases"][phase]["peak_rss_mb"] for s in stages if s["stage"] == name}

    def long_pass(variant: str) -> dict[str, Any]:
        return next(p for p in variants[variant]["passes"] if p["audio_s"] == audio_s)

    by_name = {s["stage"]: s for s in stages}
    fp32, int8 = long_pass("fp32"), long_pass("int8_smoothquant")
    result: dict[str, Any] = {
        "smoothquant_statistics_peak_rss_mb": stage_peaks("smoothquant", "statistics"),
        "smoothquant_stage_peak_rss_mb": {str(s["windows"]): s["peak_rss_mb"] for s in stages if s["stage"] == "smoothquant"},
        "int8_calibration_peak_rss_mb": stage_peaks("int8_static", "calibration"),
        "int8_stage_peak_rss_mb": {str(s["windows"]): s["peak_rss_mb"] for s in stages if s["stage"] == "int8_static"},
        "int8_smoothquant_speedup": round(fp32["pass_s"] / int8["pass_s"], 2),
        "int8_smoothquant_rss_ratio": round(int8["peak_rss_mb"] / fp32["peak_rss_mb"], 2),
    }
    if "disk_copy" in by_name:
        copy_s = max(by_name["disk_copy"]["phases"]["write"]["wall_s"], 1e-4)
        result["shard_write_vs_copy"] = round(by_name["shard"]["phases"]["write"]["wall_s"] / copy_s, 2)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The stage and variant tables in markdown."""
    m = result["machine"]
    lines = [f"Machine: {m['cpu_model']}, {m['cpus']} cores, {m['mem_gb']} GB RAM; onnxruntime {m['onnxruntime']}."]
    if "gemm" in m:  # bench.gemm: the ceiling an int8 speed-up is measured against
        g = m["gemm"]
        lines.append(f"ISA: {', '.join(m['isa']) or 'none of note'}; bare GEMM {g['shape']} on {g['threads']} threads: "
                     f"fp32 {g['fp32_gflops']} GFLOP/s, int8 {g['int8_gflops']} GFLOP/s ({g['int8_vs_fp32']}x).")
    lines += ["", "| stage | N windows | wall (s) | peak RSS (MB) | output (MB) | cores busy | slowest phases |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for s in result["stages"]:
        phases = sorted(s["phases"].items(), key=lambda kv: -kv[1]["wall_s"])[:3]
        detail = ", ".join(f"{k} {v['wall_s']:.1f} s / {v['peak_rss_mb']:.0f} MB" for k, v in phases)
        lines.append(f"| {s['stage']} | {s['windows'] or ''} | {s['wall_s']:.1f} | {s['peak_rss_mb']:.0f} | "
                     f"{s['output_mb']:.0f} | {s['cpu_s'] / s['wall_s'] if 'cpu_s' in s else '?':.3} | {detail} |")
    lines += ["", "| variant | encoder (MB) | audio (s) | load (s) | pass (s) | RTF | peak RSS (MB) | cores busy |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in result["variants"].items():
        for p in v["passes"]:
            lines.append(f"| {name} | {v['encoder_mb']:.0f} | {p['audio_s']:g} | {p['load_s']:.2f} | {p['pass_s']:.2f} | "
                         f"{p['pass_s'] / p['audio_s']:.3f} | {p['peak_rss_mb']:.0f} | {_busy(p)} |")
    for name, v in result["variants"].items():
        if "profile" in v:
            slowest = sorted(v["profile"]["op_seconds"].items(), key=lambda kv: -kv[1])[:6]
            ops = ", ".join(f"{op} {sec:.1f}" for op, sec in slowest)
            lines.append(f"\n{name}, {v['profile']['audio_s']:g} s pass, kernel seconds per op type: {ops}")
    lines.append(f"\nTargets: {json.dumps(result['targets'])}")
    return "\n".join(lines) + "\n"


def _busy(record: dict[str, Any]) -> str:
    """CPU seconds per wall second of the pass: ~the core count when the pass had the machine."""
    return f"{record['pass_cpu_s'] / record['pass_s']:.1f}" if "pass_cpu_s" in record else "?"
