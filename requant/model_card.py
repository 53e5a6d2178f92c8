"""Markdown for the release folder's model card, docs/results.md and the README's headline, from the metrics.

Only rendering lives here: every figure comes from metrics/*.json and every setting from params.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from requant.params import Params
from requant.summary import BASELINE, MACRO, POOLED, measured_as
from requant.variants import LABELS

CARD_FILE = Path("reports/MODEL_CARD.md")  # the release folder's README
FILES = [
    ("encoder-model.onnx (+ .data)", "fp32 encoder, unchanged"),
    ("encoder-model.int8.onnx (+ .data above 256 MB)",
     "int8 encoder rebuilt with SmoothQuant + static per-channel int8 (every weighted MatMul and the "
     "conv module's pointwise convs, rewritten as MatMuls)"),
    ("encoder-model.fp16.onnx (+ .data above 256 MB)", "fp16 encoder, a plain cast keeping fp32 inputs and outputs"),
    ("sharded/encoder-model.onnx (+ .data.000, ...)", "the fp32 encoder repacked into shards under the budget"),
    ("encoder-model.w8.onnx, encoder-model.w4.onnx, encoder-model.w8_aware.onnx, encoder-model.w4_aware.onnx, "
     "encoder-model.w4_mixed.onnx",
     "weight-only 8- and 4-bit encoders (MatMulNBits, block 32; round-to-nearest, or with activation-aware "
     "scales searched on the calibration windows; w4_mixed adds GPTQ and keeps the MatMuls 4 bits hurt most "
     "at 8); their decoder_joint files are the int8 decoder, named to pair with them (onnx-asr: "
     "quantization=\"w8\")"),
    ("blockwise/encoder-model.onnx (+ .data), blockwise/encoder-model.int8.onnx",
     "fp32 and SmoothQuant int8 rewritten for passes of any length, exactly (ONNX Loops): positions past the "
     "export's 400 s table, the attention over blocks of queries and the convolutional subsampling over chunks, "
     "so a pass needs memory linear in its length, not quadratic; they run on onnxruntime CPU, onnx-asr and "
     "onnxruntime-web. Pair them with the decoders above"),
    ("local/encoder-model.onnx (+ .data), local/encoder-model.int8.onnx",
     "the same with local attention (NeMo's rel_pos_local_attn, context in the card's parameters): each frame "
     "attends to a fixed band of frames, so time and memory are linear in the pass length"),
    ("decoder_joint-model.onnx / .int8.onnx / .fp16.onnx", "decoder and joint network per precision"),
    ("nemo128.onnx, vocab.txt, config.json", "preprocessor, tokenizer and config, unchanged"),
]


def layout_files(layout: str) -> list[tuple[str, str]]:
    """FILES as the release folder holds them in the model's layout: a CTC model ships each encoder joined
    with its head again, as one model<suffix>.onnx (docs/models.md)."""
    if layout != "ctc":
        return FILES
    rows = [(name.replace("encoder-model", "model"), what) for name, what in FILES if not name.startswith("decoder_")]
    return [*rows, ("(each model*.onnx)", "the encoder above joined with the CTC head as upstream ships it (never "
                                          "quantized through): one graph, as onnx-asr loads a CTC model")]


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
        f"> Parakeet preset: `{p.model.hf_repo}` at revision `{p.model.hf_revision}`; the long clips and the "
        f"corpus ({', '.join(p.corpus.languages)}) are listed below.\n"
    )


def _cell(c: dict[str, Any], baseline: bool, say_noise: bool = False) -> str:
    """'5.22 (+3.87 [+1.20, +6.50])', bold where the difference is called (its interval excludes 0 and it
    exceeds the noise floors); with say_noise, ', within noise' where it is not. The baseline: its WER alone."""
    if c["wer_pct"] is None:
        return "n/a"
    if baseline:
        return f"{c['wer_pct']:.2f}"
    called = c.get("called", c["significant"])
    noise = ", within noise" if say_noise and not called else ""
    text = f"{c['wer_pct']:.2f} ({c['delta_pct']:+.2f} [{c['ci_low_pct']:+.2f}, {c['ci_high_pct']:+.2f}]{noise})"
    return f"**{text}**" if called else text


def floors_table(summary: dict[str, dict[str, dict]], floors: Any) -> str:
    """Per calibrated variant and set: the interval's width beside the two floors' WER spreads."""
    if not floors:
        return ("(not measured: `python -m bench.floors` writes metrics/floors.json; until then a difference is "
                "called on its interval alone)\n")
    sets = list(next(iter(summary.values())))
    rows = []
    for n, row in summary.items():
        measured = measured_as(floors, n)
        if measured not in floors["perturbation"]:
            continue
        cells = []
        for k in sets:
            pert, cal = floors["perturbation"][measured].get(k), floors["calibration"][measured].get(k)
            cells.append(f"{row[k]['ci_high_pct'] - row[k]['ci_low_pct']:.2f} / "
                         f"{pert['range']:.2f} (σ {pert['std']:.2f}) / {cal['range']:.2f} (σ {cal['std']:.2f})"
                         if pert and cal else "n/a")
        rows.append([LABELS.get(n, n), *cells])
    return (table(["encoder", *sets], rows)
            + f"\nPer cell: the width of the 95 % interval / the perturbation floor / the calibration floor, each floor "
            f"the WER range (max - min, points) over {floors['k']} builds, σ its standard deviation ({floors['decoding']} "
            f"decoding). Perturbation: calibration statistics with relative noise {floors['noise']:g}, unsnapped; "
            "calibration: as many seeds of the calibration-window draw. Variants with nothing calibrated have floors "
            "of 0; int8 SmoothQuant blockwise shares int8 SmoothQuant's (the same outputs, bit for bit). "
            "`python -m bench.floors`, metrics/floors.json.\n")


def summary_table(summary: dict[str, dict[str, dict]]) -> str:
    """Variant x evaluation set: WER %, its difference to fp32 and the 95 % paired bootstrap interval."""
    sets = list(next(iter(summary.values())))
    rows = [[LABELS.get(n, n), *(_cell(row[k], n == BASELINE) for k in sets)] for n, row in summary.items()]
    return (table(["encoder", *sets], rows)
            + "\nWER % (difference to fp32 in points [95 % paired bootstrap interval]); **bold**: a difference "
            "called, its interval excludes 0 and it exceeds the noise floors below; every other cell is within noise. "
            "Long clips are scored against the fp32 short-clip "
            f"reference, per section; `{POOLED}` pools every section of every clip. Corpus languages are scored "
            f"against the true transcripts; `{MACRO}` is the mean over languages.\n")


WIDE_LANGUAGES = 4  # past this many languages the table turns: a row per language (FLEURS' 25)


def delta_text(ci: dict[str, Any] | None) -> str:
    """'+0.18 [+0.08, +0.30]', bold where the interval excludes 0; 'baseline' without an interval."""
    if ci is None:
        return "baseline"
    shown = f"{ci['delta_pct']:+.2f} [{ci['ci_low_pct']:+.2f}, {ci['ci_high_pct']:+.2f}]"
    return f"**{shown}**" if ci["significant"] else shown


def _wer_cer(cell: dict[str, Any]) -> str:
    """'WER / CER' and, for a variant, each difference to fp32 with its interval (bold where it excludes 0)."""
    text = f"{cell['wer_pct']:.2f} / {cell['cer_pct']:.2f}"
    if cell.get("delta_pct") is None or "cer" not in cell:
        return text
    return f"{text} ({delta_text(cell)} / {delta_text(cell['cer'])})"


def corpus_table(summary: dict[str, dict[str, dict]], evals: dict[str, dict[str, Any]]) -> str:
    """Per language: utterances, WER and CER of every variant (and with many languages their differences
    to fp32 with intervals, a row per language)."""
    langs = list(evals[BASELINE]["corpus"])
    counts = {lang: c["utterances"] for lang, c in evals[BASELINE]["corpus"].items()}
    if len(langs) > WIDE_LANGUAGES:
        header = ["language", "utterances", *(LABELS.get(n, n) for n in summary)]
        rows = [[lang, str(counts.get(lang, "")), *(_wer_cer(row[lang]) for row in summary.values())]
                for lang in [*langs, MACRO]]
        return (table(header, rows) + "\nWER / CER in %, then each difference to fp32 in points with its 95 % "
                "paired bootstrap interval (utterances as items; the macro row: languages as strata).\n")
    header = ["encoder", *(f"{lang} WER / CER" for lang in langs), f"{MACRO} WER / CER"]
    rows = [[LABELS.get(n, n), *(f"{row[k]['wer_pct']:.2f} / {row[k]['cer_pct']:.2f}" for k in [*langs, MACRO])]
            for n, row in summary.items()]
    listed = ", ".join(f"{lang}: {n}" for lang, n in counts.items())
    return table(header, rows) + f"\nUtterances per language: {listed}.\n"


def worst_section(e: dict[str, Any]) -> str:
    """The worst section over every long clip: 'clip 120-180 s: 4.10%'."""
    worst = [(c["worst_section"], clip) for clip, c in e["long"].items() if c["worst_section"] is not None]
    if not worst:
        return "n/a"
    section, clip = max(worst, key=lambda w: w[0]["wer_pct"])
    return f"{clip} {section['start_s']:g}-{section['end_s']:g} s: {pct(section['wer_pct'])}"


def truth_wer(e: dict[str, Any]) -> float | None:
    """Long passes against the true transcripts, pooled over the clips that have one."""
    truths = [c["vs_truth"] for c in e["long"].values() if c["vs_truth"]]
    words = sum(t["ref_words"] for t in truths)
    return 100.0 * sum(t["edits"] for t in truths) / words if words else None


def cost_table(evals: dict[str, dict[str, Any]]) -> str:
    rows = [
        [LABELS[n], f"{c['encoder_mb']:.1f}", f"{c['load_s']:.2f}", f"{c['peak_rss_mb']:.0f}",
         f"{c['rss_delta_mb']:.0f}", f"{c['rtf']:.4f}", f"{c['corpus_rtf']:.4f}"]
        for n, c in ((n, e["cost"]) for n, e in evals.items())
    ]
    return table(["encoder", "size (MB)", "session load (s)", "peak RSS (MB)", "RSS over baseline (MB)",
                  "RTF long passes", "RTF corpus"], rows)


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


def recommendations(summary: dict[str, dict[str, dict]], evals: dict[str, dict[str, Any]], bench: Any = None,
                    browser: tuple[str, dict[str, float]] | None = None,
                    tolerance_pt: float = 0.5) -> list[tuple[str, str]]:
    """'ship this for' picks computed from the table: (use, variant) pairs. A candidate stays within
    tolerance_pt of fp32 on the pooled long passes and on the corpus macro average. Speed comes from the
    twin's 120 s pass where every candidate was measured there (the demo model is too small to time), the
    browser's from its pass in headless Chromium (browser: web_figures.browser_times)."""
    if BASELINE not in summary:
        return []

    def delta(n: str, key: str) -> float:
        return summary[n][key]["delta_pct"] if key in summary[n] else 0.0

    close = {n: evals[n] for n in summary if n != BASELINE
             and delta(n, POOLED) <= tolerance_pt and delta(n, MACRO) <= tolerance_pt}
    picks = []
    if close:
        def size(n: str) -> float:
            return close[n]["cost"]["encoder_mb"]

        twin = {n: _twin_passes(bench, n)[1].get(120) for n in close}
        timed = {n: t["pass_s"] for n, t in twin.items() if t is not None}
        cpu = (bench or {}).get("machine", {}).get("cpu_model", "CPU not recorded")
        where = f"Parakeet-size twin, 120 s pass, {cpu}" if timed else "this model's passes"
        fastest = min(timed, key=timed.get) if timed else min(close, key=lambda n: close[n]["cost"]["rtf"])
        picks.append((f"CPU (fastest within {tolerance_pt:g} pt of fp32; {where})", fastest))
        picks.append((f"smallest download (smallest within {tolerance_pt:g} pt)", min(close, key=size)))
        in_page = {n: t for n, t in (browser or ("", {}))[1].items() if n in close}
        wasm = [n for n in close if n not in ("fp16", "fp32_sharded")]  # WASM has no fp16 kernels
        if in_page:
            picks.append((f"browser (fastest within {tolerance_pt:g} pt; {browser[0]})", min(in_page, key=in_page.get)))
        elif wasm:  # not measured: the smallest download; among files within 5 % of it, the least memory
            light = [n for n in wasm if size(n) <= 1.05 * min(size(m) for m in wasm)]
            picks.append((f"browser / WASM (smallest within {tolerance_pt:g} pt, no fp16; then least memory)",
                          min(light, key=lambda n: close[n]["cost"]["peak_rss_mb"])))
    low_bit = [n for n in summary if n.startswith(("int8", "nbits"))]
    if low_bit:
        picks.append(("most accurate 8-bit or 4-bit (pooled long passes)",
                      min(low_bit, key=lambda n: summary[n][POOLED]["wer_pct"])))
    return picks


