"""The figures as pictures (PNG, matplotlib) and as data series (JSON lists of records) for DVC's plots.

The series are what `dvc plots diff main <exp>` overlays: one record per point, with the variant as a
field, so that the custom templates in .dvc/plots colour by variant and dash by revision. The PNGs stay
for pages that show a picture (the model card, docs/results.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from requant.common import atomic_path  # noqa: E402
from requant.summary import BASELINE, MACRO  # noqa: E402

PLOTS_DIR = Path("metrics/plots")
SECTION_SERIES, LANGUAGE_SERIES = PLOTS_DIR / "section_wer.json", PLOTS_DIR / "language_wer.json"
DIAGNOSIS_SERIES = PLOTS_DIR / "diagnosis.json"


def section_series(evals: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant, long clip and section: its WER against the fp32 short-clip reference (None: no words)."""
    return [{"clip": clip, "section_start_s": s["start_s"], "section": f"{s['start_s']:g}-{s['end_s']:g} s",
             "variant": name, "wer_pct": s["wer_pct"]}
            for name, e in evals.items() for clip, c in e["long"].items() for s in c["sections"]]


def language_series(summary: dict[str, dict[str, dict]], langs: list[str]) -> list[dict[str, Any]]:
    """Per variant and language (and the macro average): corpus WER, its difference to fp32 and the paired
    95 % interval of that difference."""
    return [{"language": group, "variant": name, "wer_pct": row[group]["wer_pct"],
             "delta_pct": row[group]["delta_pct"], "delta_ci_low_pct": row[group]["ci_low_pct"],
             "delta_ci_high_pct": row[group]["ci_high_pct"]}
            for name, row in summary.items() for group in [*langs, MACRO]]


def diagnosis_series(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per diagnosed variant and pass length: the encoder output's relative error, the worst quantized
    MatMul's, and how many MatMuls are past the break threshold at that length."""
    threshold = report["break_rel_error"]
    records = []
    for name, result in sorted(report["variants"].items()):  # as metrics/diagnosis.json reads back: sorted
        for length, output_error in sorted(result["output_rel_error"].items(), key=lambda kv: float(kv[0])):
            errors = [by_length[length] for by_length in result["matmuls"].values()]
            records.append({"variant": name, "length_s": float(length), "output_rel_error": output_error,
                            "worst_matmul_rel_error": max(errors),
                            "matmuls_broken": sum(1 for e in errors if e > threshold)})
    return records


def _save(fig: Any, out: Path) -> None:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def plot_sections(evals: dict[str, dict[str, Any]], out: Path) -> None:
    """One panel per long clip; grouped bars (one group per section, one bar per variant)."""
    clips = list(evals[BASELINE]["long"])
    sections = max(len(evals[BASELINE]["long"][c]["sections"]) for c in clips)
    fig, axes = plt.subplots(len(clips), 1, figsize=(max(8, 1.6 * sections), 2.6 * len(clips) + 1.2), dpi=100,
                             squeeze=False)
    width = 0.8 / len(evals)
    for ax, clip in zip(axes[:, 0], clips, strict=True):
        for i, (name, e) in enumerate(evals.items()):
            rows = e["long"][clip]["sections"]
            ax.bar([s["index"] + (i - (len(evals) - 1) / 2) * width for s in rows],
                   [s["wer_pct"] or 0.0 for s in rows], width, label=name)
        rows = evals[BASELINE]["long"][clip]["sections"]
        ax.set_xticks([s["index"] for s in rows], [f"{s['start_s']:g}-{s['end_s']:g} s" for s in rows])
        ax.set_title(f"clip '{clip}': one single pass", fontsize="medium")
        ax.set_ylabel("WER % vs fp32 short clips")
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1, 0].legend(fontsize="small", ncols=min(len(evals), 5), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    _save(fig, out)


def plot_languages(summary: dict[str, dict[str, dict]], langs: list[str], out: Path) -> None:
    """Grouped bars per language (and the macro average); whiskers: the paired 95 % interval vs fp32."""
    groups = [*langs, MACRO]
    width = 0.8 / len(summary)
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(groups) * max(1, len(summary) / 5)), 4.5), dpi=100)
    for i, (name, row) in enumerate(summary.items()):
        cells = [row[g] for g in groups]
        wer = [c["wer_pct"] for c in cells]
        spread = [[c["delta_pct"] - c["ci_low_pct"] for c in cells], [c["ci_high_pct"] - c["delta_pct"] for c in cells]]
        ax.bar([g + (i - (len(summary) - 1) / 2) * width for g in range(len(groups))], wer, width, label=name,
               yerr=spread, capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("WER % vs true transcripts")
    ax.set_title("Short utterances per language (whiskers: 95 % paired interval of the difference to fp32)",
                 fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(len(summary), 5), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    _save(fig, out)
