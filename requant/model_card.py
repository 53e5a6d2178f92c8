"""Markdown for the release folder's model card and the README's "Results" section, from the metrics.

Only rendering lives here: every figure comes from metrics/*.json and every setting from params.yaml.
"""

from __future__ import annotations

from typing import Any

from requant.params import Params

LABELS = {
    "fp32": "fp32 (unchanged)",
    "fp16": "fp16 (naive cast)",
    "fp32_sharded": "fp32 sharded (repack)",
    "int8_dynamic": "int8 dynamic (stock recipe)",
    "int8_smoothquant": "int8 SmoothQuant (this)",
    "int8_stock": "int8 stock (shipped with the base model)",
    "nbits_w8": "w8 weight-only (MatMulNBits 8-bit)",
    "nbits_w4": "w4 weight-only (MatMulNBits 4-bit)",
    "int8_mixed": "int8 SmoothQuant, worst MatMuls fp32 (mixed)",
}
FILES = [
    ("encoder-model.onnx (+ .data)", "fp32 encoder, unchanged"),
    ("encoder-model.int8.onnx (+ .data above 256 MB)",
     "int8 encoder rebuilt with SmoothQuant + static per-channel int8 (MatMul only)"),
    ("encoder-model.fp16.onnx (+ .data above 256 MB)", "fp16 encoder, a plain cast keeping fp32 inputs and outputs"),
    ("sharded/encoder-model.onnx (+ .data.000, ...)", "the fp32 encoder repacked into shards under the budget"),
    ("encoder-model.w8.onnx, encoder-model.w4.onnx",
     "weight-only 8- and 4-bit encoders (MatMulNBits, block 32, no calibration); their decoder_joint files "
     "are the int8 decoder, named to pair with them (onnx-asr: quantization=\"w8\")"),
    ("decoder_joint-model.onnx / .int8.onnx / .fp16.onnx", "decoder and joint network per precision"),
    ("nemo128.onnx, vocab.txt, config.json", "preprocessor, tokenizer and config, unchanged"),
]


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def preset_note(p: Params) -> str:
    if p.is_demo:
        return (
            "> **Demo preset: these are figures of the project's tiny synthetic demo model, not of Parakeet.**\n"
            "> The model is a small FastConformer-TDT trained by this project on synthesized English and French\n"
            "> speech, exported in Parakeet's ONNX layout, and the evaluation clip is synthesized too. They show\n"
            "> that the pipeline works end to end; run `dvc exp run -S preset=parakeet` for Parakeet's figures.\n"
        )
    return (
        f"> Parakeet preset: `{p.model.hf_repo}` at revision `{p.model.hf_revision}`, evaluated on the first "
        f"{p.eval_clip.crop_s:g} s of `{p.eval_clip.source}`.\n"
    )


def overall_table(evals: dict[str, dict[str, Any]]) -> str:
    rows = [
        [LABELS[n], f"{e['cost']['encoder_mb']:.1f} MB", pct(e["overall_wer_pct"]),
         "n/a" if e["worst_section"] is None else
         f"{pct(e['worst_section']['wer_pct'])} ({e['worst_section']['start_s']:g}-{e['worst_section']['end_s']:g} s)",
         pct(e["vs_truth"]["wer_pct"]) if e["vs_truth"] else "n/a", f"{e['cost']['peak_rss_mb']:.0f} MB"]
        for n, e in evals.items()
    ]
    header = ["encoder", "encoder size", "overall WER", "worst section", "WER vs true transcript", "peak RSS"]
    return table(header, rows)


def sections_table(evals: dict[str, dict[str, Any]]) -> str:
    first = next(iter(evals.values()))["sections"]
    rows = [
        [f"{s['start_s']:g} to {s['end_s']:g} s"] + [pct(e["sections"][i]["wer_pct"]) for e in evals.values()]
        for i, s in enumerate(first)
    ]
    return table(["section"] + [LABELS[n] for n in evals], rows)


