"""What the transforms need to know about an encoder graph, read from its structure alone.

NeMo's export (../shared/FACTS.md, "The real export") carries patterns that a naive transform gets
wrong: encoded lengths computed in float, a constant positional table that caps one pass, Shape
readers beside the MatMuls of a LayerNorm. These functions find them on any graph, without weights,
so the census (tools/census.py), SmoothQuant, int8 and fp16 agree on one reading of the graph.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

from requant import onnx_graph as og

LENGTHS_OUTPUT = "encoded_lengths"
FRAME_SECONDS = 0.08  # 8x subsampling of 10 ms feature frames
# Ops that move or pick values without arithmetic: safe in fp16 whatever feeds them.
NO_ARITHMETIC = frozenset({"Constant", "Concat", "Expand", "Gather", "Identity", "Reshape", "Shape", "Slice",
                           "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze"})
ENCODER_IO = (("audio_signal", "length"), ("outputs", "encoded_lengths"))
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
# Every op type the pipeline's tests run the transforms on (the builder's encoder, float and quantized;
# tests/test_census.py keeps this list equal to what the builder emits).
TESTED_OPS = frozenset({
    "Abs", "Add", "And", "Cast", "Concat", "Constant", "Conv", "Cos", "Div", "Floor", "Gather", "Greater",
    "Identity", "LayerNormalization", "Less", "MatMul", "Mul", "Not", "Pad", "Range", "Relu", "Reshape",
    "Shape", "Sigmoid", "Sin", "Slice", "Softmax", "Split", "Squeeze", "Sub", "Tile", "Transpose",
    "Unsqueeze", "Where",
})


def audio_dependent(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose values depend on the signal: the float inputs (the encoder's audio_signal, the
    decoder's encoder_outputs and states) and what is computed from them. A Shape of them is not."""
    dependent = {i.name for i in graph.input if i.type.tensor_type.elem_type in FLOATS}
    for node in graph.node:  # graphs are topologically sorted
        if node.op_type not in ("Shape", "Size") and any(name in dependent for name in node.input):
            dependent.update(node.output)
    return dependent


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (inputs, initializers, inferred intermediates); needs no weights."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def fp32_islands(model: onnx.ModelProto) -> list[str]:
    """Nodes an fp16 cast must leave in fp32: float arithmetic on values that come from lengths, shapes
    or constants, not from the audio (the encoded-length chain, a computed positional table). In fp16
    they break silently: 39 001 feature frames round to 39 008, positions above 2048 lose their units."""
    graph = model.graph
    audio, types = audio_dependent(graph), tensor_types(model)
    islands = []
    for node in graph.node:
        if node.op_type in NO_ARITHMETIC or any(name in audio for name in node.input):
            continue
        if any(types.get(name) in FLOATS for name in [*node.input, *node.output] if name):
            islands.append(node.name)
    # the converter rewrites Constant nodes to fp16 even when only kept nodes read them (4999.0 -> 5000.0)
    kept, users = set(islands), og.consumers(graph)
    islands += [node.name for node in graph.node if node.op_type == "Constant" and users[node.output[0]]
                and all(reader.name in kept for reader, _ in users[node.output[0]])]
    return islands


