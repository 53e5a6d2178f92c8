"""stages/base_model.py: copy + verification of a model folder in Parakeet's ONNX layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from requant.model_check import MODEL_FILES, verify_model_dir
from stages.base_model import build_base_model
from requant.common import StageError, sha256_file
from requant.params import ModelParams

D, H = 16, 8  # encoder width, prediction-network state size


def _encoder(output_name: str = "outputs") -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((128, D)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Transpose", ["audio_signal"], ["btf"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["btf", "w"], ["btd"]),
        helper.make_node("Transpose", ["btd"], [output_name], perm=[0, 2, 1]),
        helper.make_node("Identity", ["length"], ["encoded_lengths"]),
    ]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, ["B", 128, "T"]),
         helper.make_tensor_value_info("length", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["B", D, "T"]),
         helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["B"])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _decoder() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Identity", ["encoder_outputs"], ["outputs"]),
        helper.make_node("Identity", ["target_length"], ["prednet_lengths"]),
        helper.make_node("Identity", ["input_states_1"], ["output_states_1"]),
        helper.make_node("Identity", ["input_states_2"], ["output_states_2"]),
    ]
    state = ["L", "B", H]
    graph = helper.make_graph(
        nodes, "decoder_joint",
        [helper.make_tensor_value_info("encoder_outputs", TensorProto.FLOAT, ["B", D, "T"]),
         helper.make_tensor_value_info("targets", TensorProto.INT32, ["B", "U"]),
         helper.make_tensor_value_info("target_length", TensorProto.INT32, ["B"]),
         helper.make_tensor_value_info("input_states_1", TensorProto.FLOAT, state),
         helper.make_tensor_value_info("input_states_2", TensorProto.FLOAT, state)],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["B", D, "T"]),
         helper.make_tensor_value_info("prednet_lengths", TensorProto.INT32, ["B"]),
         helper.make_tensor_value_info("output_states_1", TensorProto.FLOAT, state),
         helper.make_tensor_value_info("output_states_2", TensorProto.FLOAT, state)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_model_dir(folder: Path, encoder: onnx.ModelProto | None = None) -> Path:
    """A tiny model folder in the upstream layout (no nemo128.onnx: the stage adds it)."""
    folder.mkdir(parents=True)
    encoder = encoder or _encoder()
    onnx.save_model(encoder, str(folder / "encoder-model.int8.onnx"))
    onnx.save_model(encoder, str(folder / "encoder-model.onnx"), save_as_external_data=True,
                    location="encoder-model.onnx.data", size_threshold=0)
    for name in ("decoder_joint-model.onnx", "decoder_joint-model.int8.onnx"):
        onnx.save_model(_decoder(), str(folder / name))
    (folder / "config.json").write_text(json.dumps({"model_type": "nemo-conformer-tdt", "features_size": 128}))
    (folder / "vocab.txt").write_text("".join(f"▁{c} {i}\n" for i, c in enumerate("abc")) + "<blk> 3\n")
    return folder


def _demo(tmp_path: Path) -> ModelParams:
    return ModelParams(hf_repo="unused/repo", hf_revision="main", demo_dir=str(tmp_path / "demo_model"))


def test_demo_model_is_copied_verified_and_runs(tmp_path: Path) -> None:
    make_model_dir(tmp_path / "demo_model")
    build_base_model(_demo(tmp_path), is_demo=True, out_dir=tmp_path / "base")
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == sorted(MODEL_FILES)
    session = ort.InferenceSession(str(tmp_path / "base" / "encoder-model.onnx"))
    out, lengths = session.run(None, {"audio_signal": np.ones((1, 128, 5), np.float32),
                                      "length": np.array([5], np.int64)})
    assert out.shape == (1, D, 5) and lengths.tolist() == [5]
    nemo = ort.InferenceSession(str(tmp_path / "base" / "nemo128.onnx"))
    assert [i.name for i in nemo.get_inputs()] == ["waveforms", "waveforms_lens"]
    before = sha256_file(tmp_path / "base" / "encoder-model.onnx.data")
    build_base_model(_demo(tmp_path), is_demo=True, out_dir=tmp_path / "base")  # re-run replaces it
    assert sha256_file(tmp_path / "base" / "encoder-model.onnx.data") == before


def test_missing_file_names_folder_and_file(tmp_path: Path) -> None:
    make_model_dir(tmp_path / "demo_model")
    (tmp_path / "demo_model" / "decoder_joint-model.int8.onnx").unlink()
    with pytest.raises(StageError, match="demo_model: missing decoder_joint-model.int8.onnx"):
        build_base_model(_demo(tmp_path), is_demo=True, out_dir=tmp_path / "base")
    assert not (tmp_path / "base").exists()


def _complete_dir(tmp_path: Path, encoder: onnx.ModelProto | None = None) -> Path:
    folder = make_model_dir(tmp_path / "m", encoder)
    shutil.copyfile(_nemo128(), folder / "nemo128.onnx")
    return folder


def _nemo128() -> Path:
    from importlib.resources import files

    return Path(str(files("onnx_asr.preprocessors") / "data" / "nemo128.onnx"))


def test_unexpected_tensor_name(tmp_path: Path) -> None:
    folder = _complete_dir(tmp_path, _encoder(output_name="encoded"))
    with pytest.raises(StageError, match=r"encoder-model.onnx: outputs are \['encoded', 'encoded_lengths'\]"):
        verify_model_dir(folder)


def test_wrong_dtype(tmp_path: Path) -> None:
    folder = _complete_dir(tmp_path)
    model = _decoder()
    model.graph.input[1].type.tensor_type.elem_type = TensorProto.INT64
    onnx.save_model(model, str(folder / "decoder_joint-model.onnx"))
    with pytest.raises(StageError, match="decoder_joint-model.onnx: input 'targets' is INT64, expected INT32"):
        verify_model_dir(folder)


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("vocab.txt", "<blk> 0\n▁a 1\n", "'<blk>' must have the last id"),
        ("vocab.txt", "▁a 0\n▁b 2\n<blk> 3\n", "not 0..2 without gaps"),
        ("config.json", '{"model_type": "nemo-conformer-tdt"}', "features_size is None"),
        ("encoder-model.onnx", "not onnx", "encoder-model.onnx: not a readable ONNX model"),
    ],
)
def test_bad_files(tmp_path: Path, file: str, content: str, message: str) -> None:
    folder = _complete_dir(tmp_path)
    (folder / file).write_text(content)
    with pytest.raises(StageError, match=message):
        verify_model_dir(folder)


def test_external_weights_and_pinned_hashes(tmp_path: Path) -> None:
    folder = _complete_dir(tmp_path)
    good = {name: sha256_file(folder / name) for name in MODEL_FILES}
    verify_model_dir(folder, good)
    with pytest.raises(StageError, match="vocab.txt: sha256 differs"):
        verify_model_dir(folder, {**good, "vocab.txt": "0" * 64})
    model = onnx.load(str(folder / "encoder-model.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "gone.data"
    onnx.save_model(model, str(folder / "encoder-model.onnx"))
    with pytest.raises(StageError, match="weight 'w' lives in 'gone.data', which is missing"):
        verify_model_dir(folder)


def test_an_unrecognised_encoder_stops_the_stage_with_the_census_words(tmp_path: Path) -> None:
    encoder = _encoder()
    encoder.graph.node.insert(1, helper.make_node("Erf", ["btf"], ["odd"], name="/odd/Erf"))
    make_model_dir(tmp_path / "demo_model", encoder)
    with pytest.raises(StageError) as err:
        build_base_model(_demo(tmp_path), is_demo=True, out_dir=tmp_path / "base")
    assert str(err.value).startswith(f"{tmp_path / 'demo_model' / 'encoder-model.onnx'}: ")
    assert "op types the pipeline has never been tested on: Erf" in str(err.value)
    assert not (tmp_path / "base").exists()
