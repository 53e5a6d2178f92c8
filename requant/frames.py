"""The encoder's per-frame modules over blocks of frames: what still grows with a long pass, made O(block).

Each FastConformer layer adds to its residual stream [B, T, D] two feed-forward modules ([B, T, 4D] inside)
and a conv module ([B, T, 2D] inside). Every output frame of these depends on its own input frame only, but
for the depthwise convolution, which reads k-1 neighbours. The rewrite runs each such module, its nodes
unchanged, in an ONNX Loop over blocks of `block` frames: the nodes before the depthwise convolution on the
block widened by the kernel's halo (cut at the recording's ends, where the export's own Pad puts zeros), the
rest on the block itself; the Loop stacks the blocks' outputs once at its end (onnx_graph.stacked_body). No
tensor wider than [B, T, D] is alive, and each block's own tensors are O(block).

A module is the branch between a residual Add's stream input and its other input. It is taken only when the
branch begins with a LayerNorm over channels and holds nothing but per-frame operations: element-wise ones
with constants or with a tensor from outside that has the time axis (the padding mask), LayerNorms,
MatMuls with constant weights, channel Splits, Transposes, Q/DQ with constant scales, BatchNorm, kernel-1
Convs, and at most one Pad + Conv along time (the halo). Anything else, attention or a statistic over time
(DynamicQuantizeLinear), leaves the module as it is, with the reason. The weights' constant nodes (int8
DequantizeLinear) move into the body with their readers, so onnxruntime still fuses Q/DQ around each MatMul.

Exactness: every module whose pointwise convs are MatMuls (stage pointwise: every quantized variant) gives
the same bits. The export's own kernel-1 Convs do not: onnxruntime's Conv sums in an order that depends on the
number of frames, so the fp32 export differs in its last bits (1.7e-6 on the random model's outputs).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx
from onnx import helper

from requant import onnx_graph as og

PREFIX = "/frames."
UNARY = {"Sigmoid", "Tanh", "Relu", "Neg", "Exp", "Sqrt", "Erf", "Softplus", "Cast", "Identity", "Reciprocal"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "And", "Or", "Not", "Equal"}


@dataclass
class Module:
    """One residual branch: its stream input, its output, its nodes, and each tensor's time axis."""

    stream: str
    out: str
    nodes: list[onnx.NodeProto]
    axis: dict[str, int] = field(default_factory=dict)  # branch tensors and sliced outside tensors
    outside: dict[str, int] = field(default_factory=dict)  # tensors from outside that carry time -> axis
    halo: tuple[onnx.NodeProto, int, int, int] | None = None  # the Pad before the depthwise Conv: time pads, rank
    wide: set[str] = field(default_factory=set)  # nodes computed on the block widened by the halo
    constants: list[onnx.NodeProto] = field(default_factory=list)  # constant producers moved into the body


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default


class _Graph:
    """The lookups a module search needs, built once per model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.graph, self.makers, self.users = graph, og.producers(graph), og.consumers(graph)
        self.outputs = {o.name for o in graph.output}
        self.constant = {t.name for t in graph.initializer}
        for node in graph.node:  # in graph order: a node of constants only is a constant
            if node.op_type != "Loop" and all(not i or i in self.constant for i in node.input):
                self.constant.update(o for o in node.output if o)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        self.dims: dict[str, list[int | None]] = {}
        for info in [*inferred.value_info, *inferred.input, *inferred.output]:
            if info.type.tensor_type.HasField("shape"):
                self.dims[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in info.type.tensor_type.shape.dim]
        self.dims.update({t.name: list(t.dims) for t in graph.initializer})
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute[0].type == onnx.AttributeProto.TENSOR:
                self.dims[node.output[0]] = list(node.attribute[0].t.dims)

    def rank(self, tensor: str) -> int | None:
        return len(self.dims[tensor]) if tensor in self.dims else None

    def branch(self, stream: str, out: str) -> list[onnx.NodeProto]:
        """The nodes on the paths from `stream` to `out`, in graph order."""
        reached, pending = {stream}, [stream]
        while pending:
            for node, _ in self.users.get(pending.pop(), []):
                for name in node.output:
                    if name and name not in reached:
                        reached.add(name)
                        pending.append(name)
        needed = {n.name for n in og.upstream(self.graph, out, stop=stream)}
        return [n for n in self.graph.node if n.name in needed and any(i in reached for i in n.input)]


def _time_axis(g: _Graph, module: Module, node: onnx.NodeProto) -> str:
    """Give the node's outputs their time axis; "" when it is per-frame, else the reason it is not."""
    axis = module.axis
    inside = [i for i in node.input if i in axis]
    a, rank = axis[inside[0]], g.rank(inside[0])
    if rank is None:
        return f"{node.name}: no inferred rank"
    out_axis = a
    if node.op_type in UNARY:
        pass
    elif node.op_type in BROADCAST:
        out_rank = max(g.rank(i) or 0 for i in node.input if i)
        out_axis = a + out_rank - rank
        for name in node.input:
            if not name or name in g.constant:
                continue
            r = g.rank(name)
            if r is None:
                return f"{node.name}: no inferred rank for {name}"
            own = out_axis - (out_rank - r)
            if name in axis:
                if own != axis[name]:
                    return f"{node.name}: its inputs hold time on different axes"
            elif own >= 0 and g.dims[name][own] != 1:  # from outside with the time axis: sliced per block
                module.outside[name] = own
    elif node.op_type == "LayerNormalization":
        if not a < int(_attr(node, "axis", -1)) % rank:
            return f"{node.name}: normalises over time"
    elif node.op_type == "MatMul":
        if node.input[1] not in g.constant or node.input[0] not in axis or a >= rank - 1:
            return f"{node.name}: not activations x constant weight"
    elif node.op_type == "Split":
        if int(_attr(node, "axis", 0)) % rank == a:
            return f"{node.name}: splits time"
    elif node.op_type == "Transpose":
        out_axis = list(_attr(node, "perm")).index(a)
    elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        if any(i not in g.constant for i in node.input[1:] if i):
            return f"{node.name}: its scale is computed"
        if int(_attr(node, "axis", 1)) % rank == a and len(g.dims.get(node.input[1], [])) > 0:
            return f"{node.name}: quantised per time step"
    elif node.op_type == "BatchNormalization":
        if a == 1:
            return f"{node.name}: normalises over time"
    elif node.op_type == "Conv":
        return _conv(g, module, node, a, rank)
    elif node.op_type == "Pad":  # only as a Conv's halo, which the Conv checks
        if [u.op_type for u, _ in g.users[node.output[0]]] != ["Conv"]:
            return f"{node.name}: a Pad that no Conv reads alone"
    else:
        return f"{node.name}: {node.op_type} is not per frame"
    for name in node.output:
        if name:
            axis[name] = out_axis
    return ""


