"""An exact chunked rewrite of the encoder's convolutional subsampling: its memory no longer grows with T.

The export's subsampling is a stack of 2-D convolutions over the features [B, 1, T, F] (dw_striding:
three stride-2 stages, 8x). It runs at the feature frame rate, so at 390 s its first output alone is
[1, 256, 19 500, 64] floats, 1.3 GB, and with the next stage's it is the largest thing alive in a pass
once the attention is blockwise. Each output frame only sees a few input frames, so the rewrite runs
the same nodes in an ONNX Loop over chunks of `block` output frames: the chunk's input frames plus a halo
of output frames on each side, then the halo cropped. Chunks start on a multiple of the total stride,
so every kept frame sees the very input, and padding, it saw in one pass: the result is the same.
The stack's weights (0.5 MB in Parakeet) move into the Loop body: onnxruntime's NCHWc layout transform
only takes Convs whose weights are the graph's own constants, and the same kernels as the one-pass graph
keep the output bit for bit equal (with outer-scope weights it differed by 1e-7, enough to flip a
downstream int8 rounding and move the int8 encoder's output by 2 %).

A stack is matched only when it is the export's: the features transposed and unsqueezed to [B, 1, T, F],
then only Conv and Relu nodes, each read once, every Conv centred in time (odd kernel, pads (k-1)/2 on
both sides, no dilation). Anything else is reported and left unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from requant import onnx_graph as og

PREFIX = "/subsampling_chunks/"


@dataclass(frozen=True)
class Stack:
    """The subsampling's input and output tensors, its nodes, and its geometry along time."""

    features: str  # [B, 1, T, F]
    out: str  # [B, C, T', F']
    nodes: tuple[onnx.NodeProto, ...]
    time_strides: tuple[int, ...]  # per Conv
    stride: int  # input frames per output frame
    halo: int  # output frames of context kept on each side of a chunk


