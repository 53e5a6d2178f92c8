"""Gather every variant's evaluation into the tracked metrics, a per-section plot and the model card.

Outputs: metrics/wer.json and metrics/cost.json (small, kept in git so `dvc metrics diff` compares
commits and experiments), metrics/plots/section_wer.png (opens offline), reports/MODEL_CARD.md (the
release folder's README) and reports/results.md (the README's "Results" section).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from requant.asr import VARIANTS  # noqa: E402
from requant.common import atomic_path, fail, read_json, run_cli, write_json  # noqa: E402
from stages.evaluate import METRICS_DIR  # noqa: E402
from requant.model_card import render_card, render_results  # noqa: E402
from requant.params import Params, load_params  # noqa: E402

log = logging.getLogger("pipeline.report")

WER_FILE, COST_FILE = Path("metrics/wer.json"), Path("metrics/cost.json")
PLOT_FILE = Path("metrics/plots/section_wer.png")
CARD_FILE, RESULTS_FILE = Path("reports/MODEL_CARD.md"), Path("reports/results.md")
COST_KEYS = ("encoder_mb", "load_s", "peak_rss_mb", "rss_delta_mb", "rtf")


def section_key(section: dict[str, Any]) -> str:
    """"00_0-60s": the index first, so that sorted JSON keys keep the sections in time order."""
    return f"{section['index']:02d}_{section['start_s']:g}-{section['end_s']:g}s"


def read_evaluations(metrics_dir: Path) -> dict[str, dict[str, Any]]:
    """Every variant's metrics/eval/<variant>.json, in the pipeline's variant order."""
    found = {p.stem: read_json(p) for p in sorted(metrics_dir.glob("*.json"))}
    if not found:
        fail(f"no evaluation in {metrics_dir}; run `dvc repro evaluate` first")
    unknown = sorted(set(found) - set(VARIANTS))
    if unknown:
        fail(f"{metrics_dir}: unknown variant file(s) {unknown}; remove them or re-run `dvc repro evaluate`")
    return {name: found[name] for name in VARIANTS if name in found}


def wer_summary(evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    normalizations = {e["normalize"] for e in evals.values()}
    if len(normalizations) != 1:
        fail(f"{METRICS_DIR}: variants were scored with different normalisations {sorted(normalizations)}; "
             "re-run `dvc repro evaluate`")
    summary: dict[str, Any] = {"normalize": normalizations.pop(), "reference": next(iter(evals.values()))["reference"]}
    for name, e in evals.items():
        worst = e["worst_section"]
        summary[name] = {
            "overall_wer_pct": e["overall_wer_pct"],
            "worst_section_wer_pct": None if worst is None else worst["wer_pct"],
            "worst_section": None if worst is None else section_key(worst),
            "vs_truth_wer_pct": None if e["vs_truth"] is None else e["vs_truth"]["wer_pct"],
            "sections": {section_key(s): s["wer_pct"] for s in e["sections"]},
        }
    return summary


def cost_summary(evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {name: {k: e["cost"][k] for k in COST_KEYS} for name, e in evals.items()}


def plot_sections(evals: dict[str, dict[str, Any]], out: Path) -> None:
    """Grouped bars (one group per section, one bar per variant): equal variants stay visible."""
    sections = next(iter(evals.values()))["sections"]
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(sections)), 5), dpi=100)
    for i, (name, e) in enumerate(evals.items()):
        xs = [s["index"] + (i - (len(evals) - 1) / 2) * width for s in e["sections"]]
        ax.bar(xs, [s["wer_pct"] or 0.0 for s in e["sections"]], width, label=name)
    ax.set_xticks([s["index"] for s in sections], [f"{s['start_s']:g}-{s['end_s']:g} s" for s in sections])
    ax.set_xlabel("section of the single long pass")
    ax.set_ylabel(f"WER % vs fp32 short clips ({next(iter(evals.values()))['normalize']})")
    ax.set_title("Per-section WER of each encoder variant")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(len(evals), 3), loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def optional_json(path: Path) -> Any:
    if path.is_file():
        return read_json(path)
    log.warning("%s is missing; the model card will say so", path)
    return None


def build_report(p: Params, root: Path = Path(".")) -> dict[str, Any]:
    evals = read_evaluations(root / METRICS_DIR)
    wer, cost = wer_summary(evals), cost_summary(evals)
    write_json(root / WER_FILE, wer)
    write_json(root / COST_FILE, cost)
    plot_sections(evals, root / PLOT_FILE)
    extras = {
        "fidelity": optional_json(root / "metrics/fidelity.json"),
        "smoothquant": optional_json(root / "metrics/smoothquant.json"),
        "windows": optional_json(root / "data/windows/index.json"),
        "bench": optional_json(root / "metrics/bench.json"),
    }
    for path, text in ((CARD_FILE, render_card(p, evals, extras)),
                       (RESULTS_FILE, render_results(p, evals, extras["bench"]))):
        with atomic_path(root / path) as tmp:
            tmp.write_text(text)
    log.info("wrote %s, %s, %s, %s, %s", WER_FILE, COST_FILE, PLOT_FILE, CARD_FILE, RESULTS_FILE)
    return wer


def main() -> None:
    build_report(load_params())


if __name__ == "__main__":
    run_cli(main)
