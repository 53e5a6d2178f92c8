"""Pointwise (1x1) Conv1d as MatMul, exactly: what lets every int8 and weight-only recipe quantize them.

The conformer conv module runs LayerNorm -> Transpose -> Conv(1x1, d->2d) -> GLU -> mask -> depthwise Conv
-> Swish -> Conv(1x1, d->d) -> Transpose, the pointwise convs on [B, C, T]. Each is rewritten as
Transpose -> MatMul(W[:, :, 0]^T) (-> Add bias) -> Transpose, and then every Transpose pair that undoes
itself is dropped, so the first MatMul reads the LayerNorm directly (SmoothQuant folds into it) and the
module keeps the two transposes it had, now around the depthwise conv. A conv that is not 1x1, stride 1,
dilation 1, unpadded, ungrouped, with a constant weight read by it alone, is refused and left as it is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from requant import onnx_graph as og

SWAP_LAST = [0, 2, 1]  # [B, C, T] <-> [B, T, C]
MARK = "requant.pointwise: a 1x1 Conv1d rewritten"  # the doc_string of each MatMul the rewrite made


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def refusal(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], readers: Counter[str]) -> str | None:
    """Why this Conv is not a pointwise Conv1d the rewrite takes exactly; None if it is."""
    weight = inits.get(node.input[1])
    if weight is None:
        return "weight not constant"
    if int(_attr(node, "group", 1)) != 1:  # type: ignore[call-overload]
        return "grouped (depthwise)"
    if len(weight.dims) != 3:
        return f"{len(weight.dims) - 2}-D conv"
    if weight.dims[2] != 1:
        return f"kernel {weight.dims[2]}"
    if any(s != 1 for s in _attr(node, "strides", [1])):  # type: ignore[attr-defined]
        return "strided"
    if any(d != 1 for d in _attr(node, "dilations", [1])):  # type: ignore[attr-defined]
        return "dilated"
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    if any(_attr(node, "pads", [0, 0])) or auto_pad not in (b"NOTSET", b"VALID"):  # type: ignore[call-overload]
        return "padded"
    if readers[weight.name] > 1:
        return "weight shared with another node"
    return None


def plan(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], Counter[str]]:
    """The Convs the rewrite takes, and the refusal reasons of the others (reason -> count)."""
    inits = {t.name: t for t in graph.initializer}
    readers = Counter(name for n in graph.node for name in n.input)
    taken, refused = [], Counter()
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        reason = refusal(node, inits, readers)
        if reason is None:
            taken.append(node)
        else:
            refused[reason] += 1
    return taken, refused


def _transposed_weight(tensor: onnx.TensorProto, weights_dir: Path,
                       replace: dict[str, Callable[[], np.ndarray]]) -> None:
    """[O, C, 1] -> [C, O] in place: inline tensors rewritten now, external ones when the model is written."""
    original = onnx.TensorProto()
    original.CopyFrom(tensor)
    out_ch, in_ch = int(tensor.dims[0]), int(tensor.dims[1])
    if og.is_external(tensor):
        del tensor.dims[:]
        tensor.dims.extend([in_ch, out_ch])
        replace[tensor.name] = lambda: np.ascontiguousarray(og.read_tensor(original, weights_dir)[:, :, 0].T)
    else:
        tensor.CopyFrom(numpy_helper.from_array(
            np.ascontiguousarray(og.read_tensor(original, weights_dir)[:, :, 0].T), tensor.name))


def _matmul_nodes(conv: onnx.NodeProto, taken: set[str]) -> list[onnx.NodeProto]:
    stem = conv.name[: -len("Conv")] if conv.name.endswith("Conv") else f"{conv.name}/"
    x, weight, bias = conv.input[0], conv.input[1], conv.input[2] if len(conv.input) > 2 else ""

    def fresh(name: str) -> str:
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    nodes = [helper.make_node("Transpose", [x], [fresh(f"{stem}Transpose_in_output_0")],
                              name=fresh(f"{stem}Transpose_in"), perm=SWAP_LAST)]
    nodes.append(helper.make_node("MatMul", [nodes[-1].output[0], weight], [fresh(f"{stem}MatMul_output_0")],
                                  name=fresh(f"{stem}MatMul"), doc_string=MARK))
    if bias:
        nodes.append(helper.make_node("Add", [nodes[-1].output[0], bias], [fresh(f"{stem}Add_output_0")],
                                      name=fresh(f"{stem}Add")))
    nodes.append(helper.make_node("Transpose", [nodes[-1].output[0]], [conv.output[0]],
                                  name=fresh(f"{stem}Transpose_out"), perm=SWAP_LAST))
    return nodes


def rewritten_matmuls(graph: onnx.GraphProto) -> list[str]:
    """The MatMuls `rewrite` made from pointwise convs (found by their mark, whatever they are named)."""
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.doc_string == MARK]


def cancel_transposes(graph: onnx.GraphProto) -> int:
    """Readers of Transpose(Transpose(x, p), q) with q undoing p read x instead (the dead transposes are
    removed); return how many such pairs there were."""
    makers, outputs, cancelled = og.producers(graph), {o.name for o in graph.output}, 0
    for node in graph.node:
        if node.op_type != "Transpose" or node.output[0] in outputs:
            continue
        inner = makers.get(node.input[0])
        if inner is None or inner.op_type != "Transpose":
            continue
        p, q = list(_attr(inner, "perm", [])), list(_attr(node, "perm", []))  # type: ignore[call-overload]
        if not p or len(p) != len(q) or [p[i] for i in q] != list(range(len(p))):
            continue
        for reader, slot in og.consumers(graph)[node.output[0]]:
            reader.input[slot] = inner.input[0]
        cancelled += 1
    og.drop_dead_nodes(graph)
    return cancelled


def rewrite(model: onnx.ModelProto, weights_dir: Path) -> tuple[dict[str, Callable[[], np.ndarray]], dict]:
    """Rewrite every pointwise Conv1d of `model` in place as a MatMul; return the new weight bytes (lazily,
    for og.write_model) and what was done: convs, rewritten, refused (reason -> count), transposes."""
    graph = model.graph
    og.name_nodes(graph)
    transposes = og.op_counts(graph).get("Transpose", 0)
    convs, refused = plan(graph)
    inits = {t.name: t for t in graph.initializer}
    taken_names = {n.name for n in graph.node} | {t for n in graph.node for t in [*n.input, *n.output]}
    replace: dict[str, Callable[[], np.ndarray]] = {}
    for conv in convs:
        _transposed_weight(inits[conv.input[1]], weights_dir, replace)
        position = list(graph.node).index(conv)
        graph.node.remove(conv)
        for offset, node in enumerate(_matmul_nodes(conv, taken_names)):
            graph.node.insert(position + offset, node)
    if convs:
        cancel_transposes(graph)
    return replace, {
        "convs": len(convs) + sum(refused.values()), "rewritten": len(convs), "refused": dict(sorted(refused.items())),
        "transposes": transposes, "transposes_after": og.op_counts(graph).get("Transpose", 0),
    }
