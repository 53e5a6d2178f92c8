"""An exact blockwise rewrite of the encoder's relative-position attention: memory linear in T.

The export materialises, per layer, the relative-position scores [B, H, T, 2T-1], their shifted copy
(Pad, Reshape, Slice, Reshape, Slice: Transformer-XL's rel_shift), the [B, H, T, T] scores and their
softmax. The rewrite computes the same arithmetic over blocks of `block` queries in an ONNX Loop: for
queries [s, e) only the position window pe[T-e : 2T-1-s] is needed, and the same pad-fold-crop shift on
that [R, T+R-1] block (one column padded at its end) gives exactly the rows s..e-1 of the shifted scores.
No tensor larger than [B, H, block, T+block] is alive at once; each row's softmax is whole, so the
result equals the original up to float summation order.

A site is matched only when the chain is the real export's, node for node (MatMul(q+u, k) + rel_shift
(MatMul(q+v, pe)) -> Div -> Where(mask) -> Softmax -> Where(mask) -> MatMul(., v)), every intermediate
has a single reader and the pad is the rel_shift's; anything else is reported and left unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from requant import onnx_graph as og

SHIFT_CHAIN = ("Slice", "Reshape", "Slice", "Reshape", "Pad", "MatMul")  # read backwards from the Add
REL_SHIFT_PADS = [0, 0, 0, 1, 0, 0, 0, 0]


@dataclass(frozen=True)
class Site:
    """One attention's tensors, by name, and the nodes the rewrite replaces."""

    qu: str  # [B, H, T, dk] queries + pos_bias_u
    k: str  # [B, H, dk, T]
    qv: str  # [B, H, T, dk] queries + pos_bias_v
    pe: str  # [1, H, dk, 2T-1] projected positions
    mask: str  # [B, 1, T, T] True where masked
    v: str  # [B, H, T, dk]
    scale: str  # the Div's divisor
    fill: str  # the masked score before the softmax
    zero: str  # the masked probability after it
    softmax: onnx.NodeProto
    out: str  # the context [B, H, T, dk]
    nodes: tuple[onnx.NodeProto, ...]


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].type == onnx.AttributeProto.TENSOR \
                else None
    return None


def find_sites(graph: onnx.GraphProto) -> tuple[list[Site], list[str]]:
    """Every attention the rewrite can take, and why each other softmax was left alone."""
    makers, readers = og.producers(graph), og.consumers(graph)
    sites, refused = [], []

    def made_by(tensor: str, op: str) -> onnx.NodeProto | None:
        node = makers.get(tensor)
        return node if node is not None and node.op_type == op else None

    def single_reader(tensor: str) -> onnx.NodeProto | None:
        users = readers.get(tensor, [])
        return users[0][0] if len(users) == 1 else None

    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        where_in = made_by(softmax.input[0], "Where")
        where_out = single_reader(softmax.output[0])
        div = made_by(where_in.input[2], "Div") if where_in is not None else None
        add = made_by(div.input[0], "Add") if div is not None else None
        context = single_reader(where_out.output[0]) if where_out is not None else None
        if None in (where_in, div, add, where_out, context) or where_out.op_type != "Where" \
                or context.op_type != "MatMul" or where_out.input[0] != where_in.input[0]:
            refused.append(f"{softmax.name}: not Div -> Where(mask) -> Softmax -> Where(mask) -> MatMul")
            continue
        chains = {}
        for term in add.input:
            chain, tensor = [], term
            for op in SHIFT_CHAIN:
                node = made_by(tensor, op)
                if node is None:
                    break
                chain.append(node)
                tensor = node.input[0]
            chains[term] = chain
        shifted = [t for t, c in chains.items() if len(c) == len(SHIFT_CHAIN)]
        plain = [t for t in add.input if made_by(t, "MatMul") is not None and t not in shifted]
        if len(shifted) != 1 or len(plain) != 1:
            refused.append(f"{softmax.name}: the scores are not MatMul + rel_shift(MatMul)")
            continue
        chain, ac = chains[shifted[0]], made_by(plain[0], "MatMul")
        pad, bd = chain[4], chain[5]
        pads = _constant(graph, pad.input[1]) if len(pad.input) > 1 else None
        inner = [ac, bd, *chain[:5], add, div, where_in]
        if pads is None or pads.tolist() != REL_SHIFT_PADS or any(
                single_reader(out) is None for node in inner for out in node.output):
            refused.append(f"{softmax.name}: the shift is not the export's rel_shift, or an intermediate is read twice")
            continue
        sites.append(Site(qu=ac.input[0], k=ac.input[1], qv=bd.input[0], pe=bd.input[1], mask=where_in.input[0],
                          v=context.input[1], scale=div.input[1], fill=where_in.input[1], zero=where_out.input[1],
                          softmax=softmax, out=context.output[0],
                          nodes=(*inner, softmax, where_out, context)))
    return sites, refused