def recipe_table(summary: dict[str, dict[str, dict]], evals: dict[str, dict[str, Any]], bench: Any,
                 how_to_run: dict[str, str] | None = None, browser: tuple[str, dict[str, float]] | None = None) -> str:
    """Every variant side by side: size, WER against fp32 and the truth, costs here and on the twin, and how
    to run it on a recording past 400 s (the long-form comparison's best mode, where it was measured)."""
    def wer(n: str, key: str) -> str:
        return _cell(summary[n][key], n == BASELINE, say_noise=True) if key in summary[n] else "n/a"

    rows = [[LABELS.get(n, n), f"{e['cost']['encoder_mb']:.1f}", wer(n, POOLED), wer(n, MACRO), worst_section(e),
             pct(truth_wer(e)), *_twin(bench, n), (how_to_run or {}).get(n, "–")] for n, e in evals.items()]
    header = ["encoder", "MB", "long passes WER (Δ [95 % CI])", "corpus macro WER (Δ [95 % CI])", "worst section",
              "long WER vs truth", "twin MB", "twin 30 s", "twin 120 s", "twin 390 s", "past 400 s, run it as"]
    picks = "".join(f"- **{use}:** {LABELS.get(n, n)}\n" for use, n in recommendations(summary, evals, bench, browser))
    return (table(header, rows) + "\nShip this for (computed from the table above):\n\n" + picks
            + "\nMB: this model's encoder files. Twin columns: `python -m bench.cost` and `python -m "
            "bench.quantize_more` on the Parakeet-size random twin (pass time / peak RSS; – where not measured). "
            "This run's own times and memory: `docs/costs.md`. Past 400 s: the lowest-WER way to decode a 20 min "
            "recording (stage longform, `docs/longform-results.md`).\n")


