"""fp16 cast: weights in float16, inputs and outputs exactly as before (float32 features, int lengths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant import patterns
from requant.common import StageError
from stages.fp16 import build_fp16
from tests.encoder_graph import build_decoder, build_encoder, hard_linked_copy, save_encoder, speechlike


@pytest.fixture(scope="module")
def fp16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fp16")
    save_encoder(build_encoder(), root / "base")
    onnx.save_model(build_decoder(), str(root / "base" / "decoder_joint-model.onnx"))
    build_fp16(root / "base", root / "fp16")
    return root / "base", root / "fp16"


def _io(path: Path) -> list[tuple[str, int]]:
    graph = og.load_graph(path).graph
    return [(v.name, v.type.tensor_type.elem_type) for v in [*graph.input, *graph.output]]


@pytest.mark.parametrize("name", ["encoder-model", "decoder_joint-model"])
def test_io_types_unchanged_weights_halved(fp16: tuple[Path, Path], name: str) -> None:
    base, out = fp16
    src, dst = base / f"{name}.onnx", out / f"{name}.fp16.onnx"
    assert _io(dst) == _io(src)
    assert onnx.TensorProto.INT32 in dict(_io(src)).values() or onnx.TensorProto.INT64 in dict(_io(src)).values()
    session = runs.open_session(dst)
    assert {i.name: i.type for i in session.get_inputs()} == {i.name: i.type for i in runs.open_session(src).get_inputs()}
    weights = [t for t in onnx.load(str(dst)).graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)


def test_encoder_outputs_close_to_fp32(fp16: tuple[Path, Path]) -> None:
    base, out = fp16
    audio = [speechlike(2.0, seed=11)]
    reference = runs.encoder_outputs(base / "encoder-model.onnx", audio, "fp32")
    got = runs.encoder_outputs(out / "encoder-model.fp16.onnx", audio, "fp16")
    assert got[0].dtype == np.float32
    scores = runs.compare(reference, got)
    assert scores["cosine_min"] > 0.9999 and 0 < scores["rel_error_max"] < 1e-2


def test_only_the_two_files_and_rerun_identical(fp16: tuple[Path, Path], tmp_path: Path) -> None:
    base, out = fp16
    assert sorted(p.name for p in out.iterdir()) == ["decoder_joint-model.fp16.onnx", "encoder-model.fp16.onnx"]
    # the converter's temporary file beside its input (models/base, a DVC output) is gone
    assert sorted(p.name for p in base.iterdir()) == [
        "decoder_joint-model.onnx", "encoder-model.onnx", "encoder-model.onnx.data"]
    build_fp16(base, tmp_path / "again")
    for p in out.iterdir():
        assert (tmp_path / "again" / p.name).read_bytes() == p.read_bytes()


def test_missing_decoder_leaves_nothing(tmp_path: Path) -> None:
    save_encoder(build_encoder(), tmp_path / "base")
    with pytest.raises(StageError, match="decoder_joint-model.onnx not found"):
        build_fp16(tmp_path / "base", tmp_path / "fp16")
    assert not (tmp_path / "fp16").exists()


def test_hard_linked_input_converts_to_the_same_bytes(fp16: tuple[Path, Path], tmp_path: Path) -> None:
    """DVC's hardlink cache links models/base; onnx would refuse its data, the cast reads each weight itself."""
    base, out = fp16
    linked = hard_linked_copy(base / "encoder-model.onnx", tmp_path / "base").parent
    build_fp16(linked, tmp_path / "fp16")
    for p in out.iterdir():
        assert (tmp_path / "fp16" / p.name).read_bytes() == p.read_bytes()


