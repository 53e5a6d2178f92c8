"""GPTQ for onnxruntime's MatMulNBits, in NumPy (no torch), with the Hessians streamed from the calibration windows.

Round-to-nearest quantizes every weight on its own. GPTQ (Frantar et al., 2022) quantizes a MatMul's [K, N]
weight one input row at a time and pushes each row's rounding error onto the rows not yet quantized, weighted
by the inverse Hessian H = XᵀX of the MatMul's input over the calibration frames, so that the error of the
output X W, not of W, is minimised. The block scales (and zero points) are onnxruntime's own, taken from the
updated rows when a block starts, so the result is exactly what a MatMulNBits node holds: with H = I the
packed bytes are onnxruntime's round-to-nearest ones (tests/test_gptq.py).

Memory stays bounded: the Hessians of as many MatMul inputs as `budget_mb` holds are accumulated in one pass
over the windows (a probe of the encoder cut after them), used, and dropped; each weight's result goes to a
scratch folder. The same Hessian gives every MatMul's relative output error ‖X ΔW‖² / ‖X W‖², which ranks the
MatMuls for a mixed 4/8-bit assignment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer
from tqdm import tqdm

from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant import patterns
from requant.aware import Grid, quantize_blocks, unpack
from requant.common import fail

LAZY_ROWS = 128  # rows quantized before their accumulated error is pushed onto the rest (GPTQ's lazy batch)


@dataclass(frozen=True)
class Packed:
    """A weight as MatMulNBits stores it: onnxruntime's qbits_block_quant layout, plus its measured error."""

    packed: np.ndarray  # [N, blocks, block_size * bits / 8] uint8, low bits first
    scales: np.ndarray  # [N, blocks] float32
    zero_points: np.ndarray  # [N, ceil(blocks * bits / 8)] uint8 (ignored when symmetric)
    rel_error: float  # ‖X (W - Q)‖² / ‖X W‖² on the calibration frames (from H)


def block_grid(rows: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's scale and zero point for one block of rows [block_size, N] (its own kernel decides them)."""
    _, scales, zero_points = quantize_blocks(rows, grid)
    if grid.symmetric:
        zero = np.full(len(scales), 1 << (grid.bits - 1))
    else:
        zero = zero_points[:, 0] & ((1 << grid.bits) - 1)
    return scales[:, 0].astype(np.float32), zero.astype(np.float32)


def quantize_row(row: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """The integer codes of one row as onnxruntime's kernel rounds it: v * (1 / scale) in float32, half away
    from zero, plus the zero point, clamped to the code range."""
    with np.errstate(divide="ignore"):
        reciprocal = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    scaled = row.astype(np.float32) * reciprocal
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))
    return np.clip(rounded + zero, 0, (1 << bits) - 1)


