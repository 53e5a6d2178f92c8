"""Gather every variant's evaluation into the tracked metrics, two plots and the model card.

Outputs: metrics/wer.json (headline: pooled long passes and corpus macro average, each as WER, the
difference to fp32 and its paired bootstrap interval) and metrics/cost.json, small and in git so
`dvc metrics diff` compares commits and experiments; metrics/eval_summary.json (every set: each clip,
each language, with intervals, and the per-section WERs); metrics/plots/section_wer.png (per clip and
section) and language_wer.png (per language), with their data series beside them (.json, for
`dvc plots diff`); reports/MODEL_CARD.md (the release folder's README),
docs/results.md (every accuracy table), docs/costs.md (this run's times and memory, apart because they
move with the machine) and reports/headline.md (the README's short table and picks: `make readme`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from requant.asr import encoder_digest
from requant.common import atomic_path, fail, read_json, run_cli, write_json
from requant.evaluation import METRICS_DIR, TIMING_DIR, merge_timing
from requant.leaderboard_report import leaderboard_tables
from requant.longform_report import how_to_run, longform_tables, mode_label
from requant.model_card import CARD_FILE, render_card, render_costs, render_headline, render_results
from requant.params import Params, load_params
from requant.plots import (LANGUAGE_SERIES, PLOTS_DIR, SECTION_SERIES, language_series, plot_languages, plot_sections,
                           section_series)
from requant.summary import BASELINE, MACRO, POOLED, apply_floors, decoding_view, headline, summarize
from requant.variants import BUILT_ON_REQUEST, COMPARISON_ROWS, EVERY_RUN, VARIANTS
from requant.web_figures import browser_table, browser_times
from requant import weight_only_table

log = logging.getLogger("pipeline.report")

WER_FILE, COST_FILE, SUMMARY_FILE = Path("metrics/wer.json"), Path("metrics/cost.json"), Path("metrics/eval_summary.json")
PLOT_FILE, LANG_PLOT_FILE = PLOTS_DIR / "section_wer.png", PLOTS_DIR / "language_wer.png"
RESULTS_FILE, HEADLINE_FILE = Path("docs/results.md"), Path("reports/headline.md")
COSTS_FILE, FLOORS_FILE = Path("docs/costs.md"), Path("metrics/floors.json")  # floors: `python -m bench.floors`
QUANTIZE_MORE = Path("metrics/bench_quantize_more.json")  # `python -m bench.quantize_more`
WEB_CHECK = Path("metrics/web_check.json")  # `make web-check`
LEADERBOARD = Path("metrics/leaderboard.json")  # stage leaderboard
WEIGHT_ONLY_GRID = Path("metrics/weight_only_grid.json")  # `python -m bench.weight_only_grid` (demo, about 40 min)
REPRO_TIME = {"default": Path("metrics/repro_time.json"),  # python -m bench.repro_time [--compare]
              "compare": Path("metrics/repro_time_compare.json")}
BENCH_FIGURES = (Path("metrics/bench.json"), QUANTIZE_MORE, WEB_CHECK, WEIGHT_ONLY_GRID, FLOORS_FILE,
                 REPRO_TIME["compare"])  # deps in git
LONGFORM_STALE = ("(left out: `metrics/longform.json` was measured on other encoders than this run's; "
                  "`make compare` measures it again)\n")
COST_KEYS = ("encoder_mb", "load_s", "peak_rss_mb", "rss_delta_mb", "rtf", "corpus_rtf")


def section_key(section: dict[str, Any]) -> str:
    """"00_0-60s": the index first, so that sorted JSON keys keep the sections in time order."""
    return f"{section['index']:02d}_{section['start_s']:g}-{section['end_s']:g}s"


def read_evaluations(metrics_dir: Path) -> dict[str, dict[str, Any]]:
    """Every variant's metrics/eval/<variant>.json, in the pipeline's variant order."""
    found = {p.stem: read_json(p) for p in sorted(metrics_dir.glob("*.json"))}
    if not found:
        fail(f"no evaluation in {metrics_dir}; run `dvc repro evaluate` first")
    timing_dir = metrics_dir.parent / TIMING_DIR.name
    missing = sorted(name for name in found if not (timing_dir / f"{name}.json").is_file())
    if missing:
        fail(f"{timing_dir}: no run-time figures for {missing}; re-run `dvc repro evaluate`")
    found = {name: merge_timing(e, read_json(timing_dir / f"{name}.json")) for name, e in found.items()}
    unknown = sorted(set(found) - set(VARIANTS))
    if unknown:
        fail(f"{metrics_dir}: unknown variant file(s) {unknown}; remove them or re-run `dvc repro evaluate`")
    stale = sorted(name for name, e in found.items() if "decodings" not in e)
    if stale:
        fail(f"{metrics_dir}: {stale} predate the multi-set evaluation; re-run `dvc repro evaluate`")
    return {name: found[name] for name in VARIANTS if name in found}


def check_consistent(found: dict[str, dict[str, Any]], metrics_dir: Path, this_run: set[str]) -> list[str]:
    """The evaluations a report compares were scored and decoded alike; return the comparison rows that were
    not (left out: a row in git measured under another preset, on the same encoder bytes, as the RNN-T demo's
    encoder is the TDT demo's). This run's own evaluations must agree."""
    def kind(e: dict[str, Any]) -> tuple:
        return e["normalize"], tuple(e["decodings"])

    rows = {name for name in found if name not in this_run}
    base = next((kind(found[name]) for name in found if name not in rows), None)
    odd = sorted(name for name in rows if base is not None and kind(found[name]) != base)
    kept = {name: e for name, e in found.items() if name not in odd}
    normalizations = {e["normalize"] for e in kept.values()}
    if len(normalizations) > 1:
        fail(f"{metrics_dir}: variants were scored with different normalisations {sorted(normalizations)}; "
             "re-run `dvc repro evaluate`")
    if len({tuple(e["decodings"]) for e in kept.values()}) > 1:
        fail(f"{metrics_dir}: variants were decoded differently (eval.decodings changed); re-run `dvc repro evaluate`")
    return odd


def full_summary(evals: dict[str, dict[str, Any]], summary: dict[str, dict[str, dict]]) -> dict[str, Any]:
    """metrics/eval_summary.json: the sets (in order) with their sizes, every interval, every section's WER."""
    base = evals[BASELINE]
    sets = [{"name": clip, "kind": "long clip", "sections": len(c["sections"]), "duration_s": c["duration_s"]}
            for clip, c in base["long"].items()]
    sets.append({"name": POOLED, "kind": "long clips pooled", "sections": sum(s["sections"] for s in sets)})
    sets += [{"name": lang, "kind": "corpus language", "utterances": c["utterances"]}
             for lang, c in base["corpus"].items()]
    sets.append({"name": MACRO, "kind": "corpus macro average", "languages": len(base["corpus"])})
    sections = {name: {clip: {section_key(s): s["wer_pct"] for s in c["sections"]} for clip, c in e["long"].items()}
                for name, e in evals.items()}
    return {"normalize": base["normalize"], "reference": base["reference"], "baseline": BASELINE, "sets": sets,
            "variants": summary, "sections": sections}


def cost_summary(evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per variant: size, load, memory, real-time factors, and each decoding's time over the long passes."""
    return {name: {**{k: e["cost"][k] for k in COST_KEYS}, "decode_s": e["cost"]["decode_s"]}
            for name, e in evals.items()}


def optional_json(path: Path) -> Any:
    if path.is_file():
        return read_json(path)
    log.warning("%s is missing; the model card will say so", path)
    return None


def twin_figures(root: Path) -> Any:
    """The twin's pass figures: metrics/bench.json (bench.cost), with the variants that
    metrics/bench_quantize_more.json measured later (bench.quantize_more, one run) taken from there."""
    bench, newer = optional_json(root / "metrics/bench.json"), optional_json(root / QUANTIZE_MORE)
    if not newer:
        return bench
    merged = dict(bench or {})
    merged["variants"] = {**merged.get("variants", {}), **newer["variants"]}
    merged["machine"] = newer["machine"]
    return merged


def stale(measured_on: dict[str, str | None], root: Path, digests: dict[str, str | None]) -> list[str]:
    """The variants whose figures were measured on another encoder than the one built now (or none is built):
    a comparison that this run did not repeat (params.yaml compare) keeps its figures in git only until its
    encoder changes."""
    for variant in measured_on:
        if variant not in digests:
            digests[variant] = encoder_digest(variant, root)
    return [v for v, digest in measured_on.items() if digest is None or digest != digests[v]]


def build_report(p: Params, root: Path = Path(".")) -> dict[str, Any]:
    raw = read_evaluations(root / METRICS_DIR)
    # without compare.builds the comparison encoders count as not built, whatever an earlier run left behind
    digests: dict[str, str | None] = {} if p.compare.builds else {
        v: None for v in BUILT_ON_REQUEST}
    left_out = stale({name: e.get("encoder_sha256") for name, e in raw.items()}, root, digests)
    raw = {name: e for name, e in raw.items() if name not in left_out}
    scored_apart = check_consistent(raw, root / METRICS_DIR, set(EVERY_RUN) | set(p.compare.rows))
    raw = {name: e for name, e in raw.items() if name not in scored_apart}
    left_out += scored_apart
    # comparison rows this run has no figures for (their encoder not built: compare.builds), apart from those
    # whose figures in git were measured on another build of their encoder
    not_run = [v for v in COMPARISON_ROWS if v not in raw and digests.get(v) is None]
    left_out = [v for v in left_out if v not in not_run]
    if left_out:
        log.warning("left out of the report, measured on other encoders than this run's: %s", ", ".join(left_out))
    decodings = raw[BASELINE]["decodings"] if BASELINE in raw else []
    for e in raw.values():  # JSON keys come back sorted: long clips in params.yaml's order again
        e["long"] = {clip: e["long"][clip] for clip in sorted(e["long"], key=[*p.eval_clips, *e["long"]].index)}
    views = {d: {name: decoding_view(e, d) for name, e in raw.items()} for d in decodings}
    summaries = {d: summarize(views[d], p.eval.bootstrap_resamples, p.eval.bootstrap_seed) for d in decodings}
    floors = read_json(root / FLOORS_FILE) if (root / FLOORS_FILE).is_file() else None
    if floors and floors.get("preset") != p.preset:  # another model's noise says nothing about this one's
        log.warning("%s was measured under preset %s; not applied", FLOORS_FILE, floors.get("preset"))
        floors = None
    for summary in summaries.values():  # floors measured with greedy decoding stand for the beam's too
        apply_floors(summary, floors)
    if not summaries:  # no fp32: summarize names what is missing
        summarize(raw, p.eval.bootstrap_resamples, p.eval.bootstrap_seed)
    evals, summary = views[decodings[0]], summaries[decodings[0]]  # the first decoding heads every table
    wer = headline(summaries)
    write_json(root / WER_FILE, wer)
    write_json(root / COST_FILE, cost_summary(evals))
    write_json(root / SUMMARY_FILE, {d: full_summary(views[d], summaries[d]) for d in decodings})
    plot_sections(evals, root / PLOT_FILE)
    write_json(root / SECTION_SERIES, section_series(evals))
    langs = list(evals[BASELINE]["corpus"])
    if langs:
        plot_languages(summary, langs, root / LANG_PLOT_FILE)
    write_json(root / LANGUAGE_SERIES, language_series(summary, langs) if langs else [])
    extras = {
        "fidelity": optional_json(root / "metrics/fidelity.json"),
        "smoothquant": optional_json(root / "metrics/smoothquant.json"),
        "windows": optional_json(root / "data/windows/index.json"),
        "bench": twin_figures(root),
        "decodings": summaries,
        "floors": floors,
        "left_out": left_out,
        "not_run": not_run,
    }
    web = optional_json(root / WEB_CHECK)
    extras["browser"], extras["browser_md"] = browser_times(web), browser_table(web)
    grid = optional_json(root / WEIGHT_ONLY_GRID)
    extras["weight_only_md"] = weight_only_table.render(grid) if grid and "mixed" in grid else None
    longform = optional_json(root / "metrics/longform.json")
    if longform and stale(longform.get("encoder_sha256") or {v: None for v in longform.get("variants", {})},
                          root, digests):
        log.warning("metrics/longform.json left out: measured on other encoders than this run's")
        extras["longform_md"] = LONGFORM_STALE
    elif longform and longform.get("variants"):
        extras["how_to_run"] = {n: mode_label(m, longform) for n, m in how_to_run(longform).items()}
        extras["longform_md"] = longform_tables(longform).split("\n", 2)[2]  # without its title
    extras["leaderboard_md"] = leaderboard_tables(optional_json(root / LEADERBOARD), p.is_demo)
    for path, text in ((CARD_FILE, render_card(p, evals, summary, extras)),
                       (RESULTS_FILE, render_results(p, evals, summary, extras)),
                       (HEADLINE_FILE, render_headline(p, evals, summary, extras)),
                       (COSTS_FILE, render_costs(evals, {run: optional_json(root / path)
                                                          for run, path in REPRO_TIME.items()}))):
        with atomic_path(root / path) as tmp:
            tmp.write_text(text)
    log.info("wrote %s, %s, %s, %s, %s, %s, %s, %s", WER_FILE, COST_FILE, SUMMARY_FILE, PLOT_FILE, CARD_FILE,
             RESULTS_FILE, HEADLINE_FILE, COSTS_FILE)
    return wer


def main() -> None:
    build_report(load_params())


if __name__ == "__main__":
    run_cli(main)
