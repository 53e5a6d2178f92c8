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
has a single reader and the pad is the rel_shift's; anything else is reported and left unchanged. The same
attention after requant/glue.py (the shift without its Pad, the mask as a bias added once per layer, the
empty rows zeroed on the context) is matched too: the blockwise rewrite replaces it just the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from requant import onnx_graph as og
from requant import patterns

SHIFT_CHAIN = ("Slice", "Reshape", "Slice", "Reshape", "Pad", "MatMul")  # read backwards from the Add
GLUED_SHIFT_CHAIN = ("Slice", "Reshape", "Slice", "Reshape", "MatMul")  # requant/glue.py's shift, without the Pad
REL_SHIFT_PADS = [0, 0, 0, 1, 0, 0, 0, 0]
# a masked score is pushed at least this far below its row: exp() of it underflows to exactly 0, so adding the
# fill (requant/glue.py, the blockwise body) gives what the export's Where gives
MIN_FILL = -1000.0
LOCAL_POSITIONS = "/local_positions/"


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
    glued: bool = False  # in requant/glue.py's form


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
        glued = made_by(softmax.input[0], "Add") if where_in is None else None  # requant/glue.py's form
        bias = made_by(glued.input[1], "Where") if glued is not None else None
        masked = where_in or (glued if bias is not None else None)
        div = made_by(masked.input[0] if glued is not None else masked.input[2], "Div") if masked is not None else None
        add = made_by(div.input[0], "Add") if div is not None else None
        after = single_reader(softmax.output[0])
        where_out, context = (after, single_reader(after.output[0]) if after is not None else None) \
            if glued is None else (single_reader(after.output[0]) if after is not None else None, after)
        mask_where = where_in if glued is None else bias
        if None in (masked, div, add, where_out, context) or where_out.op_type != "Where" \
                or context.op_type != "MatMul" or (glued is None and where_out.input[0] != where_in.input[0]):
            refused.append(f"{softmax.name}: not Div -> Where(mask) -> Softmax -> Where(mask) -> MatMul")
            continue
        chains, shift_chain = {}, SHIFT_CHAIN if glued is None else GLUED_SHIFT_CHAIN
        for term in add.input:
            chain, tensor = [], term
            for op in shift_chain:
                node = made_by(tensor, op)
                if node is None:
                    break
                chain.append(node)
                tensor = node.input[0]
            chains[term] = chain
        shifted = [t for t, c in chains.items() if len(c) == len(shift_chain)]
        plain = [t for t in add.input if made_by(t, "MatMul") is not None and t not in shifted]
        if len(shifted) != 1 or len(plain) != 1:
            refused.append(f"{softmax.name}: the scores are not MatMul + rel_shift(MatMul)")
            continue
        chain, ac = chains[shifted[0]], made_by(plain[0], "MatMul")
        bd, shift = chain[-1], chain[:-1]
        pads = og.constant_value(graph, shift[-1].input[1]) if glued is None and len(shift[-1].input) > 1 else None
        inner = [ac, bd, *shift, add, div, masked]
        if (glued is None and (pads is None or pads.tolist() != REL_SHIFT_PADS)) or any(
                single_reader(out) is None for node in inner for out in node.output):
            refused.append(f"{softmax.name}: the shift is not the export's rel_shift, or an intermediate is read twice")
            continue
        fill = og.constant_value(graph, mask_where.input[1])
        zero = og.constant_value(graph, mask_where.input[2] if glued is not None else where_out.input[1])
        if fill is None or fill.size != 1 or float(fill.reshape(())) > MIN_FILL \
                or zero is None or zero.size != 1 or float(zero.reshape(())) != 0.0:
            refused.append(f"{softmax.name}: the mask's fills are not constants {MIN_FILL:g} or below, and 0")
            continue
        tail = (softmax, where_out, context) if glued is None else (softmax, context, where_out)
        sites.append(Site(qu=ac.input[0], k=ac.input[1], qv=bd.input[0], pe=bd.input[1], mask=mask_where.input[0],
                          v=context.input[1], scale=div.input[1], fill=mask_where.input[1],
                          zero=mask_where.input[2] if glued is not None else where_out.input[1],
                          softmax=softmax, out=where_out.output[0] if glued is not None else context.output[0],
                          nodes=(*inner, *tail), glued=glued is not None))
    return sites, refused


