"""Activation outliers: measure them, and add them to a small model by an exact rescaling.

Large transformers carry a few activation channels far larger than the rest; they ruin per-tensor
int8 scales, which is why SmoothQuant exists. A small, briefly trained model may have none. For a
LayerNorm y = gamma * n + beta feeding only MatMuls x W, scaling channel j of gamma and beta by c and
dividing row j of every such W by c leaves the function unchanged (up to float rounding) while
channel j of the activation becomes c times larger: the outlier pattern, with the fp32 model intact.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def matmul_layernorms(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """LayerNormalization nodes whose output feeds only MatMuls with a constant weight -> those MatMuls.
    Shape readers (the exporter's `query.size(0)`) read no values and are ignored."""
    inits = {t.name for t in model.graph.initializer}
    users = _consumers(model.graph)
    found = {}
    for node in model.graph.node:
        if node.op_type != "LayerNormalization":
            continue
        out = [n for n in users.get(node.output[0], []) if n.op_type != "Shape"]
        if out and all(n.op_type == "MatMul" and n.input[0] == node.output[0] and n.input[1] in inits for n in out):
            found[node.name] = out
    return found


def matmul_inputs(model: onnx.ModelProto) -> list[str]:
    """Activation inputs of every MatMul with a constant weight (deduplicated, graph order)."""
    inits = {t.name for t in model.graph.initializer}
    seen: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and node.input[0] not in inits:
            seen[node.input[0]] = None
    return list(seen)


def channel_absmax(
    model: onnx.ModelProto, inputs: Iterable[tuple[np.ndarray, np.ndarray]], tensors: list[str]
) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of the named tensors over encoder inputs (audio_signal, length)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    result: dict[str, np.ndarray] = {}
    for feats, length in inputs:
        values = session.run(tensors, {"audio_signal": feats, "length": length})
        for name, value in zip(tensors, values, strict=True):
            m = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            result[name] = np.maximum(result[name], m) if name in result else m
    return result


def outlier_ratio(absmax: np.ndarray) -> float:
    """Largest channel's absmax over the median channel's."""
    return float(absmax.max() / np.median(absmax))


def add_outlier_channels(
    model: onnx.ModelProto,
    absmax: dict[str, np.ndarray],
    ratio: float = 60.0,
    n_channels: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Rescale `n_channels` channels (the same ones in every eligible LayerNorm, as outliers in large
    models sit in a few fixed dimensions) so that each becomes `ratio` x the median channel's absmax.
    Edits `model` in place; returns {layernorm: {"factor_max": c, "ratio_before": r0, "ratio_after": r1}}.
    `absmax` is channel_absmax() of the LayerNorm outputs on representative inputs.
    """
    inits = {t.name: t for t in model.graph.initializer}
    lns = matmul_layernorms(model)
    by_name = {n.name: n for n in model.graph.node}
    width = len(numpy_helper.to_array(inits[by_name[next(iter(lns))].input[1]]))
    channels = np.random.default_rng(seed).choice(width, size=n_channels, replace=False)
    report = {}

    def update(name: str, array: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    for ln_name, matmuls in lns.items():
        ln = by_name[ln_name]
        amax = absmax[ln.output[0]]
        factors = np.ones(width, np.float32)
        factors[channels] = np.maximum(1.0, ratio * np.median(amax) / np.maximum(amax[channels], 1e-12))
        # powers of two would make the rescaling bit-exact, but real outliers are not that tidy;
        # the float rounding it leaves is ~1e-7 relative
        for idx in (1, 2):
            update(ln.input[idx], numpy_helper.to_array(inits[ln.input[idx]]) * factors)
        for mm in matmuls:
            update(mm.input[1], numpy_helper.to_array(inits[mm.input[1]]) / factors[:, None])
        after = amax * factors
        report[ln_name] = {"factor_max": float(factors.max()), "ratio_before": outlier_ratio(amax),
                           "ratio_after": outlier_ratio(after)}
    return report