def cost_table(evals: dict[str, dict[str, Any]]) -> str:
    rows = [
        [LABELS[n], f"{c['encoder_mb']:.1f}", f"{c['load_s']:.2f}", f"{c['peak_rss_mb']:.0f}",
         f"{c['rss_delta_mb']:.0f}", f"{c['rtf']:.4f}"]
        for n, c in ((n, e["cost"]) for n, e in evals.items())
    ]
    return table(["encoder", "size (MB)", "session load (s)", "peak RSS (MB)", "RSS over baseline (MB)", "RTF"], rows)


def _twin_passes(bench: Any, name: str) -> tuple[dict, dict[int, dict]]:
    """A variant's entry in metrics/bench.json (the Parakeet-size twin) and its passes by length in s."""
    variant = (bench or {}).get("variants", {}).get(name) if isinstance(bench, dict) else None
    return variant or {}, {round(p["audio_s"]): p for p in (variant or {}).get("passes", [])}


def _twin(bench: Any, name: str) -> list[str]:
    """'pass s / peak GB' at 30, 120 and 390 s on the twin, if measured."""
    variant, passes = _twin_passes(bench, name)
    if not variant:
        return ["–"] * 4
    cells = [f"{passes[s]['pass_s']:.1f} s / {passes[s]['peak_rss_mb'] / 1e3:.2f} GB" if s in passes else "–"
             for s in (30, 120, 390)]
    return [f"{variant['encoder_mb']:.0f}", *cells]


def recommendations(evals: dict[str, dict[str, Any]], bench: Any = None,
                    tolerance_pt: float = 0.5) -> list[tuple[str, str]]:
    """'ship this for' picks computed from the table: (use, variant) pairs. Speed comes from the twin's
    120 s pass where every candidate was measured there (the demo model is too small to time)."""
    fp32 = evals.get("fp32", {}).get("overall_wer_pct")
    if fp32 is None:
        return []
    close = {n: e for n, e in evals.items() if n != "fp32" and e["overall_wer_pct"] - fp32 <= tolerance_pt}
    picks = []
    if close:
        def size(n: str) -> float:
            return close[n]["cost"]["encoder_mb"]

        twin = {n: _twin_passes(bench, n)[1].get(120) for n in close}
        timed = {n: t["pass_s"] for n, t in twin.items() if t is not None}
        where = "Parakeet-size twin, 120 s pass" if timed else "this model's pass"
        fastest = min(timed, key=timed.get) if timed else min(close, key=lambda n: close[n]["cost"]["rtf"])
        picks.append((f"CPU (fastest within {tolerance_pt:g} pt of fp32; {where})", fastest))
        picks.append((f"smallest download (smallest within {tolerance_pt:g} pt)", min(close, key=size)))
        wasm = [n for n in close if n not in ("fp16", "fp32_sharded")]  # WASM has no fp16 kernels
        if wasm:
            picks.append((f"browser / WASM (smallest within {tolerance_pt:g} pt, no fp16)", min(wasm, key=size)))
    low_bit = {n: e for n, e in evals.items() if n.startswith(("int8", "nbits"))}
    if low_bit:
        picks.append(("most accurate 8-bit or 4-bit", min(low_bit, key=lambda n: low_bit[n]["overall_wer_pct"])))
    return picks


def recipe_table(evals: dict[str, dict[str, Any]], bench: Any) -> str:
    """Every variant side by side: size, WER against fp32 and the truth, costs here and on the twin."""
    fp32 = evals.get("fp32", {}).get("overall_wer_pct", 0.0)
    rows = [[LABELS.get(n, n), f"{e['cost']['encoder_mb']:.1f}", pct(e["overall_wer_pct"]),
             f"{e['overall_wer_pct'] - fp32:+.2f}", pct(e["vs_truth"]["wer_pct"]) if e["vs_truth"] else "n/a",
             f"{e['cost']['load_s']:.2f}", f"{e['cost']['pass_s']:.1f}", f"{e['cost']['peak_rss_mb']:.0f}",
             *_twin(bench, n)] for n, e in evals.items()]
    header = ["encoder", "MB", "WER vs fp32", "Δ pt", "WER vs truth", "load (s)", "pass (s)", "peak RSS (MB)",
              "twin MB", "twin 30 s", "twin 120 s", "twin 390 s"]
    picks = "".join(f"- **{use}:** {LABELS.get(n, n)}\n" for use, n in recommendations(evals, bench))
    return (table(header, rows) + "\nShip this for (computed from the table above):\n\n" + picks
            + "\nMB, load, pass and peak RSS: this model, one pass over the evaluation clip. Twin columns: "
            "`python -m bench.cost` on the Parakeet-size random twin (pass time / peak RSS; – where not measured).\n")