def _body(site: Site, prefix: str, block: int) -> onnx.GraphProto:
    """One Loop iteration: queries [i*block, min((i+1)*block, T)) appended to the context so far."""
    inner = f"{prefix}body/"  # the body's own names: none may shadow the outer graph's
    b = og.NewNodes(inner)
    op, const = b.op, b.ints
    t1, two, one, zero = f"{prefix}T", const("c2", [2]), const("c1", [1]), const("c0", [0])
    axis2, axis3 = const("axis2", [2]), const("axis3", [3])
    start = op("Mul", [op("Unsqueeze", [f"{inner}i", zero], "i1"), const("block", [block])], "start")
    end = op("Min", [op("Add", [start, const("block2", [block])], "end_raw"), t1], "end")
    rows = op("Sub", [end, start], "rows")
    scores_ac = op("MatMul", [op("Slice", [site.qu, start, end, axis2], "qu"), site.k], "ac")
    window = op("Slice", [site.pe, op("Sub", [t1, end], "w0"),
                          op("Sub", [op("Sub", [op("Mul", [t1, two], "t2"), one], "t2m1"), start], "w1"), axis3],
                "pe")
    raw = op("MatMul", [op("Slice", [site.qv, start, end, axis2], "qv"), window], "bd_raw")  # [B,H,R,T+R-1]
    # rel_shift of the block: pad one column at the end, flatten the rows, drop R-1, fold to T+R-1 columns
    padded = op("Pad", [raw, const("pads", [0, 0, 0, 0, 0, 0, 0, 1])], "bd_pad")
    flat = op("Reshape", [padded, const("flat", [0, 0, -1])], "bd_flat")
    width = op("Sub", [op("Add", [t1, rows], "t_r"), one], "width")
    skip = op("Sub", [rows, one], "skip")
    cut = op("Slice", [flat, skip, op("Add", [skip, op("Mul", [rows, width], "cells")], "stop"), axis2], "bd_cut")
    folded = op("Reshape", [cut, op("Concat", [const("keep", [0, 0]), rows, const("rest", [-1])], "fold", axis=0)],
                "bd_fold")
    shifted = op("Slice", [folded, zero, t1, axis3], "bd")
    mask = op("Slice", [site.mask, start, end, axis2], "mask")
    scores = op("Div", [op("Add", [scores_ac, shifted], "sum"), site.scale], "scaled")
    masked = op("Where", [mask, site.fill, scores], "masked")
    softmax = op("Softmax", [masked], "softmax",
                 **{a.name: helper.get_attribute_value(a) for a in site.softmax.attribute})
    attn = op("Where", [mask, site.zero, softmax], "attn")
    context = op("MatMul", [attn, site.v], "ctx")
    op("Concat", [f"{inner}acc", context], "acc_out", axis=2)
    op("Identity", [f"{inner}cond"], "cond_out")
    inputs = [helper.make_tensor_value_info(f"{inner}i", TensorProto.INT64, []),
              helper.make_tensor_value_info(f"{inner}cond", TensorProto.BOOL, []),
              helper.make_tensor_value_info(f"{inner}acc", TensorProto.FLOAT, None)]
    outputs = [helper.make_tensor_value_info(f"{inner}cond_out", TensorProto.BOOL, []),
               helper.make_tensor_value_info(f"{inner}acc_out", TensorProto.FLOAT, None)]
    return helper.make_graph(b.nodes, f"{prefix}body", inputs, outputs)


def rewrite(model: onnx.ModelProto, block: int) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of model with every matching attention computed over blocks of `block` queries; and the
    reasons any softmax was left as it was."""
    if block < 1:
        raise ValueError(f"block={block}: must be a positive number of queries")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    sites, refused = find_sites(graph)
    for index, site in enumerate(sites):
        prefix = f"/blockwise.{index}/"
        for node in site.nodes:
            graph.node.remove(node)
        new = og.NewNodes(prefix)
        t1 = new.op("Shape", [site.qu], "T", start=2, end=3)
        count = new.op("Div", [new.op("Add", [t1, new.ints("up", block - 1)], "T_up"), new.ints("per", block)],
                       "blocks")
        count = new.op("Squeeze", [count, new.ints("zero", [0])], "count")
        empty = new.op("Slice", [site.v, new.ints("from", [0]), new.ints("to", [0]), new.ints("two", [2])], "acc0")
        true = new.op("Constant", [], "true", value=numpy_helper.from_array(np.array(True), f"{prefix}true"))
        new.nodes.append(helper.make_node("Loop", [count, true, empty], [site.out], name=f"{prefix}loop",
                                          body=_body(site, prefix, block)))
        og.insert_before_first_reader(graph, site.out, new.nodes)
    og.drop_orphan_constants(graph)
    return out, refused