def timing_table(evals: dict[str, dict[str, Any]]) -> str:
    """This run's load, encoder and decoding times per variant (greedy first, then the others vs greedy)."""
    names = list(next(iter(evals.values()))["decodings"])
    rows = []
    for n, e in evals.items():
        cost = e["cost"]
        ratio = [cost["decode_s"][d] / max(1e-9, cost["decode_s"][names[0]]) for d in names[1:]]
        corpus = [cost["corpus_decode_s"][d] / max(1e-9, cost["corpus_decode_s"][names[0]]) for d in names[1:]]
        rows.append([LABELS.get(n, n), f"{cost['load_s']:.2f}", f"{cost['encode_s']:.1f}", f"{cost['pass_s']:.1f}",
                     " / ".join(f"{r:.1f}x" for r in ratio) or "–", " / ".join(f"{r:.1f}x" for r in corpus) or "–"])
    return table(["encoder", "load (s)", "encoder, long passes (s)", f"encoder + {names[0]} (s)",
                  f"{' / '.join(names[1:]) or 'other'} decoding vs {names[0]}, long",
                  f"{' / '.join(names[1:]) or 'other'} decoding vs {names[0]}, corpus"], rows)


def scoring_note(p: Params, evals: dict[str, dict[str, Any]]) -> str:
    e = evals[BASELINE]
    return (
        f"Each long clip is transcribed in one single pass per encoder (no chunking), with the {p.eval.decoder} "
        f"decoder; the tables below are {e['decodings'][0]} decoding"
        f"{' (onnx-asr)' if e['decodings'][0] == 'greedy' else ''}, the greedy/beam table compares both. "
        f"The pass's words are split into "
        f"{p.eval.section_s:g} s sections by the start time of their first token, and each section is scored "
        f"against the fp32 encoder's transcript of that section alone as a short clip. The short utterances are "
        f"scored against their true transcripts. WER is corpus WER (total edits / total reference words); CER "
        f"the same in characters. Text normalisation: `{e['normalize']}`. Intervals: "
        f"{p.eval.bootstrap_resamples} paired bootstrap draws (seed {p.eval.bootstrap_seed}) of sections or "
        f"utterances, stratified by clip or language, the same draws for the variant and fp32. MB = 10^6 bytes. "
        f"Times and memory of this run are kept apart (`docs/costs.md`, `metrics/cost.json`): they move with the "
        f"machine, these figures do not.\n"
    )