def scoring_note(p: Params, evals: dict[str, dict[str, Any]]) -> str:
    e = next(iter(evals.values()))
    return (
        f"One single pass over the whole {e['duration_s']:g} s evaluation clip per encoder (no chunking), "
        f"greedy TDT decoding through onnx-asr with the {p.eval.decoder} decoder. The pass's words are split into "
        f"{p.eval.section_s:g} s sections by the start time of their first token, and each section is scored "
        f"against the fp32 encoder's transcript of that section alone as a short clip. Overall WER is corpus "
        f"WER (total edits / total reference words). Text normalisation: `{e['normalize']}`. "
        f"WER vs true transcript scores the whole pass against the clip's known text, when there is one. "
        f"MB = 10^6 bytes; peak RSS is `ru_maxrss` of the evaluating process; RTF = pass time / audio time.\n"
    )


def leaves_table(data: Any) -> str:
    """The scalar leaves of a JSON document as key/value rows (e.g. metrics/smoothquant.json)."""
    leaves = _leaves(data, "")
    return table(["key", "value"], [[k, _fmt(v)] for k, v in leaves]) if leaves else "(empty)\n"


def fidelity_table(data: Any) -> str:
    """metrics/fidelity.json: encoder outputs of each variant against fp32 on the held-out windows."""
    variants = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(variants, dict):
        return leaves_table(data)
    keys = ("cosine_min", "cosine_mean", "rel_error_max", "rel_error_mean")
    rows = [[LABELS.get(n, n), *(_fmt(v.get(k)) for k in keys),
             ", ".join(f"{op} {count}" for op, count in sorted((v.get("ops") or {}).items()))]
            for n, v in variants.items()]
    return (table(["encoder", *keys, "op counts"], rows)
            + f"\nOn {data.get('heldout_windows', '?')} held-out windows, never used for calibration.\n")


