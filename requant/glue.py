"""The attention's glue without its [B, H, T, T] copies: the same scores, masked and shifted with less traffic.

Per layer, the export masks the scores twice over [B, H, T, T] (Where(mask, -10000) before the softmax,
Where(mask, 0) after it) and shifts the position term with Transformer-XL's Pad -> Reshape -> Slice ->
Reshape -> Slice, which copies [B, H, T, 2T] twice. Profiled on the Parakeet-size twin (int8, 390 s), Where,
Pad and Slice take about half the pass. The rewrite, per attention site (requant.attention.find_sites):

- **mask as a bias, built once per pass**: bias = Where(mask, fill, 0) [B, 1, T, T] is made once from the
  mask every layer shares, and each layer adds it to its scaled scores. A masked score becomes s + fill
  instead of fill: with fill = -10000 and |s| far below 9000, exp() underflows to exactly 0 either way, so
  every row with a visible key gets the same softmax, bit for bit.
- **rows with no visible key** (padded queries) are zeroed on the [B, H, T, dk] context instead of on the
  [B, H, T, T] probabilities (the export zeroes them there: Where(mask, 0) after a uniform softmax), which is
  the same result; the second [B, H, T, T] Where is gone.
- **the shift without the Pad**: out[i, j] = x[i, T-1-i+j] of the [T, 2T-1] position term x is, in x's
  flat rows, the element i*(2T-2) + T-1 + j. So: flatten, Slice [T-1, T-1 + T*L), fold to rows of
  L = max(2T-2, 1), keep the first T columns. The same elements are moved, one copy of [B, H, T, 2T] fewer.

Everything is data movement or an exact Add of 0, so the outputs are equal to the source's; the stage that
uses it gates them (requant/gated.py). A site whose fill is not a constant far below any score, or whose
post-softmax fill is not 0, is refused and left unchanged.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from requant import onnx_graph as og
from requant.attention import Site, find_sites, rows_without_keys


def simplify(model: onnx.ModelProto) -> dict:
    """Rewrite, in place, every attention site find_sites takes; return counts: sites, rewritten, refused
    (reason -> count), and the op counts that tell (Where, Pad, Slice) before and after."""
    graph = model.graph
    opset = og.opset_of(model)
    before = og.op_counts(graph)
    sites, refused_sites = find_sites(graph)
    refused = Counter(reason.split(": ", 1)[1] for reason in refused_sites)  # "<softmax>: <why>"
    shared: dict[str, dict[str, str]] = {}  # per mask tensor: the bias, the empty rows, T and the fold's shape
    done = 0
    for index, site in enumerate(sites):
        if site.glued:
            refused["already glued"] += 1
            continue
        fill = og.constant_value(graph, site.fill)  # find_sites checked it: a scalar, MIN_FILL or below
        if site.mask not in shared:
            shared[site.mask] = _per_pass(graph, site.mask, float(fill.reshape(())), len(shared), opset)
        _rewrite_site(graph, site, shared[site.mask], f"/glue.{index}/")
        done += 1
    og.drop_dead_nodes(graph)
    after = og.op_counts(graph)
    return {"sites": len(sites) + len(refused_sites), "rewritten": done, "refused": dict(sorted(refused.items())),
            **{f"{op.lower()}_nodes": [before.get(op, 0), after.get(op, 0)] for op in ("Where", "Pad", "Slice")}}


def _per_pass(graph: onnx.GraphProto, mask: str, fill: float, index: int, opset: int) -> dict[str, str]:
    """The nodes made once per mask (once per pass), placed right after the mask is made: the additive bias,
    the rows with no visible key, and the shift's bounds, which depend on T only."""
    new = og.NewNodes(f"/glue_mask.{index}/")
    scalar = lambda name, value: new.op("Constant", [], name, value=numpy_helper.from_array(  # noqa: E731
        np.array(value, np.float32), f"/glue_mask.{index}/{name}"))
    zero = scalar("zero_f", 0.0)
    bias = new.op("Where", [mask, scalar("fill", fill), zero], "bias")  # [B, 1, T, T]: fill where masked, else 0
    # a query row with every key masked: min over the keys of the mask (bool has no ReduceMin: via uint8)
    empty = rows_without_keys(new, mask, opset)  # [B, 1, T, 1]
    t = new.op("Shape", [mask], "T", start=2, end=3)
    one = new.ints("one", [1])
    skip = new.op("Sub", [t, one], "skip")  # T - 1
    row = new.op("Max", [new.op("Sub", [new.op("Add", [t, t], "two_t"), new.ints("two", [2])], "row_raw"), one],
                 "row")  # L = max(2T - 2, 1): T = 1 keeps one column
    stop = new.op("Add", [skip, new.op("Mul", [t, row], "cells")], "stop")
    fold = new.op("Concat", [new.ints("keep", [0, 0]), t, row], "fold", axis=0)
    made = og.producers(graph).get(mask)
    position = list(graph.node).index(made) + 1 if made is not None else 0
    for offset, node in enumerate(new.nodes):
        graph.node.insert(position + offset, node)
    return {"bias": bias, "empty": empty, "zero": zero, "t": t, "skip": skip, "stop": stop, "fold": fold}


def _rewrite_site(graph: onnx.GraphProto, site: Site, shared: dict[str, str], prefix: str) -> None:
    """Replace one site's shift and masks; its MatMuls, Add, Div and Softmax stay as they are."""
    ac, bd, *shift = site.nodes[:7]  # MatMul(q+u, k), MatMul(q+v, pe), then the shift chain (Slice ... Pad)
    add, div, where_in = site.nodes[7:10]
    where_out, context = site.nodes[11:13]
    new = og.NewNodes(prefix)
    axis2, axis3 = new.ints("axis2", [2]), new.ints("axis3", [3])
    flat = new.op("Reshape", [bd.output[0], new.ints("flat", [0, 0, -1])], "bd_flat")
    cut = new.op("Slice", [flat, shared["skip"], shared["stop"], axis2], "bd_cut")
    folded = new.op("Reshape", [cut, shared["fold"]], "bd_fold")
    shifted = new.op("Slice", [folded, new.ints("zero", [0]), shared["t"], axis3], "bd_shifted")
    for node in shift:
        graph.node.remove(node)
    add.input[list(add.input).index(shift[0].output[0])] = shifted
    og.insert_before_first_reader(graph, shifted, new.nodes)
    # the bias instead of the first Where; the softmax reads the biased scores
    where_in.op_type, where_in.name = "Add", f"{prefix}masked"
    where_in.input[:] = [div.output[0], shared["bias"]]
    # the context's empty rows zeroed after the MatMul, instead of the probabilities before it
    context.input[0] = site.softmax.output[0]
    graph.node.remove(where_out)
    out = context.output[0]
    context.output[0] = f"{prefix}context_unmasked"
    zeroed = onnx.helper.make_node("Where", [shared["empty"], shared["zero"], context.output[0]], [out],
                                   name=f"{prefix}context_rows")
    graph.node.insert(list(graph.node).index(context) + 1, zeroed)