@dataclass(frozen=True)
class MaskSource:
    """What the export's attention mask [B, 1, T, T] is made of: not(valid_i and valid_j [and |i-j| <= band])."""

    valid: str  # [B, T] True for the frames within each item's length
    band: int | None  # the model's own local window, if its mask has one
    nodes: tuple[onnx.NodeProto, ...]  # the nodes that build the [B, 1, T, T] mask


def find_mask_source(graph: onnx.GraphProto, mask: str) -> MaskSource | None:
    """The [B, T] validity the mask is built from, if the mask is the export's construction node for node:
    Unsqueeze(Not(And(Tile(valid), Transpose(Tile(valid))) [And band])); None for anything else."""
    makers = og.producers(graph)

    def made_by(tensor: str, op: str) -> onnx.NodeProto | None:
        node = makers.get(tensor)
        return node if node is not None and node.op_type == op else None

    unsqueeze = made_by(mask, "Unsqueeze")
    negate = made_by(unsqueeze.input[0], "Not") if unsqueeze is not None else None
    both = made_by(negate.input[0], "And") if negate is not None else None
    axes = og.constant_value(graph, unsqueeze.input[1]) if unsqueeze is not None else None
    if both is None or axes is None or axes.tolist() != [1]:
        return None
    band, band_nodes, pair = None, [], both
    inner = [made_by(t, "And") for t in both.input]
    if any(inner):  # (pad pair) And band
        pair = next(n for n in inner if n is not None)
        band_term = both.input[1] if inner[0] is not None else both.input[0]
        band, band_nodes = _band(graph, band_term, made_by)
        if band is None:
            return None
    tiles = [made_by(t, "Tile") for t in pair.input]
    transposes = [made_by(t, "Transpose") for t in pair.input]
    if not (tiles[0] and transposes[1]) and not (tiles[1] and transposes[0]):
        return None
    tile = tiles[0] or tiles[1]
    transpose = transposes[1] if tiles[0] else transposes[0]
    lift = made_by(tile.input[0], "Unsqueeze")
    lift_axes = og.constant_value(graph, lift.input[1]) if lift is not None else None
    if transpose.input[0] != tile.output[0] or lift_axes is None or lift_axes.tolist() != [1] \
            or [a.ints for a in transpose.attribute if a.name == "perm"] != [[0, 2, 1]]:
        return None
    return MaskSource(valid=lift.input[0], band=band, nodes=(unsqueeze, negate, both, pair, tile, transpose, *band_nodes))


def _band(graph: onnx.GraphProto, tensor: str, made_by) -> tuple[int | None, list[onnx.NodeProto]]:
    """The width c of a Not(Greater(Abs(Sub(i, j)), c)) band, and its nodes."""
    negate = made_by(tensor, "Not")
    greater = made_by(negate.input[0], "Greater") if negate is not None else None
    distance = made_by(greater.input[0], "Abs") if greater is not None else None
    width = og.constant_value(graph, greater.input[1]) if greater is not None else None
    if distance is None or width is None or width.size != 1:
        return None, []
    return int(width.reshape(())), [negate, greater, distance]


def rows_without_keys(new: og.NewNodes, mask: str, opset: int) -> str:
    """[B, 1, R, 1] True for the query rows of a [B, 1, R, K] mask with every key masked (padded queries): the
    min over the keys (bool has no ReduceMin: via uint8)."""
    as_u8 = new.op("Cast", [mask], "mask_u8", to=TensorProto.UINT8)
    reduced = f"{new.prefix}all_masked"
    new.nodes.extend(og.reduce_nodes("ReduceMin", as_u8, reduced, [3], opset, keepdims=1))
    return new.op("Cast", [reduced], "empty_rows", to=TensorProto.BOOL)


