"""The diagnosis ranks an injected bad layer first; int8_mixed keeps exactly the top K MatMuls fp32."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from requant import encoder_runs as runs
from requant import matmul_errors as errors
from requant import onnx_graph as og
from requant.common import StageError
from requant.features import features
from stages.diagnose import diagnose, summarize
from requant.static_int8 import NAME, build_int8, most_sensitive
from stages.int8_dynamic import build_dynamic_int8
from stages.smoothquant import smooth_encoder
from tests.encoder_graph import build_encoder, save_encoder, speechlike, write_windows


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diagnose")
    base = save_encoder(build_encoder(outlier_scale=20), root / "base")
    build_dynamic_int8(base, root / "dyn", op_types=["MatMul"])
    return {"root": root, "base": base, "dyn": root / "dyn" / NAME}


def _inject(variant: Path, out: Path) -> None:
    """Scale one quantized MatMul's weight scale by 4: that layer, and only it, is now broken."""
    model = onnx.load(str(variant))
    node = [n for n in model.graph.node if n.op_type == "MatMulInteger"][3]
    scale_name = node.input[1].replace("_quantized", "_scale")
    scale = next(t for t in model.graph.initializer if t.name == scale_name)
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 4, scale_name))
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))


def test_an_injected_bad_layer_is_ranked_first(models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad" / NAME
    _inject(models["dyn"], bad)
    clips = {2.0: speechlike(2.0, seed=1), 4.0: speechlike(4.0, seed=1)}
    result = diagnose({"good": (models["base"], models["dyn"]), "bad": (models["base"], bad)}, models["base"], clips)
    for name in result:
        result[name] |= summarize(result[name], threshold=0.5)
    base_graph = og.load_graph(models["base"]).graph
    broken = result["bad"]["ranking"][0]
    assert result["good"]["ranking"][0] != broken or result["good"]["matmuls"][broken]["4"] < 0.5
    assert result["bad"]["matmuls"][broken]["4"] > 2.0  # a 4x scale: ~300 % error
    assert result["bad"]["worst"][0] == {"matmul": broken, "rel_error": result["bad"]["matmuls"][broken]["4"],
                                         "breaks_from_s": 2.0}
    assert broken in {n.name for n in base_graph.node}  # named as in the fp32 graph users know
    others = [m for m in result["bad"]["matmuls"] if m != broken]
    assert max(result["bad"]["matmuls"][m]["4"] for m in others) < 0.5  # fed fp32 inputs: nothing compounds
    assert result["bad"]["output_rel_error"]["4"] > result["good"]["output_rel_error"]["4"]
    assert set(result["good"]["matmuls"]) == set(result["bad"]["matmuls"])
    assert len(result["good"]["matmuls"]) == sum(k == "weighted" for k in og.classify_matmuls(base_graph).values())


def test_mixed_keeps_exactly_the_top_k_in_fp32(models: dict[str, Path], tmp_path: Path) -> None:
    windows = write_windows(tmp_path / "windows")
    smooth_encoder(models["base"], tmp_path / "smoothed", windows, alpha=0.5)
    smoothed = tmp_path / "smoothed" / models["base"].name
    weighted = [n for n, k in og.classify_matmuls(og.load_graph(smoothed).graph).items() if k == "weighted"]
    diagnosis = tmp_path / "diagnosis.json"
    diagnosis.write_text(json.dumps({"variants": {"int8_smoothquant": {"ranking": weighted[::-1]}}}))
    keep = most_sensitive(diagnosis, 3)
    assert keep == weighted[::-1][:3]
    build_int8(smoothed, tmp_path / "mixed", windows, 99.999, 0, min_cosine=0.5, keep_fp32=keep)
    graph = onnx.load(str(tmp_path / "mixed" / NAME)).graph
    makers = og.producers(graph)
    quantized = {n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in makers
                 and makers[n.input[1]].op_type == "DequantizeLinear"}
    assert quantized == set(weighted) - set(keep)
    with pytest.raises(StageError, match="mixed.keep_fp32=999"):
        most_sensitive(diagnosis, 999)
    with pytest.raises(StageError, match="run `dvc repro diagnose` first"):
        most_sensitive(tmp_path / "none.json", 1)


DEMO = Path(__file__).resolve().parents[1] / "demo" / "model"
TOLERANCE = 1e-6  # relative, one-pass vs captured figure of one MatMul: 4.6e-8 measured (6 s and 30 s)


def captured_errors(source: Path, variant: Path, audio: np.ndarray) -> dict[str, float]:
    """The oracle, measured the way diagnose did before its one pass: the fp32 source's MatMul inputs and
    outputs captured by a probe pass, each quantized MatMul cut out of the variant and run alone on its
    captured input, the error's norm taken in float64 by numpy."""
    graph, model = og.load_graph(source), onnx.load(str(variant))
    pairs = errors.quantized_matmuls(graph, model)
    tensors = sorted({t for pair in pairs.values() for t in pair})
    signal, length = features(audio)
    values = dict(zip(tensors, runs.open_session(runs.probe(graph, tensors), source.parent).run(
        tensors, {"audio_signal": signal, "length": length})))
    return {m: runs.relative_error(values[y], runs.open_session(og.extract(model, y, x)).run(None, {x: values[x]})[0])
            for m, (x, y) in pairs.items()}


def one_pass_errors(source: Path, variants: dict[str, Path], audio: np.ndarray) -> dict:
    with errors.error_graph(source, variants) as (path, found):
        names = errors.sum_outputs(found)
        signal, length = features(audio)
        values = dict(zip(names, runs.open_session(path).run(names, {"audio_signal": signal, "length": length})))
    assert not path.exists()  # the combined graph is gone with the block
    return {name: errors.relative_errors(values, pairs) for name, pairs in found.items()}


def test_one_pass_equals_the_captured_figures_on_the_demo_and_finds_a_wrong_matmul(tmp_path: Path) -> None:
    """The demo model and its stock int8 (external weights, 46 quantized MatMuls), and a copy with one MatMul's
    weight scale 4x off. Each figure of the one pass equals the captured one within TOLERANCE: both compare
    the same float32 outputs; only the sums differ (float64 in the graph, numpy's norm). The wrong MatMul
    stands out in both, by two orders of magnitude."""
    audio = speechlike(6.0, seed=3)
    source, stock = DEMO / "encoder-model.onnx", DEMO / "encoder-model.int8.onnx"
    wrong = tmp_path / "wrong" / "encoder-model.int8.onnx"
    _inject(stock, wrong)
    measured = one_pass_errors(source, {"stock": stock, "wrong": wrong}, audio)  # weights in two folders
    assert all(os.stat(p).st_nlink == 1 for p in DEMO.iterdir())  # nothing linked: onnx would refuse the files
    for name, variant in (("stock", stock), ("wrong", wrong)):
        expected = captured_errors(source, variant, audio)
        assert measured[name].keys() == expected.keys() and len(expected) > 40
        for matmul, error in measured[name].items():
            assert error == pytest.approx(expected[matmul], rel=TOLERANCE), (name, matmul)
    broken = max(measured["wrong"], key=measured["wrong"].get)
    assert measured["wrong"][broken] > 100 * measured["stock"][broken]
    assert sorted(measured["wrong"].values())[-2] < 2 * max(measured["stock"].values())  # only that one
