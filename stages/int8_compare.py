"""Stage `int8_compare@all` (compare.builds): SmoothQuant int8 recipes that differ from the default in what they quantize.

- `matmul_only`: the pointwise convs (MatMuls since stage pointwise) stay fp32, as in every int8 before
  they were quantized: what quantizing them costs or gains, on the same smoothed graph and calibration.
- `subsampling`: the convolutional subsampling's Convs quantized too (static, per channel), to see
  whether it collapses the transcript, as reported for other Parakeet int8 builds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from requant import onnx_graph as og
from requant import pointwise, stable
from requant.common import fail, run_cli
from requant.params import load_params
from requant.static_int8 import SMOOTHED, WINDOWS_DIR, build_int8

log = logging.getLogger(__name__)

ROWS = ("matmul_only", "subsampling")


def out_dir(row: str) -> Path:
    return Path("models/variants") / f"int8_{row}"


def recipe(row: str, src: Path) -> dict[str, list[str]]:
    """build_int8's keep_fp32 / quantize_convs for a row."""
    graph = og.load_graph(src).graph
    if row == "matmul_only":
        keep = pointwise.rewritten_matmuls(graph)
        if not keep:
            fail(f"{src} has no MatMul made from a pointwise conv; rerun stages pointwise and smoothquant")
        return {"keep_fp32": keep}
    first = next((n for n in graph.node if n.op_type == "MatMul"), None)  # the subsampling's output projection
    convs = [n.name for n in og.upstream(graph, first.input[0]) if n.op_type == "Conv"] if first else []
    if not convs:
        fail(f"{src}: no convolution before the first MatMul (the subsampling); nothing to quantize")
    return {"quantize_convs": convs}


def main() -> None:
    params = load_params()
    rows = sys.argv[1:] or list(ROWS)  # dvc.yaml's int8_compare@all builds every row
    if any(row not in ROWS for row in rows):
        fail(f"usage: python -m stages.int8_compare [row], row one of {', '.join(ROWS)} (default: all)")
    for row in rows:
        stable.record_machine(f"int8_compare@{row}")
        chosen = recipe(row, SMOOTHED)
        log.info("int8 %s: %s", row, {k: len(v) for k, v in chosen.items()})
        build_int8(SMOOTHED, out_dir(row), WINDOWS_DIR, params.quant.percentile, params.quant.calib_windows,
                   params.fidelity.min_cosine, reduce_range=params.quant.reduce_range, **chosen)


if __name__ == "__main__":
    run_cli(main)