def clips_table(p: Params, evals: dict[str, dict[str, Any]]) -> str:
    """The long clips scored: language, length and where the audio comes from."""
    rows = [[name, p.eval_clips[name].lang, f"{c['duration_s']:g} s", len(c["sections"]),
             f"synthesized, voice `{p.eval_clips[name].demo_voice}`, rate x{p.eval_clips[name].demo_rate:g}"
             if p.is_demo else f"`{p.eval_clips[name].source}` from {p.eval_clips[name].start_s:g} s"]
            for name, c in evals[BASELINE]["long"].items() if name in p.eval_clips]
    return table(["clip", "lang", "length", "sections", "audio"], rows)


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
        f"decoder {p.eval.decoder}, bootstrap {p.eval.bootstrap_resamples} draws (seed {p.eval.bootstrap_seed})",
        f"corpus: {', '.join(p.corpus.languages)}, at most {p.corpus.max_per_language or 'all'} per language",
        f"eval.decodings: {', '.join(p.eval.decodings)}; beam: width {p.beam.width}, beta {p.beam.expansion_beta}, "
        f"gamma {p.beam.expansion_gamma:g}, prefix_alpha {p.beam.prefix_alpha}, score_norm {p.beam.score_norm}",
    ]
    return "```\n" + "\n".join(lines) + "\n```\n"


