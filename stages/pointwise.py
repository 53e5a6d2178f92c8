"""Stage `pointwise`: the base encoder with every pointwise Conv1d rewritten as a MatMul (requant/pointwise.py),
and the attention's glue without its [B, H, T, T] copies (requant/glue.py).

The fp32 graph every quantized recipe starts from (SmoothQuant, the weight-only w8/w4): their MatMul
passes then take the conv module's pointwise convs too, and every pass runs the lighter attention glue (the
mask added as a bias built once per pass, the relative-position shift without its Pad). Gated against the
base encoder on the held-out windows: a 1x1 conv and a MatMul add the same products, only their order may
differ, and the glue moves the same values, so the outputs agree to float32 rounding (max relative
difference in metrics/pointwise.json) or nothing is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant import glue, pointwise
from requant.common import run_cli, write_json
from requant.gated import write_gated

log = logging.getLogger(__name__)

SOURCE = Path("models/base/encoder-model.onnx")
WINDOWS = Path("data/windows")
OUT_DIR = Path("models/pointwise")
METRICS = Path("metrics/pointwise.json")
MAX_REL_ERROR = 1e-5  # the same sums in another order: float32 rounding only


def rewrite_encoder(src: Path, dst_dir: Path, windows_dir: Path, glue_attention: bool = True) -> dict:
    """Write the rewritten encoder into dst_dir (atomically) after checking it equals the original. Without
    glue_attention, the attention is left as exported (bench.op_profile's before)."""
    model = og.load_graph(src)
    replace, summary = pointwise.rewrite(model, src.parent)
    log.info("pointwise convs: %d of %d rewritten as MatMuls, refused %s; transposes %d -> %d",
             summary["rewritten"], summary["convs"], summary["refused"] or "none", summary["transposes"],
             summary["transposes_after"])
    attention = glue.simplify(model) if glue_attention else {"sites": 0, "rewritten": 0, "refused": {}}
    log.info("attention glue: %d of %d sites rewritten, refused %s; Where %s, Pad %s", attention["rewritten"],
             attention["sites"], attention["refused"] or "none", attention.get("where_nodes"), attention.get("pad_nodes"))
    heldout = runs.Windows(windows_dir, "heldout")
    gate = write_gated(model, src, dst_dir, src.name, replace, heldout, MAX_REL_ERROR, "pointwise")
    return {**summary, "attention_glue": attention, **gate}


def main() -> None:
    write_json(METRICS, rewrite_encoder(SOURCE, OUT_DIR, WINDOWS))


if __name__ == "__main__":
    run_cli(main)
