"""Overall WER against smooth.alpha across DVC experiments (a helper command, not a pipeline stage).

After an alpha sweep (`dvc exp run --queue -S smooth.alpha=0.3,0.4,0.5,0.6,0.7` then `dvc queue start`):
    python -m tools.alpha_sweep [out.png]
reads `dvc exp show --json`, prints one row per alpha and draws the SmoothQuant int8 overall WER
against alpha, with the fp32 and dynamic int8 figures as reference lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from requant.common import atomic_path, fail, run_cli  # noqa: E402

DEFAULT_OUT = Path("metrics/plots/alpha_sweep.png")
SERIES = ("int8_smoothquant", "int8_dynamic", "fp32")


def runs(exp_show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every committed baseline and experiment in `dvc exp show --json` output, as its `data`."""
    found = []
    for baseline in exp_show:
        if baseline.get("rev") != "workspace" and baseline.get("data"):
            found.append(baseline["data"])
        for exp in baseline.get("experiments") or []:
            found += [rev["data"] for rev in exp.get("revs", []) if rev.get("data")]
    return found


def pooled_long_wer(entry: Any) -> float | None:
    """A variant's pooled long-pass WER in metrics/wer.json (the first decoding's: greedy by default)."""
    return entry.get("long") if isinstance(entry, dict) else None


def sweep_points(exp_show: list[dict[str, Any]]) -> dict[float, dict[str, float]]:
    """alpha -> {variant: overall WER %}; the newest run wins when an alpha was run twice."""
    points: dict[float, dict[str, float]] = {}
    for data in sorted(runs(exp_show), key=lambda d: d.get("timestamp") or ""):
        alpha = (data.get("params", {}).get("params.yaml", {}).get("data", {}).get("smooth") or {}).get("alpha")
        wer = data.get("metrics", {}).get("metrics/wer.json", {}).get("data") or {}
        values = {v: pooled_long_wer(wer.get(v)) for v in SERIES if pooled_long_wer(wer.get(v)) is not None}
        if alpha is not None and values.get("int8_smoothquant") is not None:
            points[float(alpha)] = values
    return dict(sorted(points.items()))


def plot(points: dict[float, dict[str, float]], out: Path) -> None:
    alphas = list(points)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(alphas, [points[a]["int8_smoothquant"] for a in alphas], marker="o", label="int8 SmoothQuant")
    for variant, style in (("fp32", "--"), ("int8_dynamic", ":")):
        values = [points[a][variant] for a in alphas if points[a].get(variant) is not None]
        if values:
            ax.axhline(sum(values) / len(values), linestyle=style, color="grey", label=variant)
    ax.set_xlabel("smooth.alpha")
    ax.set_ylabel("WER % (long single passes, pooled)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    shown = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if shown.returncode != 0:
        fail(f"`dvc exp show --json` failed: {shown.stderr.strip()[:300]}")
    points = sweep_points(json.loads(shown.stdout))
    if not points:
        fail("no run with smooth.alpha and metrics/wer.json yet; run the sweep first (see README, Experiments)")
    print("alpha  " + "  ".join(f"{v:>16}" for v in SERIES))
    for alpha, values in points.items():
        print(f"{alpha:<5g}  " + "  ".join(f"{values.get(v, float('nan')):>16.2f}" for v in SERIES))
    plot(points, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