def pack(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
         grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """codes [K, N], scales and zeros [blocks, N] into onnxruntime's packed, scales, zero_points arrays."""
    rows, cols = codes.shape
    blocks = -(-rows // grid.block_size)
    per_byte = 8 // grid.bits
    padded = np.zeros((blocks * grid.block_size, cols), np.uint8)
    padded[:rows] = codes.astype(np.uint8)
    values = padded.T.reshape(cols, blocks, grid.block_size // per_byte, per_byte)
    shifts = (np.arange(per_byte) * grid.bits).astype(np.uint8)
    packed = np.bitwise_or.reduce(values << shifts, axis=-1).astype(np.uint8)
    zero_codes = np.zeros((cols, -(-blocks // per_byte) * per_byte), np.uint8)
    if not grid.symmetric:
        zero_codes[:, :blocks] = zeros.T.astype(np.uint8)
    zero_points = np.bitwise_or.reduce(zero_codes.reshape(cols, -1, per_byte) << shifts, axis=-1).astype(np.uint8)
    return packed, np.ascontiguousarray(scales.T, np.float32), zero_points


def inverse_hessian_factor(hessian: np.ndarray, damp: float) -> np.ndarray:
    """The upper Cholesky factor U of (H + damp * mean(diag H) * I)⁻¹ = UᵀU. A channel never active (diag 0)
    gets 1 on its diagonal: its rows round on their own, pushing no error."""
    h = np.array(hessian, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    inverse = np.linalg.inv(h)
    return np.linalg.cholesky((inverse + inverse.T) / 2).T


def gptq(weight: np.ndarray, hessian: np.ndarray, grid: Grid, damp: float, factor: np.ndarray | None = None,
         reference: float | None = None) -> Packed:
    """Quantize a [K, N] weight to `grid` with GPTQ's error feedback, row by row in input order (MatMulNBits'
    blocks run along K, so each block's scale is taken from its rows as updated when the block starts).
    factor (inverse_hessian_factor) and reference (weighted_norm) may come computed once for every MatMul
    and grid that shares the input."""
    rows, cols = weight.shape
    if grid.block_size > LAZY_ROWS or LAZY_ROWS % grid.block_size:
        raise ValueError(f"block_size {grid.block_size} must divide {LAZY_ROWS}")
    work = weight.astype(np.float64)
    factor = inverse_hessian_factor(hessian, damp) if factor is None else factor
    codes = np.zeros((rows, cols), np.float32)
    blocks = -(-rows // grid.block_size)
    scales, zeros = np.zeros((blocks, cols), np.float32), np.zeros((blocks, cols), np.float32)
    for start in range(0, rows, LAZY_ROWS):
        end = min(start + LAZY_ROWS, rows)
        lazy, errors = work[start:end].copy(), np.zeros((end - start, cols))
        for i in range(end - start):
            row = start + i
            block = row // grid.block_size
            if row % grid.block_size == 0:
                scales[block], zeros[block] = block_grid(lazy[i:i + grid.block_size], grid)
            codes[row] = quantize_row(lazy[i], scales[block], zeros[block], grid.bits)
            dequantized = (codes[row] - zeros[block]) * scales[block]
            errors[i] = (lazy[i] - dequantized) / factor[row, row]
            lazy[i + 1:] -= np.outer(factor[row, row + 1:end], errors[i])
        work[end:] -= factor[start:end, end:].T @ errors
    packed, scale_array, zero_points = pack(codes, scales, zeros, grid)
    return Packed(packed, scale_array, zero_points,
                  output_error(weight, dequantize(codes, scales, zeros, grid), hessian, reference))


def round_to_nearest(weight: np.ndarray, hessian: np.ndarray, grid: Grid, reference: float | None = None) -> Packed:
    """onnxruntime's own round-to-nearest, with its output error measured on the same Hessian."""
    packed, scales, zero_points = quantize_blocks(weight, grid)
    quantized = unpack(packed, scales, zero_points, grid, len(weight))
    return Packed(packed, scales, zero_points, output_error(weight, quantized, hessian, reference))


def dequantize(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, grid: Grid) -> np.ndarray:
    """codes [K, N] with their block scales and zeros [blocks, N] back to float32."""
    block = np.arange(len(codes)) // grid.block_size
    return ((codes - zeros[block]) * scales[block]).astype(np.float32)


def weighted_norm(matrix: np.ndarray, hessian: np.ndarray) -> float:
    """‖X M‖² = tr(Mᵀ H M), in float64."""
    m = matrix.astype(np.float64)
    return float(np.einsum("kn,kn->", m, hessian @ m))


def output_error(weight: np.ndarray, quantized: np.ndarray, hessian: np.ndarray,
                 reference: float | None = None) -> float:
    """‖X (W - Q)‖² / ‖X W‖² = tr(ΔWᵀ H ΔW) / tr(Wᵀ H W); reference: tr(Wᵀ H W) when known."""
    reference = weighted_norm(weight, hessian) if reference is None else reference
    delta = weight.astype(np.float64) - quantized.astype(np.float64)
    return weighted_norm(delta, hessian) / max(reference, 1e-30)


def hessian_batches(tensors: Sequence[str], widths: dict[str, int], budget_mb: float) -> list[list[str]]:
    """The inputs in graph order, cut into consecutive batches whose float64 Hessians fit the budget (a
    Hessian larger than the budget gets a batch of its own)."""
    batches: list[list[str]] = [[]]
    used = 0.0
    for tensor in tensors:
        size = widths[tensor] ** 2 * 8 / 1e6
        if batches[-1] and used + size > budget_mb:
            batches.append([])
            used = 0.0
        batches[-1].append(tensor)
        used += size
    return [b for b in batches if b]


def stream_hessians(model: onnx.ModelProto, weights_dir: Path, batch: Sequence[str],
                    windows: runs.Windows) -> dict[str, np.ndarray]:
    """H = XᵀX / frames for each tensor of the batch over every window, from an encoder cut after them."""
    probed = runs.probe(model, list(batch))
    og.drop_dead_nodes(probed.graph)
    session = runs.open_session(probed, weights_dir)
    sums: dict[str, np.ndarray] = {}
    frames: dict[str, int] = dict.fromkeys(batch, 0)
    for audio in tqdm(windows, desc=f"gptq: Hessians of {len(batch)} inputs", unit="win"):
        values = session.run(list(batch), runs.encoder_feed(session, audio))
        for name, value in zip(batch, values):
            flat = value.reshape(-1, value.shape[-1]).astype(np.float64)
            if not np.isfinite(flat).all():
                fail(f"the encoder's activation {name} holds NaN or infinite values: its weights are corrupt; "
                     "rebuild models/base (dvc repro base_model) from a good download")
            if name in sums:
                sums[name] += flat.T @ flat
            else:
                sums[name] = flat.T @ flat
            frames[name] += len(flat)  # the positional input has 2T - 1 rows, the others T
    return {name: total / max(frames[name], 1) for name, total in sums.items()}


def quantize_all(model: onnx.ModelProto, weights_dir: Path, readers: dict[str, list[onnx.NodeProto]],
                 windows: runs.Windows, grids: Sequence[Grid], use_gptq: bool, damp: float,
                 budget_mb: float) -> Iterator[tuple[str, Grid, Packed, float | None]]:
    """For each weighted MatMul (readers: input tensor -> its MatMuls) and each grid: its packed weight, by
    GPTQ or round-to-nearest, and round-to-nearest's output error on the same calibration frames (None for
    a GPTQ recipe's later grids, where nothing reads it). One batch of Hessians in memory at a time."""
    inits = {t.name: t for t in model.graph.initializer}
    widths = {t: int(inits[readers[t][0].input[1]].dims[0]) for t in readers}
    for batch in hessian_batches(list(readers), widths, budget_mb):
        hessians = stream_hessians(model, weights_dir, batch, windows)
        for tensor in batch:
            hessian = hessians.pop(tensor)
            factor = inverse_hessian_factor(hessian, damp) if use_gptq else None  # once for its MatMuls and grids
            for node in readers[tensor]:
                weight = og.read_tensor(inits[node.input[1]], weights_dir)
                reference = weighted_norm(weight, hessian)
                for grid in grids:
                    # round-to-nearest: the result, or (first grid) the baseline its summary compares with
                    needed = not use_gptq or grid is grids[0]
                    rtn = round_to_nearest(weight, hessian, grid, reference) if needed else None
                    best = gptq(weight, hessian, grid, damp, factor, reference) if use_gptq else rtn
                    yield node.name, grid, best, None if rtn is None else rtn.rel_error
        del hessians


def prepare(source: Path, scratch: Path, keep_fp32: Sequence[str], grid: Grid, accuracy_level: int, use_gptq: bool,
            keep_8bit: int, windows: runs.Windows, damp: float, budget_mb: float) -> tuple[PlannedQuantizer, dict]:
    """Pack every weighted MatMul of `source` (but keep_fp32) into scratch: GPTQ or round-to-nearest on `grid`,
    the `keep_8bit` with the largest 4-bit output error in 8 bits; the node writer that uses them, and a summary."""
    model = og.load_graph(source)
    groups, _ = patterns.smoothing_plan(model.graph)
    readers = {t: [n for n in nodes if n.name not in keep_fp32] for t, nodes in groups.items()}
    readers = {t: nodes for t, nodes in readers.items() if nodes}
    if any(not n.name for nodes in readers.values() for n in nodes):
        fail(f"{source}: a weighted MatMul without a name cannot be packed by name")
    grids = [grid, Grid(8, grid.block_size, grid.symmetric)] if keep_8bit else [grid]
    scratch.mkdir(parents=True, exist_ok=True)
    errors: dict[int, dict[str, float]] = {g.bits: {} for g in grids}
    baseline: list[float] = []  # round-to-nearest's errors on `grid`
    packed = quantize_all(model, source.parent, readers, windows, grids, use_gptq, damp, budget_mb)
    for name, used, result, rtn_error in packed:
        save(scratch, name, used.bits, result)
        errors[used.bits][name] = result.rel_error
        if used == grid:
            baseline.append(rtn_error)
    eight = mixed_bits(errors[grid.bits], keep_8bit)
    configs = {name: DefaultWeightOnlyQuantConfig(block_size=grid.block_size, is_symmetric=grid.symmetric,
                                                  accuracy_level=accuracy_level or None,
                                                  bits=8 if name in eight else grid.bits)
               for name in errors[grid.bits]}
    chosen = [errors[8 if n in eight else grid.bits][n] for n in errors[grid.bits]]
    return PlannedQuantizer(configs, scratch), {
        "matmuls": len(configs), "gptq": use_gptq, "kept_8bit": sorted(eight),
        "rel_error_mean": runs.round_sig(float(np.mean(chosen)), 3),
        "rel_error_mean_rtn": runs.round_sig(float(np.mean(baseline)), 3),
        "rel_error_max": runs.round_sig(max(chosen), 3),
    }


def mixed_bits(errors: dict[str, float], keep_8bit: int) -> set[str]:
    """The `keep_8bit` MatMuls with the largest 4-bit output error (ties by name, so the pick is stable)."""
    ranked = sorted(errors, key=lambda name: (-errors[name], name))
    return set(ranked[:keep_8bit])


class PlannedQuantizer(DefaultWeightOnlyQuantizer):
    """onnxruntime's MatMulNBits node writer, fed with weights packed beforehand: per MatMul node, its grid
    (bits may differ from node to node) and the arrays saved by `save`."""

    def __init__(self, configs: dict[str, DefaultWeightOnlyQuantConfig], scratch: Path) -> None:
        super().__init__(next(iter(configs.values())))
        self.configs, self.scratch = configs, scratch
        self.node = ""

    def quantize_matmul(self, node: onnx.NodeProto, graph_stack: list[onnx.GraphProto]) -> list[onnx.NodeProto]:
        if node.name not in self.configs:
            return [node]
        self.config, self.node = self.configs[node.name], node.name
        return super().quantize_matmul(node, graph_stack)

    def qbits_block_quant(self, fp32weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with np.load(saved_path(self.scratch, self.node, self.config.bits)) as saved:
            if saved["scales"].shape[1] != math.ceil(fp32weight.shape[0] / self.config.block_size):
                raise ValueError(f"{self.node}: the saved weight does not match the graph's")
            return saved["packed"], saved["scales"], saved["zero_points"]


def saved_path(scratch: Path, node: str, bits: int) -> Path:
    return scratch / f"{node.strip('/').replace('/', '.')}.w{bits}.npz"


def save(scratch: Path, node: str, bits: int, result: Packed) -> None:
    np.savez(saved_path(scratch, node, bits), packed=result.packed, scales=result.scales,
             zero_points=result.zero_points)
