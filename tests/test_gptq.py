"""requant/gptq.py: GPTQ packs exactly what onnxruntime's MatMulNBits kernel computes with, beats round-to-nearest
in that kernel on correlated inputs, streams its Hessians in bounded batches, and keeps the worst MatMuls in
8 bits for a mixed recipe."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer,
                                                             MatMulNBitsQuantizer)

from requant import encoder_runs as runs
from requant import gptq
from requant.aware import Grid, unpack
from requant.params import AwareParams, GptqParams, NbitsRecipe
from stages.nbits import build_nbits
from tests.encoder_graph import outlier_encoder_with_windows

K, N = 256, 96
GRIDS = [Grid(4, 32, True), Grid(4, 64, False), Grid(8, 32, True), Grid(8, 128, False)]


def correlated_inputs(seed: int, rows: int) -> np.ndarray:
    """Activations with correlated channels and a few loud ones, as after a LayerNorm: where GPTQ's feedback pays."""
    rng = np.random.default_rng(seed)
    mixing = (np.eye(K) + 0.3 * np.random.default_rng(7).standard_normal((K, K))).astype(np.float32)
    x = rng.standard_normal((rows, K)).astype(np.float32) @ mixing
    x[:, :4] *= 20
    return x


def kernel_output(weight: np.ndarray, x: np.ndarray, grid: Grid, packed: gptq.Packed | None, tmp: Path) -> np.ndarray:
    """x through one MatMulNBits node (accuracy level 0: fp32 compute) written by onnxruntime's quantizer, holding
    either its own round-to-nearest weight (packed None) or the given packed arrays."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    config = DefaultWeightOnlyQuantConfig(block_size=grid.block_size, is_symmetric=grid.symmetric, bits=grid.bits)
    quantizer = MatMulNBitsQuantizer(model, bits=grid.bits, block_size=grid.block_size, is_symmetric=grid.symmetric,
                                     algo_config=config)
    if packed is not None:
        gptq.save(tmp, "matmul", grid.bits, packed)
        quantizer.node_quantizer = gptq.PlannedQuantizer({"matmul": config}, tmp)
    quantizer.process()
    assert [n.op_type for n in quantizer.model.model.graph.node] == ["MatMulNBits"]
    session = ort.InferenceSession(quantizer.model.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_with_an_identity_hessian_gptq_is_onnxruntimes_round_to_nearest(grid: Grid) -> None:
    weight = np.random.default_rng(1).standard_normal((K, N)).astype(np.float32)
    got = gptq.gptq(weight, np.eye(K), grid, damp=0.0)
    config = DefaultWeightOnlyQuantConfig(block_size=grid.block_size, is_symmetric=grid.symmetric, bits=grid.bits)
    want = DefaultWeightOnlyQuantizer(config).qbits_block_quant(weight)
    for mine, theirs in zip((got.packed, got.scales, got.zero_points), want):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_the_packed_weights_are_what_the_kernel_computes_with(grid: Grid, tmp_path: Path) -> None:
    weight = np.random.default_rng(2).standard_normal((K, N)).astype(np.float32)
    x = correlated_inputs(3, 64)
    packed = gptq.gptq(weight, (x.T.astype(np.float64) @ x) / len(x), grid, damp=0.01)
    dequantized = unpack(packed.packed, packed.scales, packed.zero_points, grid, K)
    want = x.astype(np.float64) @ dequantized.astype(np.float64)
    got = kernel_output(weight, x, grid, packed, tmp_path)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("grid", [Grid(4, 32, True), Grid(4, 128, False)], ids=str)
def test_gptq_beats_round_to_nearest_in_the_kernel(grid: Grid, tmp_path: Path) -> None:
    weight = np.random.default_rng(4).normal(0, 0.1, (K, N)).astype(np.float32)
    calib, heldout = correlated_inputs(5, 2048), correlated_inputs(6, 512)
    hessian = (calib.T.astype(np.float64) @ calib) / len(calib)
    exact = heldout.astype(np.float64) @ weight.astype(np.float64)

    def error(y: np.ndarray) -> float:
        return float(((y - exact) ** 2).sum() / (exact**2).sum())

    rtn = error(kernel_output(weight, heldout, grid, None, tmp_path))
    ours = error(kernel_output(weight, heldout, grid, gptq.gptq(weight, hessian, grid, damp=0.01), tmp_path))
    assert ours < 0.5 * rtn, (ours, rtn)
    assert gptq.gptq(weight, hessian, grid, 0.01).rel_error < gptq.round_to_nearest(weight, hessian, grid).rel_error


def test_hessian_batches_fit_the_budget() -> None:
    widths = {"a": 1024, "b": 4096, "c": 1024, "d": 1024}  # float64: 8.4 MB, 134 MB, 8.4 MB, 8.4 MB
    assert gptq.hessian_batches(list(widths), widths, 20) == [["a"], ["b"], ["c", "d"]]
    assert gptq.hessian_batches(list(widths), widths, 1000) == [["a", "b", "c", "d"]]


def test_mixed_keeps_the_largest_errors_in_8_bits() -> None:
    errors = {"q": 0.01, "k": 0.03, "v": 0.03, "out": 0.002}
    assert gptq.mixed_bits(errors, 2) == {"k", "v"}
    assert gptq.mixed_bits(errors, 0) == set()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return outlier_encoder_with_windows(tmp_path_factory.mktemp("gptq"))


def test_gptq_and_mixed_encoders_come_closer_to_fp32(encoder: tuple[Path, Path], tmp_path: Path) -> None:
    src, windows = encoder
    heldout = runs.Windows(windows, "heldout")
    reference = runs.encoder_outputs(src, heldout, "fp32")
    settings, aware_settings = GptqParams(damp=0.01, hessian_mb=1024), AwareParams(alphas=[0, 0.5, 1], rows=128)
    recipes = {"rtn": NbitsRecipe(4, 32, True, 0), "gptq": NbitsRecipe(4, 32, True, 0, gptq=True),
               "mixed": NbitsRecipe(4, 32, True, 0, gptq=True, keep_8bit=2),
               "aware_gptq": NbitsRecipe(4, 32, True, 0, aware=True, gptq=True)}
    errors, results = {}, {}
    for name, recipe in recipes.items():
        results[name] = build_nbits(src, tmp_path / name, "encoder.onnx", recipe, windows, aware_settings, 0, settings)
        got = runs.encoder_outputs(tmp_path / name / "encoder.onnx", heldout, name)
        errors[name] = runs.compare(reference, got)["rel_error_mean"]
    assert errors["gptq"] < 0.8 * errors["rtn"], errors
    assert errors["mixed"] < errors["gptq"] and errors["aware_gptq"] < errors["rtn"], errors
    mixed = onnx.load(str(tmp_path / "mixed" / "encoder.onnx"))
    bits = {n.name: helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits"))
            for n in mixed.graph.node if n.op_type == "MatMulNBits"}
    assert sorted(bits.values()).count(8) == 2 and len(bits) == results["rtn"]["ops"]["MatMulNBits"]
    assert {f"{name}_Q8" for name in results["mixed"]["gptq"]["kept_8bit"]} == {n for n, b in bits.items() if b == 8}
    summary = results["gptq"]["gptq"]
    assert summary["rel_error_mean"] < summary["rel_error_mean_rtn"]


def test_one_hessian_at_a_time_gives_the_same_bytes(encoder: tuple[Path, Path], tmp_path: Path) -> None:
    src, windows = encoder
    recipe = NbitsRecipe(4, 32, True, 0, gptq=True, keep_8bit=1)
    for name, budget in (("one_pass", 1024.0), ("one_at_a_time", 1e-3)):
        build_nbits(src, tmp_path / name, "encoder.onnx", recipe, windows, None, 0, GptqParams(0.01, budget))
    assert filecmp.cmp(tmp_path / "one_pass" / "encoder.onnx", tmp_path / "one_at_a_time" / "encoder.onnx", shallow=False)