def front_matter(p: Params) -> str:
    base = "" if p.is_demo else f"base_model:\n  - {nvidia_model(p.model.hf_repo)}\n  - {p.model.hf_repo}\n"
    return (f"---\nlicense: {'mit' if p.is_demo else 'cc-by-4.0'}\n{base}pipeline_tag: automatic-speech-recognition\n"
            "tags:\n  - onnx\n  - onnx-asr\n  - smoothquant\n  - quantization\n---\n\n")


def decoding_table(summaries: dict[str, dict[str, dict[str, dict]]], evals: dict[str, dict[str, Any]]) -> str:
    """Greedy and beam side by side: WER per variant and set under each decoding, and the decoding time."""
    if len(summaries) < 2:
        return "(one decoding only: set eval.decodings to [greedy, beam] to compare them)\n"
    names = list(summaries)
    first = summaries[names[0]]
    sets = list(next(iter(first.values())))
    rows = [[LABELS.get(n, n), *[" / ".join(pct(summaries[d][n][k]["wer_pct"]).rstrip("%") for d in names)
                                 for k in sets]] for n in first]
    beam = next((e["beam"] for e in evals.values() if e.get("beam")), None)
    settings = "" if beam is None else ", ".join(f"{k} {v}" for k, v in beam.items())
    return (table(["encoder", *sets], rows)
            + f"\nWER % as {' / '.join(names)} from the same encoder output; decoding times in `docs/costs.md`. "
            f"Beam: {settings}.\n")


def render_headline(p: Params, evals: dict[str, dict[str, Any]], summary: dict[str, dict[str, dict]],
                    extras: dict[str, Any]) -> str:
    """The README's short table (size, the two headline WERs, memory, the twin's 30 s pass) and the picks."""
    bench = extras.get("bench")

    def wer(n: str, key: str) -> str:
        return _cell(summary[n][key], n == BASELINE, say_noise=True) if key in summary[n] else "n/a"

    rows = [[LABELS.get(n, n), f"{e['cost']['encoder_mb']:.1f}", wer(n, POOLED), wer(n, MACRO), _twin(bench, n)[1]]
            for n, e in evals.items()]
    header = ["encoder", "MB", "long passes WER % (Δ [95 % CI])", "corpus WER % (Δ [95 % CI])",
              "Parakeet-size twin, 30 s pass"]
    picks = "".join(f"- **{use}:** {LABELS.get(n, n)}\n"
                    for use, n in recommendations(summary, evals, bench, extras.get("browser")))
    return (preset_note(p) + "\n" + table(header, rows)
            + "\nWER against the fp32 encoder (long passes, per 60 s section) and the true transcripts (corpus, macro "
            "over languages); **bold**: a difference called (its interval excludes 0 and it exceeds the noise floors, "
            "`docs/results.md`). Twin: pass time / peak RSS at Parakeet's size.\n"
            "\nShip this for (computed from these figures by the report stage):\n\n" + picks)


