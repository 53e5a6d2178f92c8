"""Passes of any length: the positional table extended, then every relative-position attention rewritten
into a Loop over query blocks (full or local) and the convolutional subsampling run over chunks. The
blockwise stage gates the result; the long-form stage and the benchmarks rewrite with it too.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from requant import attention, patterns, positions, subsampling
from requant.params import BlockwiseParams


def rewrite_long_pass(model: onnx.ModelProto, params: BlockwiseParams, base_dir: Path,
                      context: list[int] | None = None) -> tuple[onnx.ModelProto, dict]:
    """The positions extended, then both rewrites; and what each took or refused (base_dir: where the
    model's external weights are). Raises ValueError if the stored table is not NeMo's formula."""
    report: dict = {"context": context}
    if patterns.positional_slice(model) is not None:
        model, report["positions"] = positions.extend(model, patterns.positional_table(model, base_dir),
                                                      params.pos_tolerance)
    else:
        report["positions"] = {"extended": False, "refused": "no stored table: no cap"}
    loops = sum(n.op_type == "Loop" for n in model.graph.node)
    rewritten, refused = attention.rewrite(model, params.block, tuple(context) if context else None)
    sites = sum(n.op_type == "Loop" for n in rewritten.graph.node) - loops
    masks = sum(n.op_type == "Tile" for n in model.graph.node) - sum(n.op_type == "Tile" for n in rewritten.graph.node)
    rewritten, subsampling_refused = subsampling.rewrite(rewritten, params.subsampling_block, base_dir)
    return rewritten, {**report, "sites": sites, "refused": refused, "block": params.block,
                       "mask_computed_per_block": masks > 0,
                       "subsampling_chunked": not subsampling_refused, "subsampling_refused": subsampling_refused,
                       "subsampling_block": params.subsampling_block}
