"""Static SmoothQuant int8 and the dynamic (stock recipe) int8, on a random FastConformer-shaped graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization.calibrate import load_tensors_data

from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant import stable
from requant.common import StageError
from requant.static_int8 import NAME, build_int8, calibrate
from requant.patterns import fp32_matmuls
from stages.int8_dynamic import build_dynamic_int8
from stages.smoothquant import smooth_encoder
from tests.encoder_graph import build_encoder, hard_linked_copy, save_encoder, write_windows


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int8")
    base = save_encoder(build_encoder(outlier_scale=50), root / "base")
    windows = write_windows(root / "windows")
    smooth_encoder(base, root / "smoothed", windows, alpha=0.5)
    return {"root": root, "base": base, "smoothed": root / "smoothed" / base.name, "windows": windows}


@pytest.fixture(scope="module")
def int8(setup: dict[str, Path]) -> tuple[Path, dict[str, float]]:
    fidelity = build_int8(setup["smoothed"], setup["root"] / "int8", setup["windows"], 99.999, 0, min_cosine=0.9)
    return setup["root"] / "int8" / NAME, fidelity


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return og.producers(graph)


def test_int8_graph_is_per_channel_matmul_only(int8: tuple[Path, dict[str, float]], setup: dict[str, Path]) -> None:
    path, fidelity = int8
    assert fidelity["cosine_min"] >= 0.9
    assert sorted(p.name for p in path.parent.iterdir()) == [NAME]  # one self-contained file, like upstream's
    model = onnx.load(str(path))
    assert not any(og.is_external(t) for t in model.graph.initializer)
    graph, inits = model.graph, {t.name: t for t in model.graph.initializer}
    makers = _producers(graph)
    kinds = og.classify_matmuls(og.load_graph(setup["smoothed"]).graph)
    counts = og.op_counts(graph)
    quantize_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    matmul_inputs = {n.input[0] for n in og.load_graph(setup["smoothed"]).graph.node if n.op_type == "MatMul"}
    assert "MatMulInteger" not in counts and "ConvInteger" not in counts
    assert {"tied_weight", "transposed_weight", "two_activations"} <= set(kinds.values())
    for node in graph.node:
        if node.op_type == "MatMul":
            weight_dq = makers.get(node.input[1])
            if kinds[node.name] != "weighted":  # two activations, tied or transposed weight: left fp32
                assert weight_dq is None or weight_dq.op_type != "DequantizeLinear", node.name
                assert makers[node.input[0]].op_type != "DequantizeLinear", node.name
                continue
            assert weight_dq.op_type == "DequantizeLinear", node.name
            weight, scale = inits[weight_dq.input[0]], inits[weight_dq.input[1]]
            assert weight.data_type == onnx.TensorProto.INT8 and len(weight.dims) == 2
            assert list(scale.dims) == [weight.dims[1]]  # one scale per output channel
            assert makers[node.input[0]].op_type == "DequantizeLinear"  # activation quantized too
            if node.output[0] not in matmul_inputs:
                assert node.output[0] not in quantize_inputs, node.name  # its output stays fp32
        if node.op_type == "Conv":
            assert inits[node.input[1]].data_type == onnx.TensorProto.FLOAT, node.name
            assert all(makers.get(i) is None or makers[i].op_type != "DequantizeLinear" for i in node.input)


def test_every_quantized_matmul_runs_as_an_integer_kernel(int8: tuple[Path, dict[str, float]],
                                                          tmp_path: Path) -> None:
    """onnxruntime fuses each quantized MatMul into one integer kernel (DequantizeLinear -> MatMul into
    MatMulIntegerToFloat), including the MatMuls that share one quantized input (q, k, v). With int8
    activations it did not fuse those: they ran in fp32 on weights dequantized at every call."""
    path, _ = int8
    graph = onnx.load(str(path)).graph
    makers = _producers(graph)
    quantized = sum(n.op_type == "MatMul" and n.input[1] in makers and makers[n.input[1]].op_type
                    == "DequantizeLinear" for n in graph.node)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    makers = _producers(optimized)
    assert quantized >= 10
    counts = og.op_counts(optimized)  # QLinearMatMul where the output feeds another quantized MatMul
    assert counts.get("MatMulIntegerToFloat", 0) + counts.get("QLinearMatMul", 0) == quantized
    assert not [n.name for n in optimized.node if n.op_type == "MatMul"
                and any(i in makers and makers[i].op_type == "DequantizeLinear" for i in n.input)]


def test_int8_rerun_is_byte_identical(int8: tuple[Path, dict[str, float]], setup: dict[str, Path],
                                      tmp_path: Path) -> None:
    path, fidelity = int8
    again = build_int8(setup["smoothed"], tmp_path / "again", setup["windows"], 99.999, 0, min_cosine=0.9)
    assert again == fidelity
    assert (tmp_path / "again" / NAME).read_bytes() == path.read_bytes()


def test_hard_linked_sources_quantize_to_the_same_bytes(int8: tuple[Path, dict[str, float]],
                                                        setup: dict[str, Path], tmp_path: Path) -> None:
    """onnx refuses external data with several hard links, and onnxruntime's quantizers load through onnx:
    both recipes read a private copy, and the outputs are the bytes a plain source gives."""
    path, fidelity = int8
    smoothed, base = hard_linked_copy(setup["smoothed"], tmp_path / "smoothed"), hard_linked_copy(setup["base"], tmp_path / "b")
    assert (smoothed.parent / f"{smoothed.name}.data").stat().st_nlink == 2
    assert build_int8(smoothed, tmp_path / "int8", setup["windows"], 99.999, 0, min_cosine=0.9) == fidelity
    assert (tmp_path / "int8" / NAME).read_bytes() == path.read_bytes()
    build_dynamic_int8(base, tmp_path / "dyn_linked", external=True)
    build_dynamic_int8(setup["base"], tmp_path / "dyn", external=True)
    assert (tmp_path / "dyn_linked" / NAME).read_bytes() == (tmp_path / "dyn" / NAME).read_bytes()
    assert sorted(p.name for p in (tmp_path / "dyn_linked").iterdir()) == [NAME]  # the private copy is gone


def test_calibration_covers_the_quantized_matmuls_only(setup: dict[str, Path], tmp_path: Path) -> None:
    """Ranges for every tensor a quantized MatMul reads, none for the fp32 attention products, and no
    augmented model copy left behind."""
    graph = og.load_graph(setup["smoothed"]).graph
    excluded = fp32_matmuls(graph)
    cache, snapping = calibrate(setup["smoothed"], tmp_path, runs.Windows(setup["windows"], "calib"), 99.999,
                                excluded, False)
    ranges = load_tensors_data(cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]  # no augmented model left behind
    assert snapping == {"ranges": len(ranges.data), "ranges_near_grid_edge": 0,
                        "linear_pos_range": {"refused": "no positional table"}}
    for name, data in ranges.data.items():  # every range end on the grid: 3-bit mantissas
        for end in (*np.ravel(data.range_value[0]), *np.ravel(data.range_value[1])):
            assert stable.snap_mantissa(float(end)) == float(end), (name, end)
    inits = {t.name for t in graph.initializer}
    quantized = [n for n in graph.node if n.op_type == "MatMul" and n.name not in excluded]
    assert quantized and all(n.input[0] in ranges for n in quantized)
    read = {name for n in quantized for name in n.input}
    assert not ({n.output[0] for n in quantized} - read) & set(ranges.keys())  # outputs stay fp32
    attention = {name for n in graph.node if n.name in excluded for name in (*n.input, *n.output)}
    assert attention and not attention & set(ranges.keys())
    assert not inits & set(ranges.keys())
    assert all(float(ranges[name].range_value[1]) > 0 for name in ranges.keys())


def test_external_data_path_gives_a_single_file(int8: tuple[Path, dict[str, float]], setup: dict[str, Path],
                                                tmp_path: Path) -> None:
    """The route taken for Parakeet-size models (weights in external data while onnxruntime works)."""
    _, fidelity = int8
    got = build_int8(setup["smoothed"], tmp_path / "ext", setup["windows"], 99.999, 0, min_cosine=0.9, external=True)
    assert sorted(p.name for p in (tmp_path / "ext").iterdir()) == [NAME]
    assert got == fidelity
    assert (tmp_path / "ext" / NAME).read_bytes() == int8[0].read_bytes()


def test_large_models_keep_weights_in_external_data(int8: tuple[Path, dict[str, float]], setup: dict[str, Path],
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above og.SELF_CONTAINED_BELOW (Parakeet size) the encoder comes with a .data file; same function."""
    monkeypatch.setattr(og, "SELF_CONTAINED_BELOW", 1024)
    got = build_int8(setup["smoothed"], tmp_path / "big", setup["windows"], 99.999, 0, min_cosine=0.9)
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == [NAME, f"{NAME}.data"]
    assert got == int8[1]
    graph = og.load_graph(tmp_path / "big" / NAME).graph
    assert sum(og.is_external(t) for t in graph.initializer) >= 10