def test_large_models_keep_weights_in_external_data(fp16: tuple[Path, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Above og.SELF_CONTAINED_BELOW (Parakeet size) each model comes with a .data file beside it."""
    _, out = fp16
    base = save_encoder(build_encoder(), tmp_path / "base").parent  # the module's base gets hard-linked
    onnx.save_model(build_decoder(), str(base / "decoder_joint-model.onnx"))
    monkeypatch.setattr(og, "SELF_CONTAINED_BELOW", 1024)
    build_fp16(base, tmp_path / "big")
    names = sorted(p.name for p in (tmp_path / "big").iterdir())
    assert names == ["decoder_joint-model.fp16.onnx", "decoder_joint-model.fp16.onnx.data",
                     "encoder-model.fp16.onnx", "encoder-model.fp16.onnx.data"]
    audio = [speechlike(2.0, seed=11)]
    same = runs.compare(runs.encoder_outputs(out / "encoder-model.fp16.onnx", audio, "one file"),
                      runs.encoder_outputs(tmp_path / "big" / "encoder-model.fp16.onnx", audio, "external"))
    assert same["rel_error_max"] == 0


def _lengths_in_numpy(model: onnx.ModelProto, lengths: list[int]) -> list[int]:
    """Run only the encoded-length path with onnx's reference evaluator: NumPy arithmetic in each
    tensor's own dtype, as an EP with fp16 kernels computes it (the CPU EP upcasts and hides it)."""
    from onnx.reference import ReferenceEvaluator

    nodes = patterns.length_path(model.graph)
    sub = onnx.helper.make_graph(nodes, "lengths", [v for v in model.graph.input if v.name == "length"],
                                 [v for v in model.graph.output if v.name == "encoded_lengths"],
                                 [t for t in model.graph.initializer if t.name in {i for n in nodes for i in n.input}])
    evaluator = ReferenceEvaluator(onnx.helper.make_model(sub, opset_imports=model.opset_import))
    return evaluator.run(None, {"length": np.array(lengths, np.int64)})[0].tolist()


def test_length_arithmetic_stays_fp32(fp16: tuple[Path, Path], tmp_path: Path) -> None:
    """NeMo computes encoded lengths in float; a naive fp16 cast turns that chain into fp16, which
    cannot count past 2048 exactly (39 001 frames -> 39 008). The stage keeps it fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    _, out = fp16
    converted = onnx.load(str(out / "encoder-model.fp16.onnx"))
    types = patterns.tensor_types(converted)
    floats = [t for n in patterns.length_path(converted.graph) if n.op_type != "Constant" for t in n.output
              if types.get(t) in patterns.FLOATS]
    assert floats and all(types[t] == onnx.TensorProto.FLOAT for t in floats)
    lengths = [39_001, 40_000, 2_049, 100, 1]
    exact = [(((n - 1) // 2 + 1) - 1) // 2 + 1 for n in lengths]  # two stride-2 convs
    assert _lengths_in_numpy(converted, lengths) == exact
    naive = convert_float_to_float16(str(save_encoder(build_encoder(), tmp_path)), keep_io_types=True)
    assert _lengths_in_numpy(naive, lengths) != exact  # the fault this test guards against


def test_position_arithmetic_and_its_constants_stay_fp32(tmp_path: Path) -> None:
    """The demo layout computes its positional table from constants (Range 4999 .. -4999): in fp16 the
    4999.0 becomes 5000.0, every relative position shifts by one, and the output drifts (cosine 0.998)."""
    from demo.fastconformer import TINY, build_random_model

    build_random_model(tmp_path / "base", TINY.replace(n_layers=1), seed=2)
    build_fp16(tmp_path / "base", tmp_path / "fp16")
    converted = onnx.load(str(tmp_path / "fp16" / "encoder-model.fp16.onnx"))
    makers = og.producers(converted.graph)
    start = makers[next(n for n in converted.graph.node if n.op_type == "Range" and "pos_enc" in n.name).input[0]]
    assert start.op_type == "Constant" and start.attribute[0].t.data_type == onnx.TensorProto.FLOAT
    window = [speechlike(6.0, seed=3)]
    scores = runs.compare(runs.encoder_outputs(tmp_path / "base" / "encoder-model.onnx", window, "fp32"),
                        runs.encoder_outputs(tmp_path / "fp16" / "encoder-model.fp16.onnx", window, "fp16"))
    assert scores["cosine_min"] > 0.99999, scores


def test_the_fp32_weights_are_never_loaded_whole(fp16: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The converter runs on the graph alone and the weights are cast one at a time: onnx never loads the
    model with its external data (at Parakeet size that held 2.4 GB of fp32 weights and their copies), and the
    files are the same bytes as the whole-model conversion's."""
    base, out = fp16
    copy = tmp_path / "base"
    copy.mkdir()
    for path in base.iterdir():
        copy.joinpath(path.name).write_bytes(path.read_bytes())

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole model's external data was loaded")

    monkeypatch.setattr(onnx, "load_external_data_for_model", refuse)
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", refuse)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", refuse)
    build_fp16(copy, tmp_path / "fp16")
    for path in sorted(out.iterdir()):
        assert (tmp_path / "fp16" / path.name).read_bytes() == path.read_bytes(), path.name
