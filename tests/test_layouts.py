"""The RNN-T and CTC layouts (requant/layouts.py, demo/layouts.py): a CTC graph split where its encoder ends and
joined again, the demo model in each layout through base_model, onnx-asr and the release folder, and the
refusals (a graph the split does not know, a layout that is not the model's, beam search on a non-TDT model)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_asr
import onnxruntime as ort
import pytest
import yaml

from demo.layouts import write_demo_layout
from requant.asr import assemble_model_dir, load_asr, recognize_all
from requant.common import StageError
from requant.features import features
from requant.layouts import LAYOUTS, join_ctc, split_ctc
from requant.params import BEAM_SEARCH, ModelParams, ParamsError, parse_params
from requant.model_check import verify_model_dir
from stages.base_model import build_base_model, to_pipeline_layout
from stages.package import join_release_pairs

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo" / "model"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    from demo.synth import make_speech

    return make_speech("en", "en-us+f2", 12.0, seed=5)[0]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo model in each upstream layout, as a repository would hold it."""
    folders = {}
    for layout in ("rnnt", "ctc"):
        folders[layout] = tmp_path_factory.mktemp(layout)
        write_demo_layout(DEMO, layout, folders[layout])
    return folders


def _run(path: Path, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([output], inputs)[0]


@pytest.mark.parametrize("suffix", ["", ".int8"])
def test_ctc_parts_compute_the_single_graph_and_join_back_to_its_bits(upstream, speech, tmp_path, suffix) -> None:
    single = upstream["ctc"] / f"model{suffix}.onnx"
    boundary = split_ctc(upstream["ctc"] / "model.onnx", tmp_path)
    if suffix:  # the stock int8 file is cut where the fp32 one was
        split_ctc(single, tmp_path, suffix, boundary)
    x, n = features(speech)
    expected = _run(single, {"audio_signal": x, "length": n}, "logprobs")
    encoded = _run(tmp_path / f"encoder-model{suffix}.onnx", {"audio_signal": x, "length": n}, "outputs")
    lengths = _run(tmp_path / f"encoder-model{suffix}.onnx", {"audio_signal": x, "length": n}, "encoded_lengths")
    np.testing.assert_array_equal(_run(tmp_path / f"ctc_head-model{suffix}.onnx", {"encoder_outputs": encoded},
                                       "logprobs"), expected)
    assert lengths.tolist() == [(int(n[0]) - 1) // 8 + 1]  # what onnx-asr computes for a CTC model
    head = onnx.load(str(tmp_path / f"ctc_head-model{suffix}.onnx"))
    assert {n.op_type for n in head.graph.node} >= {"LogSoftmax"} and "LayerNormalization" not in {
        n.op_type for n in head.graph.node}
    join_ctc(tmp_path / f"encoder-model{suffix}.onnx", tmp_path / f"ctc_head-model{suffix}.onnx", tmp_path / "j.onnx")
    np.testing.assert_array_equal(_run(tmp_path / "j.onnx", {"audio_signal": x, "length": n}, "logprobs"), expected)


def _params(layout: str, demo_dir: Path = DEMO) -> ModelParams:
    return ModelParams(hf_repo="unused/repo", hf_revision="main", demo_dir=str(demo_dir), layout=layout)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A project root per layout with models/base built by the stage from the demo model."""
    found = {}
    for layout in ("rnnt", "ctc"):
        found[layout] = tmp_path_factory.mktemp(f"root_{layout}")
        build_base_model(_params(layout), is_demo=True, out_dir=found[layout] / "models" / "base")
    return found


def test_demo_ctc_through_the_pipeline_reads_as_onnx_asr_reads_the_single_graph(roots, upstream, speech,
                                                                               tmp_path) -> None:
    base = roots["ctc"] / "models" / "base"
    assert sorted(p.name for p in base.iterdir()) == sorted([
        "config.json", "vocab.txt", "nemo128.onnx", "encoder-model.onnx", "encoder-model.onnx.data",
        "encoder-model.int8.onnx", "ctc_head-model.onnx", "ctc_head-model.int8.onnx"])
    assemble_model_dir("fp32", "fp32", tmp_path / "fp32", roots["ctc"])
    ours = recognize_all(load_asr(tmp_path / "fp32"), [speech], {"greedy": None}).transcripts["greedy"][0]
    theirs = onnx_asr.load_model(None, upstream["ctc"], providers=["CPUExecutionProvider"]).with_timestamps()
    found = theirs.recognize(speech)
    assert ours.text and (ours.text, ours.tokens, ours.starts) == (found.text, list(found.tokens), found.timestamps)
    assemble_model_dir("fp32", "int8", tmp_path / "int8", roots["ctc"])  # the stock int8 head
    assert recognize_all(load_asr(tmp_path / "int8"), [speech], {"greedy": None}).transcripts["greedy"][0].text


def test_demo_rnnt_is_the_tdt_joint_without_durations(roots, speech, tmp_path) -> None:
    base = roots["rnnt"] / "models" / "base"
    decoder = onnx.load(str(base / "decoder_joint-model.onnx"))
    vocab = len((base / "vocab.txt").read_text(encoding="utf-8").splitlines())
    assert decoder.graph.output[0].type.tensor_type.shape.dim[-1].dim_value == vocab
    assemble_model_dir("fp32", "int8", tmp_path / "m", roots["rnnt"])
    asr = load_asr(tmp_path / "m")
    assert type(asr.asr).__name__ == "NemoConformerRnnt"
    assert recognize_all(asr, [speech], {"greedy": None}).transcripts["greedy"][0].tokens


def test_a_release_folder_joins_each_ctc_pair_into_what_onnx_asr_loads(roots, upstream, speech, tmp_path) -> None:
    base, release = roots["ctc"] / "models" / "base", tmp_path / "release"
    (release / "sharded").mkdir(parents=True)
    for name in ("config.json", "vocab.txt", "encoder-model.onnx", "encoder-model.onnx.data", "ctc_head-model.onnx",
                 "encoder-model.int8.onnx", "ctc_head-model.int8.onnx"):
        shutil.copyfile(base / name, release / name)
    for name in ("encoder-model.onnx", "encoder-model.onnx.data"):  # a subfolder reads the top-level fp32 head
        shutil.copyfile(base / name, release / "sharded" / name)
    from requant.model_card import layout_files

    assert not any("decoder_joint" in name or "encoder-model" in name for name, _ in layout_files("ctc"))
    sharded = join_release_pairs(release)
    assert sharded == release / "sharded" / "model.onnx"
    assert sorted(p.name for p in release.glob("*.onnx")) == ["model.int8.onnx", "model.onnx"]
    # the stock int8 pair, split by base_model and joined again: upstream's own single int8 graph
    shipped = onnx_asr.load_model(None, release, quantization="int8", providers=["CPUExecutionProvider"])
    stock = onnx_asr.load_model(None, upstream["ctc"], quantization="int8", providers=["CPUExecutionProvider"])
    assert shipped.recognize(speech) == stock.recognize(speech)
    x, n = features(speech)
    np.testing.assert_array_equal(_run(sharded, {"audio_signal": x, "length": n}, "logprobs"),
                                  _run(release / "model.onnx", {"audio_signal": x, "length": n}, "logprobs"))


def test_a_ctc_graph_without_nemo_s_encoder_end_is_refused_in_one_line(upstream, tmp_path) -> None:
    model = onnx.load(str(upstream["ctc"] / "model.int8.onnx"))
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            node.op_type, node.domain = "Identity", ""
            del node.input[1:], node.attribute[:]
    onnx.save_model(model, str(tmp_path / "model.onnx"))
    with pytest.raises(StageError, match="no Transpose after its last LayerNormalization"):
        split_ctc(tmp_path / "model.onnx", tmp_path / "out")


def test_a_layout_that_is_not_the_model_s_is_refused(tmp_path) -> None:
    build_base_model(_params("tdt"), is_demo=True, out_dir=tmp_path / "tdt")
    with pytest.raises(StageError, match=r"model_type is 'nemo-conformer-tdt', but model.layout 'rnnt'"):
        verify_model_dir(tmp_path / "tdt", None, "rnnt")
    folder = tmp_path / "demo_model"
    folder.mkdir()
    write_demo_layout(DEMO, "ctc", folder)
    (folder / "model.int8.onnx").unlink()
    (tmp_path / "out").mkdir()
    with pytest.raises(StageError, match="demo_model: missing model.int8.onnx; a ctc model"):
        to_pipeline_layout(folder, "ctc", tmp_path / "out")


def test_the_presets_set_each_layout_and_beam_search_only_for_tdt() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    layouts = {name: parse_params({**raw, "preset": name}).model.layout for name in raw["presets"]}
    assert layouts == {"demo": "tdt", "demo_rnnt": "rnnt", "demo_ctc": "ctc", "parakeet": "tdt",
                       "parakeet_v2": "tdt", "parakeet_rnnt": "rnnt", "parakeet_ctc": "ctc"}
    assert parse_params({**raw, "preset": "demo_ctc"}).shard.budget_mb == 4  # the demo's overrides are kept
    from requant.model_card import model_title, nvidia_model

    titles = {name: (model_title(p.model.hf_repo), nvidia_model(p.model.hf_repo))
              for name in ("parakeet", "parakeet_v2", "parakeet_rnnt", "parakeet_ctc")
              for p in [parse_params({**raw, "preset": name})]}
    assert titles == {"parakeet": ("Parakeet TDT 0.6B v3", "nvidia/parakeet-tdt-0.6b-v3"),
                      "parakeet_v2": ("Parakeet TDT 0.6B v2", "nvidia/parakeet-tdt-0.6b-v2"),
                      "parakeet_rnnt": ("Parakeet RNN-T 0.6B", "nvidia/parakeet-rnnt-0.6b"),
                      "parakeet_ctc": ("Parakeet CTC 0.6B", "nvidia/parakeet-ctc-0.6b")}
    assert set(BEAM_SEARCH) == set(LAYOUTS)
    raw["presets"]["demo_ctc"]["eval.decodings"] = ["greedy", "beam"]
    with pytest.raises(ParamsError, match="the beam search is TDT's and model.layout is 'ctc'"):
        parse_params({**raw, "preset": "demo_ctc"})


def test_a_ctc_repository_is_fetched_offline_and_split(upstream, tmp_path) -> None:
    """The download code for real against a local Hugging Face cache in the repository's layout: a CTC
    repository (no preprocessor file: onnx-asr's nemo128 is used), then a revision the cache does not hold."""
    from bench.rehearse import place_twin_in_hf_cache

    repo_files = tmp_path / "repo"
    shutil.copytree(upstream["ctc"], repo_files)
    place_twin_in_hf_cache(repo_files, tmp_path / "hf", "istupakov/parakeet-ctc-0.6b-onnx", "main")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    script = ("import sys; from pathlib import Path; from requant.common import run_cli; "
              "from requant.params import ModelParams; from stages.base_model import build_base_model; "
              "run_cli(lambda: build_base_model(ModelParams('istupakov/parakeet-ctc-0.6b-onnx', sys.argv[1], "
              "'unused', 'ctc'), False, Path(sys.argv[2])))")
    done = subprocess.run([sys.executable, "-c", script, "main", str(tmp_path / "base")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "revision main is not a commit" in done.stderr
    assert (tmp_path / "base" / "ctc_head-model.int8.onnx").is_file()
    wrong = subprocess.run([sys.executable, "-c", script, "0" * 40, str(tmp_path / "base2")], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert f"cannot download istupakov/parakeet-ctc-0.6b-onnx@{'0' * 40}" in wrong.stderr
    assert not (tmp_path / "base2").exists()


@pytest.mark.parametrize("layout", ["rnnt", "ctc"])
def test_a_twin_in_each_layout_goes_through_base_model_and_the_census(tmp_path, layout) -> None:
    """bench.twin --layout: the English 0.6B models' layout (80 mels, linear biases), small; base_model takes
    it as a repository, and the census finds nothing the transforms do not know in its encoder."""
    from bench.twin import ENGLISH_06B, build_twin
    from demo.fastconformer import PARAKEET
    from requant import onnx_graph as og
    from requant import patterns

    config = PARAKEET.replace(n_layers=2, d_model=64, n_heads=2, ff_dim=256, subsampling_channels=16,
                              pred_hidden=40, joint_hidden=40, **{**ENGLISH_06B, "vocab_size": 33})
    summary = build_twin(tmp_path / "twin", config, seed=0, stock_int8=False, layout=layout)
    assert summary["layout"] == layout and "nemo80.onnx" in summary["files"]
    base = tmp_path / "base"
    base.mkdir()
    to_pipeline_layout(tmp_path / "twin", layout, base)
    verify_model_dir(base, None, layout)
    encoder = og.load_graph(base / "encoder-model.onnx")
    assert patterns.findings(encoder) == []
    assert encoder.graph.input[0].type.tensor_type.shape.dim[1].dim_value in (0, 80)
    x = np.zeros((1, 80, 160), np.float32)
    outputs = _run(base / "encoder-model.onnx", {"audio_signal": x, "length": np.array([160])}, "outputs")
    assert outputs.shape == (1, 64, 20)