def _attr(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return list(found[0]) if found else default


def find_stack(graph: onnx.GraphProto) -> tuple[Stack | None, str]:
    """The subsampling stack the rewrite can take, or None and the reason it cannot."""
    makers, readers = og.producers(graph), og.consumers(graph)
    inputs, outputs = {i.name for i in graph.input}, {o.name for o in graph.output}
    first = next((n for n in graph.node if n.op_type == "Conv"), None)
    unsqueeze = makers.get(first.input[0]) if first is not None else None
    transpose = makers.get(unsqueeze.input[0]) if unsqueeze is not None else None
    if transpose is None or unsqueeze.op_type != "Unsqueeze" or transpose.op_type != "Transpose" \
            or transpose.input[0] not in inputs or _attr(transpose, "perm", []) != [0, 2, 1]:
        return None, "the first Conv does not read the input features transposed and unsqueezed to [B, 1, T, F]"
    nodes, convs, node = [], [], first
    while node.op_type in ("Conv", "Relu"):
        if node.op_type == "Conv":
            kernel = _attr(node, "kernel_shape", [])
            pads, strides = _attr(node, "pads", [0] * 4), _attr(node, "strides", [1, 1])
            if len(kernel) != 2 or kernel[0] % 2 == 0 or pads[0] != pads[2] or pads[0] != kernel[0] // 2 \
                    or _attr(node, "dilations", [1, 1]) != [1, 1] or any(a.name == "auto_pad" for a in node.attribute):
                return None, f"{node.name}: not centred in time (odd kernel, pads (k-1)/2, no dilation)"
            convs.append((kernel[0], strides[0]))
        nodes.append(node)
        users = readers.get(node.output[0], [])
        if len(users) != 1 or node.output[0] in outputs:  # read elsewhere too: the stack ends here
            break
        node = users[0][0]
    stride = int(np.prod([s for _, s in convs]))
    if stride < 2:
        return None, "the Conv stack after the features does not subsample in time"
    reach, step = 0, 1  # input frames each side an output frame sees, through every Conv
    for kernel, s in convs:
        reach, step = reach + (kernel // 2) * step, step * s
    return Stack(features=first.input[0], out=nodes[-1].output[0], nodes=tuple(nodes),
                 time_strides=tuple(s for _, s in convs), stride=stride, halo=-(-reach // stride) + 1), ""


def _body(stack: Stack, block: int, total: str, frames: str, weights: dict[str, np.ndarray]) -> onnx.GraphProto:
    """One Loop iteration: output frames [a, b), a = i*block, from input frames [(a-h)S, (b+h)S), padded
    to `block` frames so that every iteration's scan output has one shape."""
    inner = f"{PREFIX}body/"
    b = og.NewNodes(inner)
    axis, zero = b.ints("axis", [2]), b.ints("zero", [0])
    start = b.op("Mul", [b.op("Unsqueeze", [f"{inner}i", zero], "i1"), b.ints("block", [block])], "a")
    end = b.op("Min", [b.op("Add", [start, b.ints("block2", [block])], "a_plus"), total], "b")
    halo = b.ints("halo", [stack.halo])
    first = b.op("Max", [b.op("Sub", [start, halo], "a_h"), zero], "first")  # first output frame computed
    stride = b.ints("stride", [stack.stride])
    chunk = b.op("Slice", [stack.features, b.op("Mul", [first, stride], "in0"),
                           b.op("Min", [b.op("Mul", [b.op("Add", [end, halo], "b_h"), stride], "in1_raw"), frames],
                                "in1"), axis], "chunk")
    renamed = {stack.features: chunk} | {name: f"{inner}{name}" for name in weights}
    for index, node in enumerate(stack.nodes):  # the same nodes on the chunk
        copy = helper.make_node(node.op_type, [renamed.get(i, i) for i in node.input], [f"{inner}{index}"],
                                name=f"{inner}{index}")
        copy.attribute.extend(node.attribute)
        b.nodes.append(copy)
        renamed[node.output[0]] = copy.output[0]
    kept = b.op("Slice", [renamed[stack.out], b.op("Sub", [start, first], "k0"), b.op("Sub", [end, first], "k1"), axis],
                "kept")
    own = [numpy_helper.from_array(np.asarray(array), renamed[name]) for name, array in weights.items()]
    return og.stacked_body(b, kept, b.op("Sub", [end, start], "rows"), block, 2, 4, f"{PREFIX}body", own)


def rewrite(model: onnx.ModelProto, block: int, base_dir: Path = Path()) -> tuple[onnx.ModelProto, str]:
    """A copy of model whose subsampling runs over chunks of `block` output frames; or the model as it
    was and the reason it was left alone ("" when rewritten). base_dir: where external weights are."""
    if block < 1:
        raise ValueError(f"subsampling block={block}: must be a positive number of encoder frames")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    stack, reason = find_stack(graph)
    if stack is None:
        return out, reason
    for node in stack.nodes:
        graph.node.remove(node)
    read_by_stack, read_elsewhere = {i for n in stack.nodes for i in n.input}, set(og.consumers(graph))
    tensors = [t for t in graph.initializer if t.name in read_by_stack]
    weights = {t.name: og.read_tensor(t, base_dir) for t in tensors}
    for tensor in tensors:
        if tensor.name not in read_elsewhere:
            graph.initializer.remove(tensor)
    new = og.NewNodes(PREFIX)
    frames = new.op("Shape", [stack.features], "T", start=2, end=3)
    total = frames
    one = new.ints("one", [1])
    for index, stride in enumerate(stack.time_strides):  # a centred Conv's output length: (t - 1) // s + 1
        total = new.op("Add", [new.op("Div", [new.op("Sub", [total, one], f"t{index}_less"),
                                              new.ints(f"s{index}", [stride])], f"t{index}_div"), one], f"t{index}")
    og.stacked_loop(new, _body(stack, block, total, frames, weights), total, block, 2, 4, stack.out)  # [B, C, T', F']
    og.insert_before_first_reader(graph, stack.out, new.nodes)
    og.drop_orphan_constants(graph)
    return out, ""
