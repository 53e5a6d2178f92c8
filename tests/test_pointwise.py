"""requant/pointwise.py: pointwise Conv1d -> MatMul is exact on the export's conv module, refuses other convs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from demo.fastconformer import TINY, build_random_model
from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant import patterns, pointwise, stable
from tools.census import census
from tests.test_attention import padded_batch

LAYERS = 2


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_random_model(tmp_path_factory.mktemp("pointwise") / "model", TINY.replace(n_layers=LAYERS))
    return folder / "encoder-model.onnx"


def rewritten(encoder: Path, folder: Path) -> tuple[Path, dict]:
    model = og.load_graph(encoder)
    replace, summary = pointwise.rewrite(model, encoder.parent)
    folder.mkdir()
    og.write_model(model, encoder.parent, folder / encoder.name, replace=replace)
    return folder / encoder.name, summary


def test_the_rewrite_is_exact_with_padding_in_the_batch(encoder: Path, tmp_path: Path) -> None:
    path, summary = rewritten(encoder, tmp_path / "pw")
    assert summary["rewritten"] == 2 * LAYERS
    assert summary["refused"] == {"2-D conv": 3, "grouped (depthwise)": 2 + LAYERS}  # subsampling (2 depthwise), conv module
    assert summary["transposes_after"] == summary["transposes"]  # the inverse pairs cancelled
    graph = og.load_graph(path).graph
    assert sum(n.op_type == "Conv" and "pointwise" in n.name for n in graph.node) == 0
    makers = og.producers(graph)
    first = [n for n in graph.node if n.op_type == "MatMul" and "pointwise_conv1" in n.name]
    assert len(first) == LAYERS and all(makers[n.input[0]].op_type == "LayerNormalization" for n in first)
    feed = padded_batch()
    ref = runs.open_session(encoder).run(["outputs", "encoded_lengths"], feed)
    new = runs.open_session(path).run(["outputs", "encoded_lengths"], feed)
    np.testing.assert_array_equal(new[1], ref[1])
    for row, frames in enumerate(ref[1]):
        got, want = new[0][row, :, :frames], ref[0][row, :, :frames]
        assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_the_new_matmuls_are_quantized_and_the_first_folds_into_the_norm(encoder: Path, tmp_path: Path) -> None:
    path, _ = rewritten(encoder, tmp_path / "pw")
    graph = og.load_graph(path).graph
    groups, kinds = patterns.smoothing_plan(graph)
    names = [n for n in kinds if "pointwise_conv" in n]
    assert len(names) == 2 * LAYERS and all(kinds[n] == "weighted" for n in names)
    first = next(n for n in graph.node if n.name in names and "conv1" in n.name)
    width = next(t for t in graph.initializer if t.name == first.input[1]).dims[0]
    assert patterns.foldable_norm(graph, first.input[0], groups[first.input[0]], width) is not None
    assert census(og.load_graph(path))["pointwise"]["takes"] == 0  # nothing left to take
    assert census(og.load_graph(encoder))["pointwise"] == {"convs": 5 + 3 * LAYERS, "takes": 2 * LAYERS}


def _conv_graph(**attrs: object) -> onnx.ModelProto:
    weight = np.ones((4, 4 // int(attrs.get("group", 1)), 1), np.float32)  # type: ignore[call-overload]
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="odd/Conv", kernel_shape=[1], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph)


@pytest.mark.parametrize(("attrs", "reason"), [
    ({"group": 4}, "grouped (depthwise)"), ({"strides": [2]}, "strided"), ({"pads": [1, 1]}, "padded"),
    ({"dilations": [2]}, "dilated"),
])
def test_a_conv_that_is_not_pointwise_is_refused_and_left_as_it_was(attrs: dict, reason: str) -> None:
    model = _conv_graph(**attrs)
    before = model.SerializeToString()
    replace, summary = pointwise.rewrite(model, Path("."))
    assert summary["rewritten"] == 0 and summary["refused"] == {reason: 1} and not replace
    assert model.SerializeToString() == before


# ------------------------------------------------------------- gate figures another CPU reproduces

def test_gate_errors_measured_apart_on_two_cpus_are_written_the_same() -> None:
    # pairs measured on the demo: AVX-512 against AVX2 kernels, the same model files
    for avx512, avx2 in ((4.542410717327507e-07, 4.945027395451771e-07), (2.83542768e-07, 2.83148743e-07),
                         (0.061087815481809006, 0.061087747089040724)):
        assert stable.stable_error(avx512) == stable.stable_error(avx2)
    assert stable.stable_error(4.5e-07) == 1e-06 and stable.stable_error(1e-06) == 1e-06
    assert stable.stable_error(0.0) == 0.0 and stable.stable_error(0.0610878) == 0.0611
    assert np.isnan(stable.stable_error(float("nan")))  # NaN stays visible; the gates fail on it first


def gate_errors(figures: object) -> list[float]:
    if isinstance(figures, dict):
        return [e for key, value in figures.items()
                for e in ([value] if key.endswith(("rel_error", "rel_error_max", "max_error"))
                          and isinstance(value, float) else gate_errors(value))]
    return [e for value in figures for e in gate_errors(value)] if isinstance(figures, list) else []


def test_committed_gate_errors_are_in_the_form_another_cpu_reproduces() -> None:
    # a fresh clone re-runs the model-building stages: their gate errors must come out the same bytes
    root = Path(__file__).resolve().parents[1] / "metrics"
    files = [root / "pointwise.json", root / "smoothquant.json", root / "blockwise.json",
             *sorted((root / "nbits").glob("*.json"))]
    errors = [e for path in files for e in gate_errors(json.loads(path.read_text()))]
    assert len(errors) >= 10
    assert all(e == stable.stable_error(e) for e in errors), errors
