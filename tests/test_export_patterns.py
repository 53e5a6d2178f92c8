"""The builder (demo model, Parakeet-size twin) carries every pattern of NeMo's real export
(../shared/FACTS.md, "The real export, node by node"), and the census reads them."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from demo.fastconformer import PARAKEET, TINY, RandomWeights, build_encoder, read_weights, weight_shapes
from requant import onnx_graph as og
from requant import patterns
from tools.census import census

# Parakeet's layout (bias-free, global attention, stored positional table) at a size a test can run
SMALL_PARAKEET = PARAKEET.replace(n_layers=2, d_model=64, n_heads=2, ff_dim=128, subsampling_channels=8,
                                  vocab_size=20, pred_hidden=32, joint_hidden=32, pos_max_len=100)
DEMO_ENCODER = Path("demo/model/encoder-model.onnx")


@pytest.fixture(scope="module")
def twin() -> onnx.ModelProto:
    return build_encoder(RandomWeights(SMALL_PARAKEET), SMALL_PARAKEET)


def _run(model: onnx.ModelProto, frames: int) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feats = np.random.default_rng(0).standard_normal((1, 128, frames * 8), dtype=np.float32)
    return session.run(None, {"audio_signal": feats, "length": np.array([frames * 8])})


def _nodes(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


@pytest.mark.parametrize("which", ["twin", "demo"])
def test_names_and_bias_free_linears_as_exported(which: str, twin: onnx.ModelProto) -> None:
    model = twin if which == "twin" else og.load_graph(DEMO_ENCODER)
    names = {n.name for n in model.graph.node}
    assert {"/layers.0/self_attn/linear_q/MatMul", "/layers.0/norm_feed_forward1/LayerNormalization",
            "/layers.1/conv/depthwise_conv/Conv", "/pre_encode/out/MatMul"} <= names
    inits = {t.name for t in model.graph.initializer}
    weighted = [n for n in _nodes(model, "MatMul") if n.input[1] in inits]
    assert weighted and all(n.input[1].startswith("onnx::MatMul_") for n in weighted)
    users = og.consumers(model.graph)
    with_bias = [n.name for n in weighted if any(u.op_type == "Add" and u.input[1] in inits
                                                 for u, _ in users[n.output[0]])]
    if which == "twin":  # Parakeet v3: only the subsampling projection has a bias
        assert with_bias == ["/pre_encode/out/MatMul"]
    else:  # the demo keeps the biases it was trained with (linear_pos has none, as in NeMo)
        assert len(with_bias) == len(weighted) - TINY.n_layers


@pytest.mark.parametrize("which", ["twin", "demo"])
def test_length_chain_masks_scaling_pad_and_shape_readers(which: str, twin: onnx.ModelProto) -> None:
    model = twin if which == "twin" else og.load_graph(DEMO_ENCODER)
    layers = SMALL_PARAKEET.n_layers if which == "twin" else TINY.n_layers
    chain = [n.op_type for n in patterns.length_path(model.graph) if n.op_type != "Constant"]
    assert chain == ["Cast", *["Add", "Div", "Add", "Floor"] * 3, "Cast", "Identity"]
    assert onnx.helper.get_attribute_value(_nodes(model, "Cast")[0].attribute[0]) == onnx.TensorProto.FLOAT
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Where"] == 3 * layers and ops["Softmax"] == layers  # before and after softmax, conv module
    assert {"Less", "Tile", "And", "Not"} <= set(ops)
    makers, users = og.producers(model.graph), og.consumers(model.graph)
    for softmax in _nodes(model, "Softmax"):
        masked = makers[softmax.input[0]]
        assert masked.op_type == "Where" and makers[masked.input[2]].op_type == "Div"
        assert [u.op_type for u, _ in users[softmax.output[0]]] == ["Where"]
    depthwise = [conv for conv in _nodes(model, "Conv") if "depthwise_conv" in conv.name]
    assert len(depthwise) == layers
    for conv in depthwise:
        assert makers[conv.input[0]].op_type == "Pad"
        assert conv.input[1].startswith("onnx::Conv_")  # BatchNorm folded in: an unnamed weight
    attention_norms = [n for n in _nodes(model, "LayerNormalization") if "norm_self_att" in n.name]
    assert len(attention_norms) == layers
    for norm in attention_norms:
        readers = sorted(u.op_type for u, _ in users[norm.output[0]])
        assert readers == ["MatMul", "MatMul", "MatMul", "Shape"]


def test_positional_table_caps_the_pass_as_upstream(twin: onnx.ModelProto) -> None:
    table = next(t for t in twin.graph.initializer if t.name == "pos_enc.pe")
    assert list(table.dims) == [1, 2 * SMALL_PARAKEET.pos_max_len - 1, SMALL_PARAKEET.d_model]
    assert patterns.positional_limit(twin) == SMALL_PARAKEET.pos_max_len
    assert patterns.positional_limit(og.load_graph(DEMO_ENCODER)) == 5000  # computed table, same cap
    out, lengths = _run(twin, SMALL_PARAKEET.pos_max_len)
    assert lengths.tolist() == [SMALL_PARAKEET.pos_max_len] and np.isfinite(out).all()
    with pytest.raises(Exception, match="(?i)broadcast|shape|dimension"):  # as upstream fails at 410 s
        _run(twin, SMALL_PARAKEET.pos_max_len + 10)
    # one frame over, the slice is one row and broadcasts: no error, a wrong result (so eval.max_s guards)
    out, _ = _run(twin, SMALL_PARAKEET.pos_max_len + 1)
    assert out.shape[2] == SMALL_PARAKEET.pos_max_len + 1


def test_weights_read_back_under_the_exporter_names(tmp_path: Path) -> None:
    from demo.fastconformer import write_model_dir, default_tokens

    weights = RandomWeights(SMALL_PARAKEET, seed=3)
    write_model_dir(tmp_path, weights, SMALL_PARAKEET, default_tokens(SMALL_PARAKEET))
    back = read_weights(tmp_path, SMALL_PARAKEET)
    assert set(back) == set(weight_shapes(SMALL_PARAKEET))
    assert all(np.array_equal(back[k], weights[k]) for k in back)


def test_tested_ops_are_exactly_what_the_builder_emits(twin: onnx.ModelProto) -> None:
    emitted = {n.op_type for n in twin.graph.node} | {n.op_type for n in og.load_graph(DEMO_ENCODER).graph.node}
    assert emitted == patterns.TESTED_OPS


def test_census_of_the_demo_model() -> None:
    data = census(og.load_graph(DEMO_ENCODER))
    assert data["findings"] == []
    assert data["matmuls"] == {"two_activations": 3 * TINY.n_layers, "weighted": 1 + 9 * TINY.n_layers}
    assert len(data["folds"]) == 3 * TINY.n_layers and data["folds_with_shape_readers"] == TINY.n_layers
    assert data["max_frames"] == 5000 and data["max_seconds"] == 400
    assert data["length_path_float"] == data["length_path_kept_fp32"] == 13
    assert data["pointwise"] == {"convs": 5 + 3 * TINY.n_layers, "takes": 2 * TINY.n_layers}
    result = subprocess.run([sys.executable, "-m", "tools.census", str(DEMO_ENCODER)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "at most 5000 encoder frames per pass (400 s of audio)" in result.stdout
    assert "findings: none" in result.stdout
    assert f"pointwise convs: {2 * TINY.n_layers} of {5 + 3 * TINY.n_layers} Convs are 1x1 Conv1d" in result.stdout


def test_census_names_an_unknown_pattern_in_one_line(twin: onnx.ModelProto, tmp_path: Path) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(twin)
    gelu = onnx.helper.make_node("Erf", ["/pre_encode/out/MatMul_output_0"], ["erf_out"], name="/odd/Erf")
    model.graph.node.insert(len(model.graph.node) - 2, gelu)
    onnx.save(model, str(tmp_path / "odd.onnx"))
    result = subprocess.run([sys.executable, "-m", "tools.census", str(tmp_path / "odd.onnx")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    findings = [line for line in result.stdout.splitlines() if line.startswith("finding:")]
    assert findings == ["finding: op types the pipeline has never been tested on: Erf"]
    assert "Traceback" not in result.stderr
