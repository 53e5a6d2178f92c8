"""SmoothQuant on the ONNX graph: move activation outliers into the MatMul weights, exactly in fp32.

For y = X W (W [K,N]): s_j = max|X_j|^a / max_n|W_jn|^(1-a), W' = diag(s) W, X' = X diag(1/s), with s_j
snapped to the nearest power of two (requant/stable.py): the same scales on any CPU, and an exact fold.
One scale per MatMul input (Q, K and V share their LayerNorm's output), folded by requant/fold.py (into
the LayerNorm, else an inserted Mul). The conv module's pointwise convs are MatMuls here (stage pointwise):
the first reads the conv module's LayerNorm, the second the Swish output (a Mul). Activation maxima are
streamed window by window through a session that reads the weights where they lie, but for the linear_pos
input's: those are the sinusoid's over every position (requant/positions.py), which short windows never reach.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant import fold, patterns, positions, stable
from requant.common import fail, run_cli, write_json
from requant.gated import write_gated
from requant.params import load_params

log = logging.getLogger(__name__)

SOURCE = Path("models/pointwise/encoder-model.onnx")  # the base encoder, pointwise convs as MatMuls
WINDOWS = Path("data/windows")
OUT_DIR = Path("models/smoothed")
METRICS = Path("metrics/smoothquant.json")
MAX_REL_ERROR = 1e-5  # smoothing is an identity in exact arithmetic; fp32 rounding stays far below


def plan(graph: onnx.GraphProto) -> tuple[dict[str, list[onnx.NodeProto]], Counter[str]]:
    """Smoothable MatMuls grouped by their activation input, and the skip reasons of the others."""
    groups, kinds = patterns.smoothing_plan(graph)
    return groups, Counter(kind for kind in kinds.values() if kind != "weighted")


def activation_absmax(model: onnx.ModelProto, weights_dir: Path, tensors: list[str],
                      windows: runs.Windows) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of each tensor over all windows, one window in memory at a time."""
    session = runs.open_session(runs.probe(model, tensors), weights_dir)
    absmax: dict[str, np.ndarray] = {}
    for audio in tqdm(windows, desc="activation ranges", unit="win"):
        values = session.run(tensors, runs.encoder_feed(session, audio))
        for name, value in zip(tensors, values):
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            absmax[name] = np.maximum(absmax[name], peak) if name in absmax else peak
    return absmax


def smoothing_scale(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^a / max|W_j|^(1-a), unsnapped (float64); 1 where a channel is never active or has no
    weight."""
    x, w = x_max.astype(np.float64), w_max.astype(np.float64)
    live = (x > 0) & (w > 0)
    scale = np.ones_like(x)
    scale[live] = x[live] ** alpha / w[live] ** (1 - alpha)
    return np.clip(scale, 2.0**-17, 2.0**17)


def smooth(model: onnx.ModelProto, weights_dir: Path, windows: runs.Windows, alpha: float
           ) -> tuple[dict[str, Callable[[], np.ndarray]], dict]:
    """Rewrite `model` in place; return the new weight bytes (lazily) and the counts."""
    if not 0.0 <= alpha <= 1.0:
        fail(f"smooth.alpha={alpha} is outside [0, 1]")
    graph = model.graph
    og.name_nodes(graph)
    groups, skipped = plan(graph)
    n_matmuls = sum(n.op_type == "MatMul" for n in graph.node)
    if not groups:
        fail(f"{n_matmuls} MatMuls, none smoothable (skipped: {dict(skipped) or 'none'}); "
             "expected MatMuls with constant [K,N] weights as in a FastConformer encoder")
    inits = {t.name: t for t in graph.initializer}
    absmax = activation_absmax(model, weights_dir, list(groups), windows)
    broken = [name for name, peak in absmax.items() if not np.isfinite(peak).all()]
    if broken:
        fail(f"the encoder's activations hold NaN or infinite values ({broken[0]}, {len(broken)} tensors in all): "
             "its weights are corrupt; rebuild models/base (dvc repro base_model) from a good download")
    positional, box = positions.linear_pos_input_bound(model, weights_dir)
    if positional in absmax:  # short windows see near positions only; a long pass reaches the whole box
        absmax[positional] = box.astype(np.float32)
    replace: dict[str, Callable[[], np.ndarray]] = {}
    counts = Counter(folded_matmuls=0, folded_norms=0, mul_inserted=0, mul_matmuls=0)
    scale_range, near_edge = [np.inf, 0.0], 0
    for tensor, readers in groups.items():
        weights = [inits[n.input[1]] for n in readers]
        width = int(weights[0].dims[0])
        if absmax[tensor].shape != (width,):
            fail(f"activation {tensor} has {absmax[tensor].shape[0]} channels, its MatMul weights {width}")
        w_max = np.max([np.abs(og.read_tensor(w, weights_dir)).max(axis=1) for w in weights], axis=0)
        raw = smoothing_scale(absmax[tensor], w_max, alpha)
        near_edge += int((stable.pow2_edge_distance(raw) < stable.NEAR_EDGE).sum())
        scale = stable.snap_pow2(raw).astype(np.float32)  # a power of two: the same on any CPU, and exact
        scale_range = [min(scale_range[0], float(scale.min())), max(scale_range[1], float(scale.max()))]
        if fold.fold_scale(graph, tensor, readers, scale, weights_dir, replace):
            counts["folded_norms"] += 1
            counts["folded_matmuls"] += len(readers)
        else:
            counts["mul_inserted"] += 1
            counts["mul_matmuls"] += len(readers)
    summary = {
        "alpha": alpha, "calibration_windows": len(windows), "matmuls": n_matmuls,
        "smoothed": sum(len(r) for r in groups.values()), "smoothed_inputs": len(groups),
        **counts, "skipped": dict(sorted(skipped.items())),
        "scale_min": runs.round_sig(scale_range[0]), "scale_max": runs.round_sig(scale_range[1]),
        "scales": int(sum(absmax[t].size for t in groups)), "scales_near_grid_edge": near_edge,
        "linear_pos_input": positional if positional in absmax else f"calibrated on the windows: {box}",
    }
    return replace, summary


def smooth_encoder(src: Path, dst_dir: Path, windows_dir: Path, alpha: float) -> dict:
    """Write the smoothed encoder into dst_dir (atomically) after checking it equals the original."""
    model = og.load_graph(src)
    calib = runs.Windows(windows_dir, "calib")
    heldout = runs.Windows(windows_dir, "heldout")
    replace, summary = smooth(model, src.parent, calib, alpha)
    log.info("smoothed %d of %d MatMuls: %d folded into %d LayerNorms, %d behind %d inserted Muls; skipped %s",
             summary["smoothed"], summary["matmuls"], summary["folded_matmuls"], summary["folded_norms"],
             summary["mul_matmuls"], summary["mul_inserted"], summary["skipped"])
    return {**summary, **write_gated(model, src, dst_dir, src.name, replace, heldout, MAX_REL_ERROR, "smoothed")}


def main() -> None:
    params = load_params()
    stable.record_machine("smoothquant")
    summary = smooth_encoder(SOURCE, OUT_DIR, WINDOWS, params.smooth.alpha)
    write_json(METRICS, summary)


if __name__ == "__main__":
    run_cli(main)
