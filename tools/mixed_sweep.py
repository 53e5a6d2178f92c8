"""How the mixed-precision int8 error falls as more of the worst MatMuls stay fp32 (picks mixed.keep_fp32).

    python -m tools.mixed_sweep            # after `dvc repro diagnose`; prints a table and writes
                                             # metrics/mixed_sweep.json and metrics/plots/mixed_sweep.png

For each K it builds the int8_mixed recipe into a scratch folder and measures, on the held-out windows,
the relative error and cosine against fp32, and the encoder's size.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from requant import onnx_graph as og  # noqa: E402
from requant.common import atomic_path, run_cli, write_json  # noqa: E402
from requant.static_int8 import DIAGNOSIS_FILE, NAME, SMOOTHED, WINDOWS_DIR, build_int8, most_sensitive  # noqa: E402
from requant.params import load_params  # noqa: E402

PLOT, METRICS = Path("metrics/plots/mixed_sweep.png"), Path("metrics/mixed_sweep.json")


def sweep(ks: list[int]) -> list[dict]:
    params = load_params()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mixed-sweep-") as scratch:
        for k in ks:
            out = Path(scratch) / f"k{k}"
            fidelity = build_int8(SMOOTHED, out, WINDOWS_DIR, params.quant.percentile, params.quant.calib_windows,
                                  min_cosine=-1.0, reduce_range=params.quant.reduce_range,
                                  keep_fp32=most_sensitive(DIAGNOSIS_FILE, k))
            rows.append({"keep_fp32": k, "rel_error_mean": fidelity["rel_error_mean"],
                         "cosine_min": fidelity["cosine_min"], "bytes": og.model_size(out / NAME)})
    return rows


def plot(rows: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["keep_fp32"] for r in rows], [100 * r["rel_error_mean"] for r in rows], marker="o")
    ax.set_xlabel("MatMuls kept in fp32 (worst first, by the diagnosis)")
    ax.set_ylabel("held-out relative error vs fp32 (%)")
    ax.set_title("int8 SmoothQuant, mixed precision")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(PLOT) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16])
    rows = sweep(parser.parse_args().k)
    write_json(METRICS, rows)
    plot(rows)
    print(f"{'K':>4} {'rel error %':>12} {'cosine min':>11} {'MB':>7}")
    for r in rows:
        print(f"{r['keep_fp32']:>4} {100 * r['rel_error_mean']:>12.3f} {r['cosine_min']:>11.6f} {r['bytes'] / 1e6:>7.2f}")


if __name__ == "__main__":
    run_cli(main)
