"""Activation-aware scaling for weight-only MatMulNBits (AWQ's idea on the ONNX graph).

Block quantization rounds every weight of a block on one scale, so the input channels that carry large
activations lose as much precision as the quiet ones, though their errors weigh more in the output.
Scaling those weight rows up before quantization (and their activations down by the same factor, an
exact fold: requant/fold.py) spends the grid where it matters. Per group of MatMuls sharing an input:
s = a^alpha (a = the channel's mean |x| over the calibration windows, normalised around 1 and snapped to
a power of two), with alpha picked on a grid to minimise the group's output error with the block-quantized
weights (onnxruntime's own quantizer) on a seeded sample of calibration rows. alpha = 0 is
round-to-nearest, so the search never picks worse than it on that sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer
from tqdm import tqdm

from requant import encoder_runs as runs
from requant import fold, patterns, stable
from requant import onnx_graph as og
from requant.common import fail


@dataclass(frozen=True)
class Grid:
    """How MatMulNBits stores a weight: bits per value, input rows per block, zero point or not."""

    bits: int
    block_size: int
    symmetric: bool


def quantize_blocks(weight: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The [K, N] weight blockwise-quantized by onnxruntime's own quantizer (the code MatMulNBitsQuantizer
    runs): its packed codes, scales and zero points."""
    config = DefaultWeightOnlyQuantConfig(block_size=grid.block_size, is_symmetric=grid.symmetric, bits=grid.bits)
    return DefaultWeightOnlyQuantizer(config).qbits_block_quant(np.ascontiguousarray(weight, np.float32))


def unpack(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, grid: Grid, rows: int) -> np.ndarray:
    """onnxruntime's packed arrays back to the [K, N] float32 weight the MatMulNBits kernel computes with."""
    per_byte = 8 // grid.bits
    shifts = np.arange(per_byte, dtype=np.uint8) * grid.bits
    mask = np.uint8((1 << grid.bits) - 1)
    values = ((packed[..., None] >> shifts) & mask).reshape(packed.shape[0], packed.shape[1], -1)  # [N, blocks, B]
    if grid.symmetric:
        zero = np.full(scales.shape, 1 << (grid.bits - 1), np.float32)
    else:
        zero = ((zero_points[..., None] >> shifts) & mask).reshape(zero_points.shape[0], -1)[:, : scales.shape[1]]
    expanded = (values.astype(np.float32) - zero[..., None].astype(np.float32)) * scales[..., None]
    return expanded.reshape(expanded.shape[0], -1)[:, :rows].T  # [K, N]


def dequantized(weight: np.ndarray, grid: Grid) -> np.ndarray:
    """The [K, N] weight as MatMulNBits will hold it: quantized by onnxruntime's own blockwise quantizer,
    then expanded back to float32."""
    return unpack(*quantize_blocks(weight, grid), grid, len(weight))


def output_error(x: np.ndarray, weights: Sequence[np.ndarray], scale: np.ndarray, grid: Grid,
                 exact: Sequence[np.ndarray]) -> float:
    """Relative squared error of the group's outputs, (x / s) Q(s W) against `exact` = x W (float64),
    summed over its MatMuls; in float64, so that the comparison hardly depends on the CPU."""
    xs = (x / scale).astype(np.float32).astype(np.float64)
    err = ref = 0.0
    for w, y in zip(weights, exact):
        got = xs @ dequantized(w * scale[:, None], grid).astype(np.float64)
        err += float(((got - y) ** 2).sum())
        ref += float((y**2).sum())
    return err / max(ref, 1e-30)