def left_out_note(left_out: list[str], not_run: list[str]) -> str:
    """Lines under the recipe table: the comparison rows this run did not build or evaluate, and those whose
    figures in git this run's encoders no longer match."""
    note = ""
    if not_run:
        note += (f"\nNot run: {', '.join(not_run)}: comparison rows, evaluated (and the comparison encoders built) "
                 "only on request: `make compare` runs them all, params.yaml `compare` one by one "
                 "(docs/evaluation.md#what-a-run-costs).\n")
    if left_out:
        note += (f"\nLeft out: {', '.join(left_out)}; their figures in git were measured on other encoders than "
                 "this run's (`make compare` measures them again; docs/evaluation.md#what-a-run-costs).\n")
    return note


def render_results(p: Params, evals: dict[str, dict[str, Any]], summary: dict[str, dict[str, dict]],
                   extras: dict[str, Any]) -> str:
    bench = extras.get("bench")
    return (
        "# Results\n\n<!-- generated by the report stage (`dvc repro report`) from metrics/: do not edit -->\n\n"
        + preset_note(p) + "\n" + scoring_note(p, evals) + "\nLong clips:\n\n" + clips_table(p, evals)
        + "\nEvery recipe:\n\n" + recipe_table(summary, evals, bench, extras.get("how_to_run"), extras.get("browser"))
        + left_out_note(extras.get("left_out") or [], extras.get("not_run") or [])
        + "\nEvery evaluation set:\n\n" + summary_table(summary)
        + "\nNoise floors (interval width / perturbation floor / calibration floor, points):\n\n"
        + floors_table(summary, extras.get("floors"))
        + "\nShort utterances per language:\n\n" + corpus_table(summary, evals)
        + "\nGreedy and beam search:\n\n" + decoding_table(extras.get("decodings") or {}, evals)
        + "\nGenerated by `dvc repro report` from `metrics/eval/*.json`; every interval in "
        "`metrics/eval_summary.json`; plots: `metrics/plots/section_wer.png`, `metrics/plots/language_wer.png`.\n"
        + ("\n## 4-bit recipes side by side (demo model)\n\nRound-to-nearest, activation-aware, GPTQ and aware + GPTQ, "
           "then mixed 4/8-bit (`python -m bench.weight_only_grid`, `metrics/weight_only_grid.json`; docs/recipes.md "
           "says how each is built):\n\n" + extras["weight_only_md"] if extras.get("weight_only_md") else "")
        + "\n## The leaderboard's long-form sets\n\n" + (extras.get("leaderboard_md") or "(not available)\n")
        + "\n## In the browser\n\nThe page `web/index.html` on every encoder the release folder ships, at Parakeet's "
        "size (`make web-check`, `metrics/web_check.json`; see `docs/browser.md`). "
        + (extras.get("browser_md") or "(not measured: `make web-check`)\n")
    )


def comparison_stage(stage: str) -> bool:
    """A stage that only params.yaml compare turns on: compare@<row> and the @all stages (longform_data, longform,
    int8_compare, diagnose, int8_mixed); named as a run before compare.builds named them, too."""
    return stage.startswith(("compare@", "int8_compare", "int8_mixed")) or stage.endswith("@all") or stage == "diagnose"


def repro_time_section(runs: dict[str, dict | None]) -> str:
    """What a forced `dvc repro` costs per stage, by default and with the comparisons on (bench.repro_time).
    Without a default run of its own, the default column is the comparison run less the comparisons' stages."""
    default, compare = runs.get("default"), runs.get("compare")
    if not (default or compare):
        return "\n## A forced run of every stage\n\n(not measured: `python -m bench.repro_time`)\n"
    derived = default is None
    if derived:
        stages = {s: t for s, t in compare["stages"].items() if not comparison_stage(s)}
        default = {**compare, "stages": stages, "total_s": round(sum(stages.values()), 1)}
    both = [default, *([compare] if compare else [])]
    # ties by name: a set's order follows the interpreter's string hashing, which changes every run
    slowest = sorted({s for run in both for s in run["stages"]},
                     key=lambda s: (-max(r["stages"].get(s, 0) for r in both), s))
    rows = [[f"`{s}`", *(f"{run['stages'][s]:.0f}" if s in run["stages"] else "off" for run in both)]
            for s in slowest[:12]]
    rows.append(["**every stage**", *(f"**{run['total_s'] / 60:.1f} min**" for run in both)])
    m = default["machine"]
    how = ("the comparison run's own stage times, less the stages only the comparisons add" if derived else
           f"a fresh clone at {default['commit']}")
    return ("\n## A forced run of every stage\n\nEvery stage run again, as after a change at the top of the pipeline "
            f"(`python -m bench.repro_time`, `dvc repro --force`; {m['cpu_model']}, {m['cpus']} cores). The "
            "comparisons (params.yaml `compare`, `make compare`) are off by default; seconds per stage, the twelve "
            f"longest. Default: {how}"
            + (f"; comparisons on: a fresh clone at {compare['commit']}" if compare else "")
            + (f" ({compare['note']})" if compare and compare.get("note") else "") + ".\n\n"
            + table(["stage", "default (s)", *(["comparisons on (s)"] if compare else [])], rows))


