"""The browser's figures (metrics/web_check.json, `make web-check`) for the report: its table, the WASM op
profile against the native one, and the browser pick of the recipe table."""

from __future__ import annotations

from typing import Any

from requant.model_card import table
from requant.variants import REGISTRY

# pipeline variant -> the page's precision that loads its file (web/asr.js, from the registry)
PAGE_PRECISION = {key: v.browser for key, v in REGISTRY.items() if v.browser is not None}


def _threads(web: dict[str, Any]) -> list[str]:
    return sorted({t for row in web["precisions"].values() for t in row["threads"]}, key=int)


def browser_times(web: dict[str, Any] | None) -> tuple[str, dict[str, float]] | None:
    """(where, {variant: whole pass s}) at the page's largest thread count, for the runs without an error;
    the recipe table picks its browser encoder from these (model_card.recommendations)."""
    if not web:
        return None
    most = _threads(web)[-1]
    timed = {}
    for variant, precision in PAGE_PRECISION.items():
        run = web["precisions"].get(precision, {}).get("threads", {}).get(most)
        if run and not run["error"] and run["pass_s"]:
            timed[variant] = run["pass_s"]
    where = (f"headless Chromium, WASM, {most} threads, {web['audio_s']:g} s pass on the Parakeet-size twin, "
             "`make web-check`")
    return where, timed


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def browser_table(web: dict[str, Any] | None) -> str:
    """Every precision the page loads: size, load, encoder and decoding times per thread count, peak memory."""
    if not web:
        return "(not measured: `make web-check`)\n"
    threads, decoder = _threads(web), web["decoder"]
    header = ["page precision", "encoder MB", *[f"encoder s, {t} thr." for t in threads], "load s", "decoding s (tokens; ms a token, a call)",
              "30 s pass s", "RTF", "browser peak GB", "result"]
    rows = []
    order = list(PAGE_PRECISION.values())  # the JSON comes back with sorted keys
    for name, row in sorted(web["precisions"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        runs = row["threads"]
        last = runs.get(threads[-1], {})
        errors = sorted({r["error"] for r in runs.values() if r.get("error")})
        per_token = last.get("decode_ms_per_token")
        rows.append([name, row["encoder_mb"], *[_seconds(runs.get(t, {}).get("encode_s")) for t in threads],
                     _seconds(last.get("load_s")),
                     "–" if last.get("decode_s") is None else
                     f"{last['decode_s']:.1f} ({last['tokens']}; {'–' if per_token is None else f'{per_token:.1f}'}, "
                     f"{1e3 * last['decode_s'] / last['decoder_calls']:.1f})",
                     _seconds(last.get("pass_s")), "–" if last.get("rtf") is None else f"{last['rtf']:.2f}",
                     "–" if not last.get("peak_mb") else f"{last['peak_mb'] / 1e3:.1f}",
                     "; ".join(errors) or "runs"])
    rates = ", ".join(f"{name.removeprefix('decoder_joint-model').removesuffix('.onnx').lstrip('.') or 'fp32'} "
                      f"{d['blank_bias']:+.2f} ({d['frames_per_token']:.2f})" for name, d in decoder["decoders"].items())
    text = (f"{web['chromium']}, onnxruntime-web WASM, cross-origin isolated; {web['audio_s']:g} s of synthesized "
            f"speech, one fresh browser per run; load, decoding, pass, RTF and peak at {threads[-1]} threads. Each "
            f"decoder file of the twin has a blank bias that makes greedy decoding of its encoder's output emit a "
            f"real model's token rate, one token per {decoder['target_frames_per_token']:g} frames (bias and frames "
            f"a token measured on the CPU: {rates}); the random joint alone emits up to 10 tokens a frame. The page's "
            "kernels are not the CPU's (WASM's MatMulNBits computes in fp32, its int8 GEMM rounds differently) and "
            "a random joint sits on a knee, so in the page the count moves (the tokens column); the cost of one "
            "decoder call, which a real model's decoding is made of, does not.\n\n"
            + table(header, rows))
    for long in (web[key] for key in ("long", "local") if web.get(key)):
        text += (f"\nOne {long['audio_s']:g} s pass, {long['threads']} threads:\n\n"
                 + table(["page precision", "encoder s", "decoding s", "pass s", "browser peak GB", "result"],
                         [[n, _seconds(r["encode_s"]), _seconds(r["decode_s"]), _seconds(r["pass_s"]),
                           "–" if not r["peak_mb"] else f"{r['peak_mb'] / 1e3:.2f}", r["error"] or "runs"]
                          for n, r in long["precisions"].items()]))
    return text + profile_table(web.get("int8_profile"))


def profile_table(profile: dict[str, Any] | None, top: int = 8) -> str:
    """Where the int8 encoder's time goes in WASM against the same encoder on the CPU, per op type."""
    if not profile or not profile.get("op_ms"):
        return ""
    native = (profile.get("native") or {}).get("op_ms", {})
    slowest = sorted(profile["op_ms"].items(), key=lambda kv: -kv[1])[:top]
    rows = [[op, ms, native.get(op, "–"), f"{ms / native[op]:.1f}x" if native.get(op) else "–"] for op, ms in slowest]
    total, native_total = sum(profile["op_ms"].values()), sum(native.values())
    rows.append(["all ops", total, native_total or "–", f"{total / native_total:.1f}x" if native_total else "–"])
    where = profile.get("native") or {}
    return (f"\nThe int8 encoder's {profile['audio_s']:g} s pass by op type (onnxruntime's profiler, ms): WASM at "
            f"{profile['threads']} threads against onnxruntime on the CPU ({where.get('cpu', 'not measured')}, "
            f"{where.get('cpus', '?')} cores, `bench.quantize_more`):\n\n"
            + table(["op type", "WASM ms", "CPU ms", "WASM / CPU"], rows))