def _conv(g: _Graph, module: Module, node: onnx.NodeProto, a: int, rank: int) -> str:
    """A kernel-1 Conv, or the depthwise Conv behind its Pad (the module's one halo)."""
    weight = node.input[1]
    kernel = g.dims.get(weight, [None])[2:] if weight in g.constant else [None]
    plain = all(s == 1 for s in _attr(node, "strides", [1])) and all(d == 1 for d in _attr(node, "dilations", [1]))
    if rank != 3 or a != 2 or not plain or kernel[0] is None or any(_attr(node, "pads", [0, 0])):
        return f"{node.name}: not a 1-D Conv along time with stride 1 and no pads of its own"
    if kernel[0] > 1:
        pad = g.makers.get(node.input[0])
        pads = og.constant_value(g.graph, pad.input[1]) if pad is not None and pad.op_type == "Pad" else None
        if module.halo is not None or pads is None or len(pad.input) > 3 and pad.input[3] \
                or _attr(pad, "mode", b"constant") not in (b"constant", "constant"):
            return f"{node.name}: its time context does not come from one constant Pad"
        pads = [int(p) for p in pads]
        if any(p for i, p in enumerate(pads) if i % rank != a) or pads[a] + pads[a + rank] != kernel[0] - 1:
            return f"{node.name}: its Pad is not the kernel's halo along time"
        module.halo = (pad, pads[a], pads[a + rank], rank)
    module.axis[node.output[0]] = a
    return ""


def find_modules(model: onnx.ModelProto) -> tuple[list[Module], Counter[str]]:
    """Every residual branch the rewrite can take, and why the others were left (counted by reason)."""
    g = _Graph(model)
    modules, refused = [], Counter()
    for add in [n for n in g.graph.node if n.op_type == "Add"]:
        for stream, out in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            if stream in g.constant or out in g.constant:
                continue
            nodes = g.branch(stream, out)
            if not nodes:
                continue
            module, reason = _module(g, stream, out, nodes)
            if module is None:
                refused[reason.split(": ", 1)[-1]] += 1
            else:
                modules.append(module)
    return modules, refused


def _module(g: _Graph, stream: str, out: str, nodes: list[onnx.NodeProto]) -> tuple[Module | None, str]:
    first = [n for n in nodes if stream in n.input]
    if g.rank(stream) != 3 or any(n.op_type != "LayerNormalization" for n in first):
        return None, f"{stream}: the branch does not begin with a LayerNorm over channels"
    module = Module(stream, out, nodes, axis={stream: 1}, outside={stream: 1})
    names = {n.name for n in nodes}
    for node in nodes:
        reason = _time_axis(g, module, node)
        if reason:
            return None, reason
    for node in nodes:
        for name in node.output:
            if name and name != out and (name in g.outputs or any(u.name not in names for u, _ in g.users[name])):
                return None, f"{node.name}: its output is read outside the module"
    if module.axis[out] != 1:
        return None, f"{out}: the module's output does not hold time on axis 1"
    if module.halo is not None:
        module.wide = {n.name for n in og.upstream(g.graph, module.halo[0].input[0], stop=stream)} & names
        for node in nodes:
            if node.name not in module.wide and node is not module.halo[0] and \
                    any(g.makers.get(i) is not None and g.makers[i].name in module.wide for i in node.input):
                return None, f"{node.name}: reads frames on both sides of the depthwise convolution"
    module.constants = _constant_producers(g, nodes)
    return module, ""


