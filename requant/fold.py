"""Exact per-input-channel rescaling of a group of MatMuls: X W = (X diag(1/s)) (diag(s) W).

Shared by SmoothQuant (s from activation and weight ranges) and the activation-aware weight-only recipe
(s searched against the block-quantized weight). With s a power of two both products are exact in
float32, so the rescaled encoder equals the original bit for bit. 1/s goes into the LayerNorm's gamma
and beta when every reader of its output is rescaled (Shape readers aside), else into one inserted Mul.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from requant import onnx_graph as og
from requant import patterns

Replacements = dict[str, Callable[[], np.ndarray]]


def fold_scale(graph: onnx.GraphProto, tensor: str, readers: list[onnx.NodeProto], scale: np.ndarray,
               weights_dir: Path, replace: Replacements) -> bool:
    """Scale the readers' weight rows by `scale` and the activation `tensor` by 1/scale, in place (weight
    bytes lazily into `replace`); True if 1/scale went into a LayerNorm, False if into an inserted Mul."""
    inits = {t.name: t for t in graph.initializer}
    for reader in readers:
        weight = inits[reader.input[1]]
        replace[weight.name] = lambda w=weight, s=scale: og.read_tensor(w, weights_dir) * s[:, None]
    norm = patterns.foldable_norm(graph, tensor, readers, scale.shape[0])
    if norm is None:
        _insert_mul(graph, tensor, readers, (1 / scale).astype(np.float32))
        return False
    for param in (p for p in norm.input[1:3] if p):
        _rescale_param(inits[param], weights_dir, scale, replace)
    return True


def _rescale_param(tensor: onnx.TensorProto, weights_dir: Path, scale: np.ndarray, replace: Replacements) -> None:
    if og.is_external(tensor):
        replace[tensor.name] = lambda: og.read_tensor(tensor, weights_dir) / scale
    else:  # small inline parameter: rewrite it in the proto
        tensor.CopyFrom(numpy_helper.from_array(og.read_tensor(tensor, weights_dir) / scale, tensor.name))


def _insert_mul(graph: onnx.GraphProto, tensor: str, readers: list[onnx.NodeProto], inverse: np.ndarray) -> None:
    """x' = x * (1/s) feeding only the rescaled readers; placed just before the first of them."""
    taken = {t for n in graph.node for t in [*n.input, *n.output]} | {t.name for t in graph.initializer}
    base = f"{tensor}_smooth"
    while base in taken or f"{base}_inv_scale" in taken:
        base += "_"
    graph.initializer.append(numpy_helper.from_array(inverse, f"{base}_inv_scale"))
    mul = helper.make_node("Mul", [tensor, f"{base}_inv_scale"], [base], name=f"{base}_mul")
    first = min(list(graph.node).index(r) for r in readers)
    graph.node.insert(first, mul)
    for reader in readers:
        reader.input[0] = base