def _body(site: Site, prefix: str, block: int, context: tuple[int, int] | None,
          mask_source: MaskSource | None, opset: int, pe_offset: str | None = None) -> onnx.GraphProto:
    """One Loop iteration: queries [s, e) = [i*block, min((i+1)*block, T)) against the keys [k0, k1) they
    can see (all T, or the local band [s-left, e-1+right]), appended to the context so far."""
    inner = f"{prefix}body/"  # the body's own names: none may shadow the outer graph's
    b = og.NewNodes(inner)
    op, const = b.op, b.ints
    t1, two, one, zero = f"{prefix}T", const("c2", [2]), const("c1", [1]), const("c0", [0])
    axis1, axis2, axis3 = const("axis1", [1]), const("axis2", [2]), const("axis3", [3])
    start = op("Mul", [op("Unsqueeze", [f"{inner}i", zero], "i1"), const("block", [block])], "start")
    end = op("Min", [op("Add", [start, const("block2", [block])], "end_raw"), t1], "end")
    rows = op("Sub", [end, start], "rows")
    if context is None:
        k0, k1, keys = zero, t1, t1
    else:
        k0 = op("Max", [op("Sub", [start, const("left", [context[0]])], "k0_raw"), zero], "k0")
        k1 = op("Min", [op("Add", [end, const("right", [context[1]])], "k1_raw"), t1], "k1")
        keys = op("Sub", [k1, k0], "keys")
    key_slice = (lambda x, name, axis: op("Slice", [x, k0, k1, axis], name)) if context is not None else \
        (lambda x, name, axis: x)
    scores_ac = op("MatMul", [op("Slice", [site.qu, start, end, axis2], "qu"), key_slice(site.k, "k", axis3)], "ac")
    # the positions of keys [k0, k1) seen from queries [s, e): relative positions e-1-k0 down to s-k1+1
    w0 = op("Add", [op("Sub", [t1, end], "w0_raw"), k0], "w0")
    w1 = op("Add", [op("Sub", [op("Sub", [t1, one], "t_m1"), start], "w1_raw"), k1], "w1")
    if pe_offset is not None:  # the projected positions hold only the band's rows (local_positions)
        w0, w1 = op("Sub", [w0, pe_offset], "w0_band"), op("Sub", [w1, pe_offset], "w1_band")
    window = op("Slice", [site.pe, w0, w1, axis3], "pe")
    raw = op("MatMul", [op("Slice", [site.qv, start, end, axis2], "qv"), window], "bd_raw")  # [B,H,R,W], W=K+R-1
    # rel_shift of the block without a Pad (requant/glue.py's fold): out[r, c] = raw[r, R-1-r+c] is element
    # r*(W-1) + R-1 + c of the flat rows; rows of L = max(W-1, K) columns (one query: L = K = W)
    flat = op("Reshape", [raw, const("flat", [0, 0, -1])], "bd_flat")
    width = op("Sub", [op("Add", [keys, rows], "k_r"), one], "width")
    row = op("Max", [op("Sub", [width, one], "w_m1"), keys], "row")
    skip = op("Sub", [rows, one], "skip")
    cut = op("Slice", [flat, skip, op("Add", [skip, op("Mul", [rows, row], "cells")], "stop"), axis2], "bd_cut")
    folded = op("Reshape", [cut, op("Concat", [const("keep", [0, 0]), rows, row], "fold", axis=0)], "bd_fold")
    shifted = op("Slice", [folded, zero, keys, axis3], "bd")
    if mask_source is None:
        mask = key_slice(op("Slice", [site.mask, start, end, axis2], "mask_rows"), "mask", axis3)
    else:  # the block's mask computed from the [B, T] validity: no [B, 1, T, T] tensor anywhere
        ok = op("And", [op("Unsqueeze", [op("Slice", [mask_source.valid, start, end, axis1], "valid_q"), two],
                           "valid_q3"),
                        op("Unsqueeze", [op("Slice", [mask_source.valid, k0, k1, axis1], "valid_k"), one],
                           "valid_k3")], "ok_pad")  # [B, R, K]
        bounds = [] if mask_source.band is None else [(-mask_source.band, mask_source.band)]
        bounds += [] if context is None else [(-context[0], context[1])]
        if bounds:  # offset d = j - i of each (query, key) pair, [R, K]
            scalar = lambda x, name: op("Squeeze", [x, zero], name)  # noqa: E731
            offset = op("Sub", [op("Unsqueeze", [op("Range", [scalar(k0, "k0s"), scalar(k1, "k1s"), const("step", 1)],
                                                   "key_idx"), zero], "key_idx2"),
                                op("Unsqueeze", [op("Range", [scalar(start, "s0"), scalar(end, "e0"),
                                                              const("step_q", 1)], "query_idx"), one], "query_idx2")], "offset")
            for index, (low, high) in enumerate(bounds):
                inside = op("And", [op("GreaterOrEqual", [offset, const(f"low{index}", low)], f"ge{index}"),
                                    op("LessOrEqual", [offset, const(f"high{index}", high)], f"le{index}")],
                            f"inside{index}")
                ok = op("And", [ok, inside], f"ok{index}")
        mask = op("Unsqueeze", [op("Not", [ok], "not_ok"), one], "mask")
    scores = op("Div", [op("Add", [scores_ac, shifted], "sum"), site.scale], "scaled")
    # the mask as a bias [B, 1, R, K] and the rows with no visible key zeroed on the context (requant/glue.py:
    # exp() of a masked score underflows to 0 either way), not two Wheres over [B, H, R, K]
    masked = op("Add", [scores, op("Where", [mask, site.fill, site.zero], "bias")], "masked")
    softmax = op("Softmax", [masked], "softmax",
                 **{a.name: helper.get_attribute_value(a) for a in site.softmax.attribute})
    unmasked = op("MatMul", [softmax, key_slice(site.v, "v", axis2)], "ctx_unmasked")
    context_out = op("Where", [rows_without_keys(b, mask, opset), site.zero, unmasked], "ctx")
    # stacked once at the Loop's end: a growing Concat copied the context T / block times (a 60 min int8 pass at
    # Parakeet's size took 5x the 20 min one)
    return og.stacked_body(b, context_out, rows, block, 2, 4, f"{prefix}body")