def _leaves(data: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        return [leaf for k, v in data.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [] if isinstance(data, list) else [(prefix.rstrip("."), data)]


def _fmt(value: Any) -> str:
    return f"{value:.7g}" if isinstance(value, float) else "" if value is None else str(value)


def calibration_table(p: Params, windows: list[dict[str, Any]] | None) -> str:
    """The speeches from params, with their window counts from data/windows/index.json."""
    counts: dict[tuple[str, str], int] = {}
    for row in windows or []:
        key = (row["speaker"], row["split"])
        counts[key] = counts.get(key, 0) + 1
    rows = [
        [s.name, s.lang, f"{s.crop_s:g} s from {s.start_s:g} s", f"`{s.source}`",
         f"synthesized, voice `{s.demo_voice}`" if p.is_demo else "downloaded",
         counts.get((s.name, "calib"), 0), counts.get((s.name, "heldout"), 0)]
        for s in p.speeches.values()
    ]
    return table(["speech", "lang", "crop", "source (id)", "audio used", "calibration windows", "held-out windows"],
                 rows)


def params_block(p: Params) -> str:
    lines = [
        f"preset: {p.preset}", f"seed: {p.seed}", f"smooth.alpha: {p.smooth.alpha}",
        f"quant.percentile: {p.quant.percentile}", f"quant.calib_windows: {p.quant.calib_windows}",
        f"windows: {p.windows.window_s:g} s x {p.windows.count}, held out per speaker {p.windows.heldout_per_speaker}",
        f"fidelity.min_cosine: {p.fidelity.min_cosine}", f"shard.budget_mb: {p.shard.budget_mb:g}",
        f"eval: section_s {p.eval.section_s:g}, max_s {p.eval.max_s:g}, normalize {p.eval.normalize}, "
        f"decoder {p.eval.decoder}",
    ]
    return "```\n" + "\n".join(lines) + "\n```\n"


def front_matter(p: Params) -> str:
    base = "" if p.is_demo else f"base_model:\n  - nvidia/parakeet-tdt-0.6b-v3\n  - {p.model.hf_repo}\n"
    return (f"---\nlicense: {'mit' if p.is_demo else 'cc-by-4.0'}\n{base}pipeline_tag: automatic-speech-recognition\n"
            "tags:\n  - onnx\n  - onnx-asr\n  - smoothquant\n  - quantization\n---\n\n")


def render_results(p: Params, evals: dict[str, dict[str, Any]], bench: Any = None) -> str:
    return (
        "## Results\n\n" + preset_note(p) + "\n" + scoring_note(p, evals) + "\nEvery recipe:\n\n"
        + recipe_table(evals, bench) + "\nOverall:\n\n" + overall_table(evals)
        + "\nPer-section WER:\n\n" + sections_table(evals) + "\nCosts:\n\n" + cost_table(evals)
        + "\nGenerated by `dvc repro report` from `metrics/eval/*.json`; plot: `metrics/plots/section_wer.png`.\n"
    )


def render_card(p: Params, evals: dict[str, dict[str, Any]], extras: dict[str, Any]) -> str:
    name = "Tiny demo model (synthetic)" if p.is_demo else "Parakeet TDT 0.6B v3"
    seconds = next(iter(evals.values()))["duration_s"]
    clip = (f"a synthesized {seconds:g} s clip (voice `{p.eval_clip.demo_voice}`)" if p.is_demo
            else f"`{p.eval_clip.source}`, {seconds:g} s from {p.eval_clip.start_s:g} s")
    missing = "(not available: its stage has not run)\n"
    return (
        front_matter(p) + f"# {name}, ONNX with a SmoothQuant int8 encoder\n\n" + preset_note(p)
        + "\nA drop-in folder in the upstream onnx-asr layout: point `onnx_asr.load_model` at it; "
        "`quantization=\"int8\"` picks the SmoothQuant encoder, `\"fp16\"` the fp16 one.\n\n"
        + "## Files\n\n" + table(["file", "what it is"], [list(f) for f in FILES])
        + "\n## Results\n\n" + scoring_note(p, evals) + f"\nEvaluation clip: {clip}, held out of calibration.\n\n"
        + "### Every recipe\n\n" + recipe_table(evals, extras.get("bench"))
        + "\n### Overall\n\n" + overall_table(evals) + "\n### Per-section WER\n\n" + sections_table(evals)
        + "\n### Costs\n\n" + cost_table(evals)
        + "\n### Fidelity of encoder outputs vs fp32 (held-out windows)\n\n"
        + (fidelity_table(extras["fidelity"]) if extras.get("fidelity") is not None else missing)
        + "\n### SmoothQuant pass\n\n"
        + (leaves_table(extras["smoothquant"]) if extras.get("smoothquant") is not None else missing)
        + "\n## Calibration data (no labels, held out from evaluation)\n\n"
        + calibration_table(p, extras.get("windows"))
        + f"\nEach speech is decoded to 16 kHz mono and cut into {p.windows.window_s:g} s windows, spread evenly "
        "across speakers; a few per speaker are kept apart for the fidelity check.\n"
        + "\n## Parameters\n\n" + params_block(p)
        + "\n## How it was built\n\n"
        "A DVC pipeline (`dvc repro`): `base_model` → `smoothquant` (scales folded into the graph, exact in fp32) "
        "→ `int8` (static QDQ, per-channel weights, Percentile calibration, MatMul only) → `fidelity`; "
        "`int8_dynamic` (the stock recipe), `fp16`, `shard`; then `reference`, `evaluate` (one process per "
        "encoder), `report` (this card) and `package` (this folder).\n"
    )
