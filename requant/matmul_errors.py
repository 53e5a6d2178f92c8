"""Every quantized MatMul's error in one pass: the fp32 source graph, and beside each weighted MatMul the
subgraph each quantized variant replaced it with (Q/DQ, DynamicQuantizeLinear + MatMulInteger, MatMulNBits),
fed the same fp32 input. The only extra outputs are sums of squares (totalled in float64): of the quantized output's
difference to the fp32 MatMul's output, and of that output. One run per source and pass length gives each
MatMul's relative error, sqrt(err / ref), with no activations captured and no probe passes.

The combined graph is a small file written for the time of the passes into the folder above every weight
file it reads, its external tensors pointing down into their own files: no weight byte is copied or linked
(onnx refuses external data with several hard links, onnxruntime data that resolves outside the model's
folder), so its memory is the fp32 pass's plus the quantized weights the kernels read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


def _relocate(model: onnx.ModelProto, model_dir: Path, home: Path) -> None:
    """Point the model's external tensors at their files as seen from `home`, a folder above model_dir."""
    for tensor in (t for t in model.graph.initializer if og.is_external(t)):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = os.path.relpath(model_dir.resolve() / entry.value, home)


def _sum_squares(nodes: list[onnx.NodeProto], tensor: str, out: str, opset: int) -> None:
    """out = sum(tensor ** 2): float32 sums along the last axis (a few thousand terms each), then their sum in
    float64, so that no [T, N] float64 copy is ever made."""
    rows = f"{out}/rows"
    nodes.extend(og.reduce_nodes("ReduceSumSquare", tensor, rows, [-1], opset, keepdims=0))
    nodes.append(helper.make_node("Cast", [rows], [f"{rows}/f64"], name=f"{rows}/f64", to=onnx.TensorProto.DOUBLE))
    nodes.append(helper.make_node("ReduceSum", [f"{rows}/f64"], [out], name=out, keepdims=0))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:  # another user's
        return True
    return pid > 0


SCRATCH_PREFIX = ".matmul-errors-"  # the combined graph's file while it runs; a stale one is removed


@contextmanager
def error_graph(source_path: Path, variants: dict[str, Path]) -> Iterator[tuple[Path, dict[str, Pairs]]]:
    """The combined graph of one fp32 source and the variants quantized from it, for the time of the block:
    its path and, per variant, MatMul -> (the output holding its error's sum of squares, the one holding
    fp32's). The source's own outputs stay outputs (its encoder output is a pass's reference)."""
    home = Path(os.path.commonpath([p.parent.resolve() for p in (source_path, *variants.values())]))
    for stale in home.glob(f"{SCRATCH_PREFIX}*"):  # left by a run killed before it cleaned up
        if not _alive(int(stale.name.removeprefix(SCRATCH_PREFIX).split("-")[0] or 0)):
            stale.unlink(missing_ok=True)
    source = og.load_graph(source_path)
    _relocate(source, source_path.parent, home)
    graph, opset = source.graph, og.opset_of(source)
    outputs, found = [], {}
    groups: dict[str, list[onnx.NodeProto]] = {}  # the fp32 MatMul output -> the nodes measuring its replacements
    references: dict[str, str] = {}
    for v, (name, variant_path) in enumerate(variants.items()):
        variant = og.load_graph(variant_path)
        pairs = quantized_matmuls(source, variant)
        if not pairs:
            fail(f"{variant_path}: no quantized MatMul found against {source_path}; is it a quantized variant?")
        found[name] = {}
        for i, (matmul, (x, y)) in enumerate(pairs.items()):
            prefix, nodes = f"diag{v}.{i}/", groups.setdefault(y, [])
            kernel = og.extract(variant, y, x)  # the quantized MatMul as the variant runs it
            _relocate(kernel, variant_path.parent, home)
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
                _sum_squares(nodes, y, references[y], opset)
                outputs.append(references[y])
            difference = f"{prefix}difference"
            nodes.append(helper.make_node("Sub", [rename[y], y], [difference], name=difference))
            _sum_squares(nodes, difference, f"{prefix}error", opset)
            outputs.append(f"{prefix}error")
            found[name][matmul] = (f"{prefix}error", references[y])
    # onnxruntime orders a graph by a depth-first walk up from its last leaf: with the earliest MatMul's group
    # last, each group runs right after its MatMul and its input and output are freed at once, instead of every
    # layer's being held to the end of the pass (13 GB at 390 s at Parakeet's size)
    made = [y for node in graph.node for y in node.output if y in groups]
    graph.node.extend(node for y in reversed(made) for node in groups[y])
    graph.output.extend(helper.make_tensor_value_info(o, onnx.TensorProto.DOUBLE, []) for o in outputs)
    path = home / f"{SCRATCH_PREFIX}{os.getpid()}-{source_path.parent.name}-{source_path.stem}.onnx"  # one per source
    try:
        onnx.save(source, str(path))
        del source, graph, groups, variant, kernel  # a one-file variant's weights: not held through the passes
        yield path, found
    finally:
        path.unlink(missing_ok=True)


def sum_outputs(found: dict[str, Pairs]) -> list[str]:
    """Every sum-of-squares output the combined graph holds for these variants, once each (fp32's are shared)."""
    return sorted({o for pairs in found.values() for pair in pairs.values() for o in pair})


def relative_errors(values: dict[str, np.ndarray], found: dict[str, tuple[str, str]]) -> dict[str, float]:
    """MatMul -> sqrt(error's sum of squares / fp32 output's), as numpy's norm ratio would give."""
    return {m: math.sqrt(float(values[err]) / max(float(values[ref]), 1e-60)) for m, (err, ref) in found.items()}