def candidate_scale(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    """a^alpha normalised so that the largest and smallest channel sit symmetrically around 1, snapped to
    a power of two (an exact fold, and the same on any CPU); channels never active keep 1."""
    a = mean_abs.astype(np.float64)
    live = a > 0
    raw = np.ones_like(a)
    if live.any() and alpha > 0:
        raw[live] = a[live] ** alpha
        raw[live] /= np.sqrt(raw[live].max() * raw[live].min())
    return stable.snap_pow2(np.clip(raw, 2.0**-17, 2.0**17)).astype(np.float32)


def search(x: np.ndarray, weights: Sequence[np.ndarray], mean_abs: np.ndarray, grid: Grid,
           alphas: Sequence[float]) -> tuple[float, np.ndarray, dict[float, float]]:
    """The alpha whose scale gives the lowest output error, its scale, and every alpha's error. Errors are
    compared on a 3-bit mantissa grid (ties go to the smaller alpha), so that another CPU's last bits in
    the calibration activations do not flip the choice."""
    exact = [x.astype(np.float64) @ w.astype(np.float64) for w in weights]
    errors = {alpha: output_error(x, weights, candidate_scale(mean_abs, alpha), grid, exact) for alpha in alphas}
    best = min(alphas, key=lambda a: (stable.snap_mantissa(errors[a]), a))
    return best, candidate_scale(mean_abs, best), errors


def sample_inputs(model: onnx.ModelProto, weights_dir: Path, tensors: list[str], windows: runs.Windows,
                  rows: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per tensor: `rows` rows (frames) drawn with `seed` evenly from the windows, and the mean |x| per channel
    over every frame. One window's activations in memory at a time."""
    session = runs.open_session(runs.probe(model, tensors), weights_dir)
    rng = np.random.default_rng(seed)
    per_window = -(-rows // max(len(windows), 1))
    picked: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(tensors, 0)
    for audio in tqdm(windows, desc="aware: activations", unit="win"):
        for name, value in zip(tensors, session.run(tensors, runs.encoder_feed(session, audio))):
            flat = value.reshape(-1, value.shape[-1])
            picked[name].append(flat[rng.choice(len(flat), size=min(per_window, len(flat)), replace=False)])
            sums[name] = sums.get(name, 0) + np.abs(flat).astype(np.float64).sum(axis=0)
            counts[name] += len(flat)
    return ({t: np.concatenate(v)[:rows] for t, v in picked.items()},
            {t: (sums[t] / max(counts[t], 1)) for t in tensors})


def scale_for_grid(model: onnx.ModelProto, weights_dir: Path, windows: runs.Windows, grid: Grid,
                   alphas: Sequence[float], rows: int, seed: int) -> tuple[fold.Replacements, dict]:
    """Search and fold a scale for every group of weighted MatMuls, in place; the new weight bytes (lazily)
    and a summary (chosen alphas, errors against round-to-nearest on the sample, fold counts). `alphas`
    holds 0: round-to-nearest is always a candidate."""
    if 0.0 not in alphas:
        raise ValueError("the alpha grid must hold 0 (round-to-nearest)")
    graph = model.graph
    og.name_nodes(graph)
    groups, _ = patterns.smoothing_plan(graph)
    inits = {t.name: t for t in graph.initializer}
    sample, mean_abs = sample_inputs(model, weights_dir, list(groups), windows, rows, seed)
    replace: fold.Replacements = {}
    chosen, rtn_error, aware_error, folded = {}, 0.0, 0.0, 0
    for tensor, readers in tqdm(groups.items(), desc="aware: search", unit="input"):
        if not np.isfinite(sample[tensor]).all():
            fail(f"the encoder's activation {tensor} holds NaN or infinite values: its weights are corrupt; "
                 "rebuild models/base (dvc repro base_model) from a good download")
        weights = [og.read_tensor(inits[n.input[1]], weights_dir) for n in readers]
        alpha, scale, errors = search(sample[tensor], weights, mean_abs[tensor], grid, alphas)
        chosen[tensor] = alpha
        rtn_error += errors[0.0]
        aware_error += errors[alpha]
        if alpha > 0:
            folded += fold.fold_scale(graph, tensor, readers, scale, weights_dir, replace)
    picks = [chosen[t] for t in groups]
    return replace, {
        "inputs": len(groups), "matmuls": sum(len(r) for r in groups.values()), "rows": rows,
        "scaled_inputs": sum(a > 0 for a in picks), "folded_norms": folded,
        "alpha_counts": [picks.count(a) for a in alphas],  # inputs that chose each alpha of the grid, in order
        "sample_rel_sq_error_rtn": runs.round_sig(rtn_error / len(groups), 4),
        "sample_rel_sq_error_aware": runs.round_sig(aware_error / len(groups), 4),
    }