def _constant_producers(g: _Graph, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes of constants only (DequantizeLinear of int8 weights) that nothing but the module reads."""
    taken = {n.name for n in nodes}
    moved: list[onnx.NodeProto] = []
    changed = True
    while changed:
        changed = False
        for node in g.graph.node:
            if node.name in taken or node.op_type in ("Constant", "Loop") or node.output[0] not in g.constant:
                continue
            readers = [u.name for o in node.output if o for u, _ in g.users.get(o, [])]
            if readers and all(r in taken for r in readers) and not set(node.output) & g.outputs:
                taken.add(node.name)
                moved.append(node)
                changed = True
    order = {n.name: i for i, n in enumerate(g.graph.node)}
    return sorted(moved, key=lambda n: order[n.name])


def _body(module: Module, inner: str, block: int, frames: str) -> onnx.GraphProto:
    """One Loop turn: the module on frames [s, e) (and [lo, hi) before the halo), appended to the output."""
    b = og.NewNodes(inner)
    op, ints = b.op, b.ints
    start = op("Mul", [op("Unsqueeze", [f"{inner}i", ints("c0", [0])], "i1"), ints("block", [block])], "start")
    end = op("Min", [op("Add", [start, ints("block2", [block])], "end_raw"), frames], "end")
    windows = {"block": (start, end)}
    if module.halo is not None:
        pad, left, right, _ = module.halo
        lo = op("Max", [op("Sub", [start, ints("left", [left])], "lo_raw"), ints("zero", [0])], "lo")
        hi = op("Min", [op("Add", [end, ints("right", [right])], "hi_raw"), frames], "hi")
        windows["wide"] = (lo, hi)
    sliced: dict[tuple[str, str], str] = {}

    def outside(name: str, window: str) -> str:
        if (name, window) not in sliced:
            first, stop = windows[window]
            axis = ints(f"axis{len(sliced)}", [module.outside[name]])
            sliced[name, window] = op("Slice", [name, first, stop, axis], f"in{len(sliced)}")
        return sliced[name, window]

    renamed: dict[str, str] = {}
    for node in [*module.constants, *module.nodes]:
        window = "wide" if node.name in module.wide else "block"
        inputs = [renamed.get(i) or (outside(i, window) if i in module.outside else i) for i in node.input]
        if module.halo is not None and node is module.halo[0]:  # zeros only where the recording ends
            rank = module.halo[3]
            before = op("Sub", [ints("left_pad", [left]), op("Sub", [start, lo], "lo_cut")], "pad_left")
            after = op("Sub", [ints("right_pad", [right]), op("Sub", [hi, end], "hi_cut")], "pad_right")
            a = module.axis[node.input[0]]
            inputs[1] = op("Concat", [ints("pads_0", [0] * a), before, ints("pads_1", [0] * (rank - 1)), after,
                                      ints("pads_2", [0] * (rank - 1 - a))], "pads", axis=0)
        copy = helper.make_node(node.op_type, inputs, [f"{inner}{o}" if o else "" for o in node.output],
                                name=f"{inner}{node.name}")
        copy.attribute.extend(node.attribute)
        b.nodes.append(copy)
        renamed.update({o: f"{inner}{o}" for o in node.output if o})
    return og.stacked_body(b, renamed[module.out], op("Sub", [end, start], "rows"), block, 1, 3, f"{inner}graph")


def rewrite(model: onnx.ModelProto, block: int) -> tuple[onnx.ModelProto, dict]:
    """A copy of model with every per-frame module computed over blocks of `block` frames, and a report:
    how many modules were taken and, by reason, how many were left."""
    if block < 1:
        raise ValueError(f"frame block={block}: must be a positive number of encoder frames")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    modules, refused = find_modules(out)
    for index, module in enumerate(modules):
        prefix = f"{PREFIX}{index}/"
        for node in [*module.nodes, *module.constants]:
            graph.node.remove(node)
        new = og.NewNodes(prefix)
        frames = new.op("Shape", [module.stream], "T", start=1, end=2)
        og.stacked_loop(new, _body(module, f"{prefix}body/", block, frames), frames, block, 1, 3, module.out)
        og.insert_before_first_reader(graph, module.out, new.nodes)
    og.drop_dead_nodes(graph)
    return out, {"modules": len(modules), "refused": dict(sorted(refused.items())), "block": block}
