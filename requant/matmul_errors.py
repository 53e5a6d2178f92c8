"""Every quantized MatMul's error in one pass: the fp32 source graph, and beside each weighted MatMul the
subgraph each quantized variant replaced it with (Q/DQ, DynamicQuantizeLinear + MatMulInteger, MatMulNBits),
fed the same fp32 input. The only extra outputs are sums of squares (in float64): of the quantized output's
difference to the fp32 MatMul's output, and of that output. One run per source and pass length gives each
MatMul's relative error, sqrt(err / ref), with no activations captured and no probe passes.

The combined graph is written to a scratch folder with hard links to the source's and the variants' weight
files (put it on their file system): no weight byte is copied, so its memory is the fp32 pass's plus the
quantized weights the kernels read.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from requant import onnx_graph as og
from requant.common import fail

Pairs = dict[str, tuple[str, str]]  # source MatMul name -> (its input, its output)


def quantized_matmuls(source: onnx.ModelProto, variant: onnx.ModelProto) -> Pairs:
    """Source MatMul name -> (input, output) tensor names, for the weighted MatMuls the variant quantized
    (its output no longer comes from a plain MatMul reading that input)."""
    kinds = og.classify_matmuls(source.graph)
    makers = og.producers(variant.graph)
    found = {}
    for node in source.graph.node:
        if kinds.get(node.name) != "weighted":
            continue
        maker = makers.get(node.output[0])
        plain = maker is not None and maker.op_type == "MatMul" and maker.input[1] == node.input[1]
        if maker is not None and not plain:
            found[node.name] = (node.input[0], node.output[0])
    return found


def _link_weights(model: onnx.ModelProto, model_dir: Path, scratch: Path, prefix: str) -> None:
    """Point the model's external tensors at hard links in scratch named prefix + their file: no byte copied.
    (onnxruntime refuses external data that resolves outside the model's folder, so not symbolic links; on
    another file system than the weights, a copy.)"""
    for tensor in (t for t in model.graph.initializer if og.is_external(t)):
        for entry in tensor.external_data:
            if entry.key == "location":
                link = scratch / f"{prefix}{entry.value}"
                if not link.exists():
                    try:
                        os.link(model_dir / entry.value, link)
                    except OSError:
                        shutil.copyfile(model_dir / entry.value, link)
                entry.value = link.name


def _sum_squares(nodes: list[onnx.NodeProto], tensor: str, out: str) -> None:
    """out = sum(tensor ** 2) in float64: the sum over a [T, 4096] output keeps every digit the ratio needs."""
    nodes.append(helper.make_node("Cast", [tensor], [f"{out}/f64"], name=f"{out}/f64", to=onnx.TensorProto.DOUBLE))
    nodes.append(helper.make_node("ReduceSumSquare", [f"{out}/f64"], [out], name=out, keepdims=0))


def error_graph(source_path: Path, variants: dict[str, Path],
                scratch: Path) -> tuple[Path, dict[str, dict[str, tuple[str, str]]]]:
    """Write the combined graph of one fp32 source and the variants quantized from it into scratch; return its
    path and, per variant, MatMul -> (the output holding its error's sum of squares, the one holding fp32's).
    The source's own outputs stay outputs (its encoder output is the pass's reference where it is the base)."""
    source, tag = og.load_graph(source_path), source_path.parent.name  # links and file named by the source's folder
    _link_weights(source, source_path.parent, scratch, f"{tag}.")
    graph = source.graph
    nodes, outputs, found = [], [], {}
    references: dict[str, str] = {}
    for v, (name, variant_path) in enumerate(variants.items()):
        variant = og.load_graph(variant_path)
        pairs = quantized_matmuls(source, variant)
        if not pairs:
            fail(f"{variant_path}: no quantized MatMul found against {source_path}; is it a quantized variant?")
        found[name] = {}
        for i, (matmul, (x, y)) in enumerate(pairs.items()):
            prefix = f"diag{v}.{i}/"
            kernel = og.extract(variant, y, x)  # the quantized MatMul as the variant runs it
            _link_weights(kernel, variant_path.parent, scratch, f"{tag}.variant{v}.")
            rename = {t: prefix + t for node in kernel.graph.node for t in [*node.input, *node.output] if t and t != x}
            for node in kernel.graph.node:
                node.name = prefix + (node.name or node.output[0])
                node.input[:] = [rename.get(t, t) for t in node.input]
                node.output[:] = [rename[t] for t in node.output]
                nodes.append(node)
            for tensor in kernel.graph.initializer:
                tensor.name = rename[tensor.name]
                graph.initializer.append(tensor)
            if y not in references:
                references[y] = f"diag.ref{len(references)}"
                _sum_squares(nodes, y, references[y])
                outputs.append(references[y])
            difference = f"{prefix}difference"
            nodes.append(helper.make_node("Sub", [rename[y], y], [difference], name=difference))
            _sum_squares(nodes, difference, f"{prefix}error")
            outputs.append(f"{prefix}error")
            found[name][matmul] = (f"{prefix}error", references[y])
    graph.node.extend(nodes)
    graph.output.extend(helper.make_tensor_value_info(o, onnx.TensorProto.DOUBLE, []) for o in outputs)
    path = scratch / f"errors-{tag}.onnx"
    onnx.save(source, str(path))
    return path, found


def relative_errors(values: dict[str, np.ndarray], found: dict[str, tuple[str, str]]) -> dict[str, float]:
    """MatMul -> sqrt(error's sum of squares / fp32 output's), as numpy's norm ratio would give."""
    return {m: math.sqrt(float(values[err]) / max(float(values[ref]), 1e-60)) for m, (err, ref) in found.items()}