def render_costs(evals: dict[str, dict[str, Any]], repro_runs: dict[str, dict | None] | None = None) -> str:
    """docs/costs.md: this run's times and memory, which move with the machine and its load (the accuracy
    figures in docs/results.md do not), and what a forced run of the whole pipeline costs."""
    return ("# Costs of this run\n\n<!-- generated by the report stage (`dvc repro report`) from metrics/timing/: "
            "do not edit -->\n\nMeasured where `dvc repro` last ran the evaluation (`metrics/timing/*.json`, summed "
            "up in `metrics/cost.json`): they move with the machine and its load, so they live apart from the "
            "accuracy figures of [results.md](results.md). Peak RSS is the largest long pass's own peak (VmHWM, "
            "one fresh session per clip); RTF = (encoder + decoding time) / audio time.\n\n"
            + cost_table(evals) + "\nTimes:\n\n" + timing_table(evals) + repro_time_section(repro_runs or {}))


def nvidia_model(hf_repo: str) -> str:
    """NVIDIA's model behind an ONNX export's repository: istupakov/parakeet-ctc-0.6b-onnx -> nvidia/parakeet-ctc-0.6b."""
    return "nvidia/" + hf_repo.rsplit("/", 1)[-1].removesuffix("-onnx")


def model_title(hf_repo: str) -> str:
    """'Parakeet TDT 0.6B v3' from the repository's name."""
    words = nvidia_model(hf_repo).removeprefix("nvidia/").split("-")
    names = {"tdt": "TDT", "ctc": "CTC", "rnnt": "RNN-T"}
    return " ".join(names.get(w, w.upper() if w.endswith("b") else w if w[0] == "v" else w.capitalize())
                    for w in words)


def render_card(p: Params, evals: dict[str, dict[str, Any]], summary: dict[str, dict[str, dict]],
                extras: dict[str, Any]) -> str:
    name = "Tiny demo model (synthetic)" if p.is_demo else model_title(p.model.hf_repo)
    missing = "(not available: its stage has not run)\n"
    return (
        front_matter(p) + f"# {name}, ONNX with a SmoothQuant int8 encoder\n\n" + preset_note(p)
        + "\nA drop-in folder in the upstream onnx-asr layout: point `onnx_asr.load_model` at it; "
        "`quantization=\"int8\"` picks the SmoothQuant encoder, `\"fp16\"` the fp16 one.\n\n"
        + "## Files\n\n" + table(["file", "what it is"], [list(f) for f in layout_files(p.model.layout)])
        + "\n## Results\n\n" + scoring_note(p, evals) + "\nLong clips, held out of calibration:\n\n"
        + clips_table(p, evals) + "\n### Every recipe\n\n"
        + recipe_table(summary, evals, extras.get("bench"), extras.get("how_to_run"), extras.get("browser"))
        + left_out_note(extras.get("left_out") or [], extras.get("not_run") or [])
        + "\n### Every evaluation set\n\n" + summary_table(summary)
        + "\n### Short utterances per language\n\n" + corpus_table(summary, evals)
        + "\n### Greedy and beam search\n\n" + decoding_table(extras.get("decodings") or {}, evals)
        + "\n### Recordings past 400 s\n\n" + (extras.get("longform_md") or missing)
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
        "`int8_dynamic` (the stock recipe), `fp16`, `shard`; then `reference` (per long clip), `corpus`, "
        "`evaluate` (one process per encoder, every set), `report` (this card) and `package` (this folder).\n"
    )
