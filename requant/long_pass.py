"""Passes of any length: the positional table extended, then every relative-position attention rewritten
into a Loop over query blocks (full or local), the convolutional subsampling run over chunks and the
feed-forward and conv modules over blocks of frames. The blockwise stage gates the result; the long-form
stage and the benchmarks rewrite with it too.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from requant import attention, frames, patterns, positions, subsampling
from requant.params import BlockwiseParams


def rewrite_long_pass(model: onnx.ModelProto, params: BlockwiseParams, base_dir: Path,
                      context: list[int] | None = None, per_frame: bool = True) -> tuple[onnx.ModelProto, dict]:
    """The attention over blocks (local attention also cuts the positions to its band), the positions extended,
    the subsampling in chunks and the per-frame modules in blocks; and what each took or refused (base_dir:
    where the model's external weights are; per_frame=False leaves the per-frame modules in the main graph,
    for a probe of their MatMuls). Raises ValueError if the stored table is not NeMo's formula."""
    report: dict = {"context": context}
    loops = sum(n.op_type == "Loop" for n in model.graph.node)
    # the attention first: local attention cuts the positions to its band, inside the stored table
    rewritten, refused = attention.rewrite(model, params.block, tuple(context) if context else None)
    sites = sum(n.op_type == "Loop" for n in rewritten.graph.node) - loops
    masks = sum(n.op_type == "Tile" for n in model.graph.node) - sum(n.op_type == "Tile" for n in rewritten.graph.node)
    report["positions_cut_to_band"] = any(n.name.startswith(attention.LOCAL_POSITIONS) for n in rewritten.graph.node)
    if patterns.positional_slice(rewritten) is not None:
        rewritten, report["positions"] = positions.extend(rewritten, patterns.positional_table(rewritten, base_dir),
                                                          params.pos_tolerance)
    else:
        report["positions"] = {"extended": False, "refused": "no stored table: no cap"}
    rewritten, subsampling_refused = subsampling.rewrite(rewritten, params.subsampling_block, base_dir)
    blocked = frames.rewrite(rewritten, params.frame_block) if per_frame else (rewritten, {"modules": 0})
    rewritten, per_frame_report = blocked
    return rewritten, {**report, "sites": sites, "refused": refused, "block": params.block,
                       "mask_computed_per_block": masks > 0,
                       "subsampling_chunked": not subsampling_refused, "subsampling_refused": subsampling_refused,
                       "subsampling_block": params.subsampling_block, "per_frame_modules": per_frame_report}