def test_fidelity_gate_fails_and_leaves_nothing(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "int8"
    out.mkdir()
    (out / NAME).write_bytes(b"an older model")
    with pytest.raises(StageError, match="below fidelity.min_cosine"):
        build_int8(setup["smoothed"], out, setup["windows"], 99.999, 0, min_cosine=0.999999)
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_calibration_subset_and_bad_percentile(setup: dict[str, Path], tmp_path: Path) -> None:
    fidelity = build_int8(setup["smoothed"], tmp_path / "two", setup["windows"], 99.9, 2, min_cosine=0.5)
    assert 0.5 <= fidelity["cosine_min"] <= 1
    with pytest.raises(StageError, match="percentile"):
        build_int8(setup["smoothed"], tmp_path / "bad", setup["windows"], 0, 0, min_cosine=0.5)
    with pytest.raises(StageError, match="calib_windows"):
        build_int8(setup["smoothed"], tmp_path / "bad", setup["windows"], 99.9, -1, min_cosine=0.5)
    empty = write_windows(tmp_path / "w", calib=0, heldout=1)
    with pytest.raises(StageError, match="no 'calib' windows"):
        build_int8(setup["smoothed"], tmp_path / "bad", empty, 99.9, 0, min_cosine=0.5)
    assert not (tmp_path / "bad").exists()


def test_dynamic_int8_is_the_stock_recipe(setup: dict[str, Path], tmp_path: Path) -> None:
    counts = build_dynamic_int8(setup["base"], tmp_path / "dyn")
    base_counts = og.op_counts(og.load_graph(setup["base"]).graph)
    # every MatMul with a constant weight and every Conv become integer ops; Q·Kᵀ, attn·V stay float
    assert counts["ConvInteger"] == base_counts["Conv"] and "Conv" not in counts
    assert counts["MatMulInteger"] == base_counts["MatMul"] - counts["MatMul"]
    assert counts["MatMul"] == len(og.activation_matmuls(og.load_graph(setup["base"]).graph))
    model = onnx.load(str(tmp_path / "dyn" / NAME))
    makers, inits = og.producers(model.graph), {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":
            assert makers[node.input[0]].op_type == "DynamicQuantizeLinear"  # activations at run time
            scale = inits[node.input[1].replace("_quantized", "_scale")]
            assert scale.dims in ([], [1])  # per tensor
    again = build_dynamic_int8(setup["base"], tmp_path / "dyn2", external=True)
    assert again == counts
    assert (tmp_path / "dyn2" / NAME).read_bytes() == (tmp_path / "dyn" / NAME).read_bytes()
    session = runs.open_session(tmp_path / "dyn" / NAME)
    out = session.run(None, runs.encoder_feed(session, runs.Windows(setup["windows"], "heldout")[0]))
    assert np.isfinite(out[0]).all()


def test_linear_pos_input_keeps_the_range_of_every_position(tmp_path: Path) -> None:
    """Short windows see near positions only, where the sinusoid's low-frequency channels stay small: the
    calibrated range clipped linear_pos past 390 s. The quantized input must cover every row of any length."""
    from requant import patterns, positions
    from tests.random_model import build_random_model

    base = build_random_model(tmp_path / "model", seed=0) / "encoder-model.onnx"
    windows = write_windows(tmp_path / "windows", seconds=2.0)  # 25 frames: positions within +-24
    source, box = positions.linear_pos_input_bound(og.load_graph(base), base.parent)
    assert source is not None and (box == 1).all()  # sin and cos: every channel reaches 1 at some position
    smoothing = smooth_encoder(base, tmp_path / "smoothed", windows, alpha=0.5)
    assert smoothing["linear_pos_input"] == source  # its scales follow the whole box, not the windows' maxima
    smoothed = tmp_path / "smoothed" / base.name
    result = build_int8(smoothed, tmp_path / "int8", windows, 99.999, 0, min_cosine=0.5)
    tensor, channels = positions.linear_pos_input_bound(og.load_graph(smoothed), smoothed.parent)
    bound = float(channels.max())
    report = result["linear_pos_range"]
    assert report["tensor"] == tensor and report["bound"] == bound and report["calibrated"] <= bound

    graph = onnx.load(str(tmp_path / "int8" / NAME)).graph
    quantize = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    scale = float(og.constant_value(graph, quantize.input[1]))
    smooth = og.constant_value(graph, next(n for n in graph.node if n.output[0] == tensor).input[1])
    width = patterns.positional_slice(og.load_graph(smoothed))[1][2]
    far = np.abs(positions.sinusoid(np.arange(-60_000, 60_000, 7), width) * smooth.reshape(-1)).max()
    assert far <= bound <= 1.0001 * far  # the bound is reached, by the far rows
    assert scale * 255 / 2 >= bound * (1 - 1e-6)  # uint8 symmetric: [-bound, bound] fits without clipping
