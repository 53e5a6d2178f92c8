"""SmoothQuant on a random FastConformer-shaped graph: exact in fp32, folded where it can be, loud on bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant import stable
from requant.common import StageError
from stages.smoothquant import smooth_encoder, smoothing_scale
from tests.encoder_graph import build_encoder, save_encoder, write_windows

LAYERS = 2


@pytest.fixture(scope="module")
def smoothed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict]:
    root = tmp_path_factory.mktemp("sq")
    base = save_encoder(build_encoder(layers=LAYERS, outlier_scale=50), root / "base")
    windows = write_windows(root / "windows")
    summary = smooth_encoder(base, root / "smoothed", windows, alpha=0.5)
    return base, root / "smoothed" / base.name, windows, summary


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = og.load_graph(path)
    return {t.name: og.read_tensor(t, path.parent) for t in model.graph.initializer}


def test_counts_follow_the_graph(smoothed: tuple[Path, Path, Path, dict]) -> None:
    _, _, _, summary = smoothed
    # per layer: FFN1 in (LN) + Q,K,V (one LN, also read by a Shape) + FFN2 in (LN) folded; FFN hidden x2 and attention out behind Muls;
    # plus the subsampling projection behind a Mul. Q·Kᵀ and attn·V, tied and transposed weights skipped.
    assert summary["smoothed"] == 1 + 8 * LAYERS
    assert summary["folded_matmuls"] == 5 * LAYERS and summary["folded_norms"] == 3 * LAYERS
    assert summary["mul_inserted"] == 1 + 3 * LAYERS == summary["mul_matmuls"]
    assert summary["skipped"] == {"two_activations": 2 * LAYERS, "tied_weight": 2, "transposed_weight": 1}
    assert summary["heldout_rel_error_max"] <= 1e-5


def test_smoothing_is_exact_in_fp32(smoothed: tuple[Path, Path, Path, dict]) -> None:
    base, out, windows, _ = smoothed
    heldout = runs.Windows(windows, "heldout")
    before, after = runs.encoder_outputs(base, heldout, "fp32"), runs.encoder_outputs(out, heldout, "smoothed")
    # power-of-two scales: x/s and w*s lose no bit, so the products and the outputs are the original's
    assert runs.compare(before, after)["rel_error_max"] == 0.0
    assert (base.parent / "encoder-model.onnx.data").read_bytes() != (out.parent / "encoder-model.onnx.data").read_bytes()


def test_fold_went_into_layernorms_and_muls_were_counted(smoothed: tuple[Path, Path, Path, dict]) -> None:
    base, out, _, _ = smoothed
    old, new = og.load_graph(base).graph, og.load_graph(out).graph
    assert og.op_counts(new)["Mul"] - og.op_counts(old)["Mul"] == 1 + 3 * LAYERS
    w_old, w_new = _initializers(base), _initializers(out)
    changed = {name.split(".")[1] for name in w_old if name.endswith(".norm.gamma")
               and not np.array_equal(w_old[name], w_new[name])}
    assert changed == {"ffn1", "att", "ffn2"}
    for name in w_old:  # LayerNorms feeding convolutions, convolutions and skipped weights untouched
        if name.startswith(("l0.conv", "l1.conv", "l0.out", "l1.out", "sub.conv", "tied", "transposed")):
            assert np.array_equal(w_old[name], w_new[name]), name
    # Q, K and V share one scale: their weight rows moved by the same factor
    ratio = {r: w_new[f"l0.att.linear_{r}.weight"][:, 0] / w_old[f"l0.att.linear_{r}.weight"][:, 0] for r in "qkv"}
    np.testing.assert_allclose(ratio["q"], ratio["k"], rtol=1e-5)
    np.testing.assert_allclose(ratio["q"], ratio["v"], rtol=1e-5)
    gamma_ratio = w_old["l0.att.norm.gamma"] / w_new["l0.att.norm.gamma"]
    np.testing.assert_allclose(gamma_ratio, ratio["q"], rtol=1e-5)


def test_outlier_channels_get_the_largest_scales(smoothed: tuple[Path, Path, Path, dict]) -> None:
    base, out, _, _ = smoothed
    w_old, w_new = _initializers(base), _initializers(out)
    gamma_ratio = w_old["l0.ffn1.norm.gamma"] / w_new["l0.ffn1.norm.gamma"]
    outliers = np.argsort(np.abs(w_old["l0.ffn1.norm.gamma"]))[-3:]  # the x50 channels
    assert set(np.argsort(gamma_ratio)[-3:]) == set(outliers)


def test_rerun_is_byte_identical(smoothed: tuple[Path, Path, Path, dict], tmp_path: Path) -> None:
    base, out, windows, summary = smoothed
    again = smooth_encoder(base, tmp_path / "again", windows, alpha=0.5)
    assert again == summary
    for name in ("encoder-model.onnx", "encoder-model.onnx.data"):
        assert (tmp_path / "again" / name).read_bytes() == (out.parent / name).read_bytes()


def test_scales_snap_to_powers_of_two_whatever_the_last_bits() -> None:
    """Statistics a few ULPs apart (another CPU's kernels) give the same scales; one right on an edge is counted."""
    rng = np.random.default_rng(0)
    x, w = rng.uniform(0.1, 50, 1000), rng.uniform(0.01, 1, 1000)
    raw = smoothing_scale(x, w, 0.5)
    noisy = smoothing_scale(x * (1 + 1e-6 * rng.standard_normal(1000)), w, 0.5)
    assert not np.array_equal(raw, noisy)
    near = stable.pow2_edge_distance(raw) < stable.NEAR_EDGE
    assert np.array_equal(stable.snap_pow2(raw)[~near], stable.snap_pow2(noisy)[~near])
    assert set(np.log2(stable.snap_pow2(raw))) <= set(range(-17, 18))
    on_edge = np.sqrt(2.0) * np.array([1 - 1e-9, 1 + 1e-9])
    assert list(stable.snap_pow2(on_edge)) == [1.0, 2.0] and (stable.pow2_edge_distance(on_edge) < 1e-8).all()


def test_scale_formula() -> None:
    x, w = np.array([4.0, 9.0, 0.0]), np.array([1.0, 4.0, 2.0])
    np.testing.assert_allclose(smoothing_scale(x, w, 0.5), [2.0, 1.5, 1.0])
    np.testing.assert_allclose(smoothing_scale(x, w, 1.0), [4.0, 9.0, 1.0])
    np.testing.assert_allclose(smoothing_scale(x, w, 0.0), [1.0, 0.25, 1.0])


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval(smoothed: tuple[Path, Path, Path, dict], tmp_path: Path, alpha: float) -> None:
    base, _, windows, _ = smoothed
    with pytest.raises(StageError, match="alpha"):
        smooth_encoder(base, tmp_path / "out", windows, alpha=alpha)
    assert not (tmp_path / "out").exists()


def test_empty_calibration_set(smoothed: tuple[Path, Path, Path, dict], tmp_path: Path) -> None:
    base, _, _, _ = smoothed
    windows = write_windows(tmp_path / "w", calib=0, heldout=2)
    with pytest.raises(StageError, match="no 'calib' windows"):
        smooth_encoder(base, tmp_path / "out", windows, alpha=0.5)
    assert not (tmp_path / "out").exists()


def test_model_without_smoothable_matmul(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Transpose", ["audio_signal"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "audio_signal"], ["outputs"]),
        helper.make_node("Identity", ["length"], ["encoded_lengths"]),
    ]
    graph = helper.make_graph(
        nodes, "no_weights",
        [helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, [1, 128, "T"]),
         helper.make_tensor_value_info("length", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, [1])],
    )
    path = tmp_path / "encoder-model.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    windows = write_windows(tmp_path / "w", calib=1, heldout=1, seconds=1.0)
    with pytest.raises(StageError, match=r"1 MatMuls, none smoothable .*two_activations': 1"):
        smooth_encoder(path, tmp_path / "out", windows, alpha=0.5)


def test_missing_model(tmp_path: Path) -> None:
    windows = write_windows(tmp_path / "w", calib=1, heldout=1, seconds=1.0)
    with pytest.raises(StageError, match="not found"):
        smooth_encoder(tmp_path / "nope.onnx", tmp_path / "out", windows, alpha=0.5)


def test_hard_linked_weights_are_read(smoothed: tuple[Path, Path, Path, dict], tmp_path: Path) -> None:
    """onnx refuses data files with several hard links (a release folder may link them); we read ours."""
    base, out, windows, summary = smoothed
    linked = tmp_path / "base"
    linked.mkdir()
    for f in base.parent.iterdir():
        os.link(f, linked / f.name)
    assert smooth_encoder(linked / base.name, tmp_path / "out", windows, alpha=0.5) == summary
    data = "encoder-model.onnx.data"
    assert (tmp_path / "out" / data).read_bytes() == (out.parent / data).read_bytes()