def length_path(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes that compute `encoded_lengths`, in graph order."""
    return og.upstream(graph, LENGTHS_OUTPUT)


def positional_limit(model: onnx.ModelProto) -> int | None:
    """Largest number of encoder frames one pass can hold, from the relative-position table that the
    linear_pos MatMuls read: a table of 2M-1 rows sliced [M-T : M+T-1] holds T <= M. None if the graph
    has no such table (positions computed from T, or the table extended by requant/positions.py)."""
    found = positional_slice(model)
    return None if found is None else (max(found[1]) + 1) // 2


def positional_slice(model: onnx.ModelProto) -> tuple[onnx.NodeProto, list[int]] | None:
    """The Slice that cuts a pass's positions out of a constant [1, 2M-1, D] table (stored, or computed
    from constants only), and that table's shape; None if there is none. Found from the Slice itself, so
    that whatever a recipe puts between it and linear_pos (a Mul, Q/DQ, a Cast) does not hide it."""
    graph = model.graph
    audio, inputs = audio_dependent(graph), {i.name for i in graph.input}
    inits, makers = {t.name: t for t in graph.initializer}, og.producers(graph)
    for node in graph.node:
        if node.op_type != "Slice" or node.input[0] in audio:
            continue
        table = node.input[0]
        if table in inits:
            shape = list(inits[table].dims)
        elif makers.get(table) is not None and not _sources(graph, table) & inputs:
            try:
                shape = list(_evaluate_constant(model, table).shape)
            except Exception:  # noqa: BLE001 - a constant the reference evaluator cannot run is not the table
                continue
        else:
            continue
        if len(shape) == 3 and shape[0] == 1 and shape[1] % 2 == 1:
            return node, shape
    return None


def positional_table(model: onnx.ModelProto, base_dir: Path) -> np.ndarray:
    """The values of the table positional_slice found (its stored rows, or the constants' result)."""
    found = positional_slice(model)
    if found is None:
        raise ValueError("the encoder has no constant positional table")
    table = found[0].input[0]
    for tensor in model.graph.initializer:
        if tensor.name == table:
            return og.read_tensor(tensor, base_dir)
    return _evaluate_constant(model, table)


def _sources(graph: onnx.GraphProto, tensor: str) -> set[str]:
    """Every tensor `tensor` is computed from."""
    return {name for node in og.upstream(graph, tensor) for name in node.input}


def _evaluate_constant(model: onnx.ModelProto, tensor: str) -> np.ndarray:
    """Compute a tensor that depends on constants only (a positional table built in the graph)."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(og.extract(model, tensor)).run(None, {})[0]


def fp32_matmuls(graph: onnx.GraphProto) -> list[str]:
    """MatMuls every recipe leaves unquantized: those SmoothQuant does not class as weighted (two
    activations, tied or transposed weights), so each recipe quantizes exactly what was smoothed."""
    return [name for name, kind in og.classify_matmuls(graph).items() if kind != "weighted"]


def smoothing_plan(graph: onnx.GraphProto) -> tuple[dict[str, list[onnx.NodeProto]], dict[str, str]]:
    """Smoothable MatMuls grouped by their activation input, and every MatMul's class."""
    kinds = og.classify_matmuls(graph)
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        if kinds.get(node.name) == "weighted":
            groups[node.input[0]].append(node)
    return dict(groups), kinds


def foldable_norm(graph: onnx.GraphProto, tensor: str, readers: list[onnx.NodeProto],
                  width: int) -> onnx.NodeProto | None:
    """The LayerNorm producing `tensor` if 1/s can go into its gamma/beta: every reader is smoothed or
    only reads the shape (NeMo's export reads `query.size(0)` off the attention LayerNorm), and its
    parameters are private constants of shape [K]."""
    norm = og.producers(graph).get(tensor)
    users = og.consumers(graph)
    if norm is None or norm.op_type != "LayerNormalization" or norm.output[0] != tensor:
        return None
    value_readers = [node for node, _ in users[tensor] if node.op_type != "Shape"]
    if len(value_readers) != len(readers) or tensor in {o.name for o in graph.output}:
        return None
    inits = {t.name: t for t in graph.initializer}
    params = [name for name in norm.input[1:3] if name]
    ok = all(p in inits and list(inits[p].dims) == [width] and len(users[p]) == 1 for p in params)
    return norm if ok else None


def findings(model: onnx.ModelProto) -> list[str]:
    """One line per pattern the transforms would not handle as tested; empty if the graph is known."""
    graph = model.graph
    found = []
    names = ([i.name for i in graph.input], [o.name for o in graph.output])
    if [sorted(n) for n in names] != [sorted(n) for n in ENCODER_IO]:
        found.append(f"inputs {names[0]} / outputs {names[1]} are not Parakeet's encoder I/O "
                     f"{list(ENCODER_IO[0])} / {list(ENCODER_IO[1])}")
    untested = sorted({n.op_type for n in graph.node if n.domain in ("", "ai.onnx")} - TESTED_OPS)
    untested += sorted({f"{n.domain}.{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")})
    if untested:
        found.append(f"op types the pipeline has never been tested on: {', '.join(untested)}")
    kinds = og.classify_matmuls(graph)
    if "weighted" not in kinds.values():
        found.append(f"none of the {len(kinds)} MatMuls has a private constant [K,N] float weight: "
                     "nothing to smooth or quantize")
    if LENGTHS_OUTPUT in names[1] and not length_path(graph):
        found.append("no node computes encoded_lengths")
    return found
