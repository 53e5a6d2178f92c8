"""requant/aware.py: activation-aware scaling is exact before quantization and beats round-to-nearest on
activation outliers, measured with onnxruntime's own MatMulNBits kernel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

from requant import aware
from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant.params import AwareParams, NbitsRecipe
from stages.nbits import build_nbits
from tests.encoder_graph import outlier_encoder_with_windows

ALPHAS = [0, 0.25, 0.5, 0.75, 1]
K, N = 128, 96


def kernel_output(weight: np.ndarray, x: np.ndarray, grid: aware.Grid, scale: np.ndarray | None = None) -> np.ndarray:
    """x (/ scale) through one MatMulNBits (accuracy level 0: fp32 compute) holding (scale *) weight."""
    scale = np.ones(weight.shape[0], np.float32) if scale is None else scale
    nodes = [helper.make_node("Mul", ["x", "inv"], ["xs"], name="mul"),
             helper.make_node("MatMul", ["xs", "w"], ["y"], name="matmul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
                              [numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), "w"),
                               numpy_helper.from_array((1 / scale).astype(np.float32), "inv")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    config = DefaultWeightOnlyQuantConfig(block_size=grid.block_size, is_symmetric=grid.symmetric, bits=grid.bits)
    quantizer = MatMulNBitsQuantizer(model, bits=grid.bits, block_size=grid.block_size, is_symmetric=grid.symmetric,
                                     algo_config=config)
    quantizer.process()
    session = ort.InferenceSession(quantizer.model.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def outlier_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights without structure; activations where 4 of 128 channels are 40x louder (as after a LayerNorm
    with outlier gains): a calibration sample and a held-out one."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.1, (K, N)).astype(np.float32)
    gain = np.ones(K, np.float32)
    gain[rng.choice(K, 4, replace=False)] = 40.0
    calib, heldout = (rng.normal(0, 1, (n, K)).astype(np.float32) * gain for n in (256, 256))
    return weight, calib, heldout


@pytest.mark.parametrize("grid", [aware.Grid(4, 32, True), aware.Grid(4, 64, False), aware.Grid(8, 32, True),
                                  aware.Grid(8, 128, False)], ids=str)
def test_dequantized_weights_are_what_the_kernel_computes_with(grid: aware.Grid) -> None:
    weight, _, x = outlier_case(0)
    expected = kernel_output(weight, x, grid)
    got = x @ aware.dequantized(weight, grid)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("grid", [aware.Grid(4, 32, True), aware.Grid(4, 128, False)], ids=str)
def test_the_searched_scale_beats_round_to_nearest_in_the_kernel(grid: aware.Grid) -> None:
    weight, calib, heldout = outlier_case(1)
    alpha, scale, errors = aware.search(calib, [weight], np.abs(calib).mean(axis=0), grid, ALPHAS)
    assert alpha > 0 and errors[alpha] < errors[0]
    reference = heldout.astype(np.float64) @ weight.astype(np.float64)

    def error(y: np.ndarray) -> float:
        return float(np.linalg.norm(y - reference) / np.linalg.norm(reference))

    rtn, scaled = error(kernel_output(weight, heldout, grid)), error(kernel_output(weight, heldout, grid, scale))
    assert scaled < 0.8 * rtn, (rtn, scaled)


def test_alpha_zero_is_round_to_nearest() -> None:
    assert np.array_equal(aware.candidate_scale(np.array([0.1, 3.0, 0.0]), 0.0), np.ones(3, np.float32))


@pytest.fixture(scope="module")
def outlier_encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return outlier_encoder_with_windows(tmp_path_factory.mktemp("aware"))


def test_the_scaled_fp32_encoder_equals_its_source(outlier_encoder: tuple[Path, Path], tmp_path: Path) -> None:
    src, windows = outlier_encoder
    model = og.load_graph(src)
    replace, summary = aware.scale_for_grid(model, src.parent, runs.Windows(windows, "calib"), aware.Grid(4, 32, True),
                                            ALPHAS, rows=64, seed=0)
    assert summary["scaled_inputs"] > 0 and summary["folded_norms"] > 0  # LayerNorm folds and Muls both
    assert summary["scaled_inputs"] > summary["folded_norms"]
    og.write_model(model, src.parent, tmp_path / "scaled.onnx", replace=replace)
    heldout = runs.Windows(windows, "heldout")
    want = runs.encoder_outputs(src, heldout, "source")
    got = runs.encoder_outputs(tmp_path / "scaled.onnx", heldout, "scaled")
    assert all(np.array_equal(a, b) for a, b in zip(want, got))  # power-of-two scales: bit for bit


def test_aware_w4_is_closer_to_fp32_than_round_to_nearest(outlier_encoder: tuple[Path, Path], tmp_path: Path) -> None:
    src, windows = outlier_encoder
    settings = AwareParams(alphas=ALPHAS, rows=128)
    heldout = runs.Windows(windows, "heldout")
    reference = runs.encoder_outputs(src, heldout, "fp32")
    errors = {}
    for name, is_aware in (("rtn", False), ("aware", True)):
        result = build_nbits(src, tmp_path / name, "encoder-model.w4.onnx", NbitsRecipe(4, 32, True, 0, is_aware),
                             windows, settings, seed=0)
        assert (result["aware"] is not None) == is_aware
        quantized = runs.encoder_outputs(tmp_path / name / "encoder-model.w4.onnx", heldout, name)
        errors[name] = runs.compare(reference, quantized)["rel_error_mean"]
    assert errors["aware"] < 0.9 * errors["rtn"], errors
    assert onnx.load(str(tmp_path / "aware" / "encoder-model.w4.onnx")).graph.node  # a real model