def rewrite(model: onnx.ModelProto, block: int,
            context: tuple[int, int] | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of model with every matching attention computed over blocks of `block` queries, each
    against all keys (context None) or only those in the local band [i - left, i + right] (NeMo's
    rel_pos_local_attn); and the reasons any softmax was left as it was. When the mask is the export's
    construction, each block computes its own rows of it and the [B, 1, T, T] mask is gone."""
    if block < 1:
        raise ValueError(f"block={block}: must be a positive number of queries")
    if context is not None and (len(context) != 2 or min(context) < 0):
        raise ValueError(f"context={context}: must be [left, right], frames >= 0")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    sites, refused = find_sites(graph)
    if context is not None and refused:
        return model, refused  # local attention must take every site or none
    pe_offset = local_positions(out, sites, block + max(context)) if context is not None else None
    for index, site in enumerate(sites):
        prefix = f"/blockwise.{index}/"
        mask_source = find_mask_source(graph, site.mask)
        for node in site.nodes:
            graph.node.remove(node)
        new = og.NewNodes(prefix)
        t1 = new.op("Shape", [site.qu], "T", start=2, end=3)
        body = _body(site, prefix, block, tuple(context) if context else None, mask_source, og.opset_of(model),
                     pe_offset)
        og.stacked_loop(new, body, t1, block, 2, 4, site.out)  # the context [B, H, T, dk]
        og.insert_before_first_reader(graph, site.out, new.nodes)
    og.drop_dead_nodes(graph)
    return out, refused


def local_positions(model: onnx.ModelProto, sites: list[Site], reach: int) -> str | None:
    """With local attention, cut the positional table's Slice to the relative positions -reach..reach (in place)
    and return the number of rows cut above them, a tensor the blocks subtract from their window; None when
    some reader of the positions is not one of `sites` (nothing is changed then).

    The export slices 2T-1 rows, positions T-1..-(T-1), and every layer projects all of them: at 60 min a
    [1, 90 000, 1024] table alive all pass and one projection per layer, 0.37 GB each. A block of queries sees
    keys within the band only, so positions past the block size plus the context are never read."""
    found = patterns.positional_slice(model)
    if found is None or not sites:
        return None
    node, shape = found
    graph = model.graph
    downstream, pes = og.consumers(graph), {site.pe for site in sites}
    in_sites = {n.name for site in sites for n in site.nodes}
    reached, pending = {node.output[0]}, [node.output[0]]
    while pending:  # every tensor the table's rows flow into, up to the sites' projected positions
        tensor = pending.pop()
        if tensor in pes:
            continue
        for reader, _ in downstream.get(tensor, []):
            if reader.name in in_sites:  # read by an attention other than as its projected positions
                return None
            for name in reader.output:
                if name and name not in reached:
                    reached.add(name)
                    pending.append(name)
    if not pes <= reached or reached & {o.name for o in graph.output}:
        return None
    half = (shape[1] + 1) // 2  # M: row r holds position M-1-r
    new = og.NewNodes(LOCAL_POSITIONS)
    starts = new.op("Max", [node.input[1], new.ints("first", [half - 1 - reach])], "starts")
    ends = new.op("Min", [node.input[2], new.ints("stop", [half + reach])], "ends")
    offset = new.op("Sub", [starts, node.input[1]], "offset")
    node.input[1], node.input[2] = starts, ends
    position = list(graph.node).index(node)
    for index, added in enumerate(new.nodes):
        graph.node.insert(position + index, added)
    return offset


def band_masked(model: onnx.ModelProto, context: tuple[int, int]) -> onnx.ModelProto:
    """The reference local attention is checked against: the original full attention, quadratic as it is,
    with every key outside [i - left, i + right] masked too (same positions, same padding masks)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    sites, _ = find_sites(graph)
    banded: dict[str, str] = {}
    for index, site in enumerate(sites):
        if site.mask not in banded:
            new = og.NewNodes(f"/band_reference.{index}/")
            frames = new.op("Squeeze", [new.op("Shape", [site.mask], "T", start=2, end=3), new.ints("ax0", [0])], "t")
            idx = new.op("Range", [new.ints("zero", 0), frames, new.ints("one", 1)], "idx")
            offset = new.op("Sub", [new.op("Unsqueeze", [idx, new.ints("ax_row", [0])], "keys"),
                                    new.op("Unsqueeze", [idx, new.ints("ax_col", [1])], "queries")], "offset")
            outside = new.op("Or", [new.op("Less", [offset, new.ints("left", -context[0])], "before"),
                                    new.op("Greater", [offset, new.ints("right", context[1])], "after")], "outside")
            banded[site.mask] = new.op("Or", [site.mask, new.op("Unsqueeze", [outside, new.ints("ax01", [0, 1])],
                                                                 "outside4")], "mask")
            og.insert_before_first_reader(graph, site.mask, new.nodes)
        for node in graph.node:  # the export's two Wheres per layer, or glue's bias and empty rows once
            if site.mask in node.input and not node.name.startswith("/band_reference."):
                node.input[list(node.input).index(site.mask)] = banded[site.mask]
    return out
