"""Bad audio and bad model files: one line naming the file the user must fix, nothing kept, and the
same stage completes once the input is fixed."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf

from requant.audio import decode_audio
from tests.audio_helpers import make_silence, make_tone
from tests.faults.helpers import error_line, make_project, nothing_under, read_params, run_stage, succeeds, \
    write_params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("inputs") / "repo")
    shutil.copytree(root / "demo" / "model", root / "good_model")
    return root


@pytest.fixture
def clean(project: Path) -> Path:
    good = read_params(project)
    for folder in ("data", "models"):
        shutil.rmtree(project / folder, ignore_errors=True)
    for path in (project / "calibration_audio").iterdir():
        path.unlink() if not path.is_dir() or path.is_symlink() else shutil.rmtree(path)
    yield project
    write_params(project, good)
    shutil.rmtree(project / "demo" / "model")
    shutil.copytree(project / "good_model", project / "demo" / "model")


# --- audio ------------------------------------------------------------------------------------------------

def _local_speech_case(root: Path, make, words: list[str]) -> None:
    """calibration_audio/veil.<ext> made by `make`: fetch fails naming it, then works without it."""
    path = make(root / "calibration_audio")
    result = run_stage(root, "fetch", "speech", "veil")
    line = error_line(result, str(path.relative_to(root)), *words)
    assert ".tmp-" not in line
    nothing_under(root / "data" / "raw" / "veil")
    path.unlink() if not path.is_dir() or path.is_symlink() else shutil.rmtree(path)
    succeeds(run_stage(root, "fetch", "speech", "veil"))


def test_broken_symlink_is_not_ignored(clean: Path) -> None:
    def make(folder: Path) -> Path:
        (folder / "veil.wav").symlink_to("/nowhere/veil.wav")
        return folder / "veil.wav"
    _local_speech_case(clean, make, ["a broken symbolic link", "/nowhere/veil.wav"])


def test_a_folder_in_place_of_the_file(clean: Path) -> None:
    def make(folder: Path) -> Path:
        (folder / "veil.wav").mkdir()
        return folder / "veil.wav"
    _local_speech_case(clean, make, ["not a regular file"])


@pytest.mark.parametrize(("content", "words"), [(b"", ["cannot be decoded"]),
                                                 (b"this is a text file, not audio\n" * 40, ["cannot be decoded"]),
                                                 (b"RIFF\x00\x00\x00\x00WAVEfmt ", ["cannot be decoded"])],
                         ids=["empty", "text", "header-only"])
def test_a_file_that_is_not_audio(clean: Path, content: bytes, words: list[str]) -> None:
    def make(folder: Path) -> Path:
        (folder / "veil.wav").write_bytes(content)
        return folder / "veil.wav"
    _local_speech_case(clean, make, words)


def test_silent_audio(clean: Path) -> None:
    _local_speech_case(clean, lambda folder: make_silence(folder / "veil.flac", 4.0), ["silent"])


def test_audio_shorter_than_the_crop(clean: Path) -> None:
    _local_speech_case(clean, lambda folder: make_tone(folder / "veil.ogg", 1.0), ["holds 1.00 s", "[0.0, 3.0)"])


def test_several_files_for_one_speech(clean: Path) -> None:
    make_tone(clean / "calibration_audio" / "veil.ogg", 4.0)
    make_tone(clean / "calibration_audio" / "veil.flac", 4.0)
    result = run_stage(clean, "fetch", "speech", "veil")
    error_line(result, "several files match in calibration_audio (veil.flac, veil.ogg); keep one")
    nothing_under(clean / "data" / "raw" / "veil")
    (clean / "calibration_audio" / "veil.ogg").unlink()
    succeeds(run_stage(clean, "fetch", "speech", "veil"))


@pytest.mark.parametrize(("source", "words"), [("ftp://example.org/talk.mp3", ["unsupported scheme"]),
                                               ("/nowhere/talk.wav", ["neither youtube:<id>"]),
                                               ("youtube:short", ["is not a YouTube id"])],
                         ids=["ftp", "missing-path", "bad-youtube-id"])
def test_bad_sources_are_named_verbatim(clean: Path, source: str, words: list[str]) -> None:
    write_params(clean, read_params(clean), **{"speeches.veil.source": source})
    result = run_stage(clean, "fetch", "speech", "veil")
    error_line(result, f"'{source}'", *words)
    nothing_under(clean / "data" / "raw" / "veil")


def test_missing_eval_transcript(clean: Path) -> None:
    write_params(clean, read_params(clean), **{"eval_clips.jfk.transcript": "notes/jfk.txt"})
    error_line(run_stage(clean, "fetch", "eval", "jfk"), "eval_clips.jfk.transcript 'notes/jfk.txt' does not exist")
    nothing_under(clean / "data" / "raw" / "eval" / "jfk")


def test_decode_before_fetch(clean: Path) -> None:
    error_line(run_stage(clean, "decode", "veil"), "data/raw/veil/provenance.json is missing", "fetch stage first")
    nothing_under(clean / "data" / "audio" / "veil.wav")


def test_a_late_crop_keeps_only_the_crop_in_memory(tmp_path: Path) -> None:
    """10 s at 1000 s into a 17-minute file: decoding holds the crop, not the 16 minutes before it."""
    rate, seconds = 8000, 1030
    noise = (0.1 * np.random.default_rng(0).standard_normal(rate * seconds)).astype(np.float32)
    sf.write(tmp_path / "long.wav", noise, rate, subtype="PCM_16")
    whole_mb = rate * 1000 * 4 / 1e6  # the float32 samples before the crop: 32 MB
    tracemalloc.start()
    audio = decode_audio(tmp_path / "long.wav", 16000, start_s=1000.0, duration_s=10.0)
    peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    assert len(audio) == 160000
    np.testing.assert_allclose(decode_audio(tmp_path / "long.wav", 8000, 1000.0, 10.0)[:80000],
                               noise[8_000_000:8_080_000], atol=1e-4)
    assert peak_mb < whole_mb / 4, peak_mb


# --- model files ------------------------------------------------------------------------------------------

def _model_case(root: Path, words: list[str]) -> None:
    result = run_stage(root, "base_model")
    line = error_line(result, "demo/model", *words)
    assert ".tmp-" not in line and "models/base" not in line
    nothing_under(root / "models" / "base")
    shutil.rmtree(root / "demo" / "model")
    shutil.copytree(root / "good_model", root / "demo" / "model")
    succeeds(run_stage(root, "base_model"))


def test_random_bytes_in_the_weights(clean: Path) -> None:
    data = clean / "demo" / "model" / "encoder-model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 4096] = b"\xff" * 4096  # 0xffffffff is a float32 NaN
    data.write_bytes(bytes(raw))
    _model_case(clean, ["encoder-model.onnx: weight", "NaN or infinite", "download it again"])


def test_truncated_weights(clean: Path) -> None:
    data = clean / "demo" / "model" / "encoder-model.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    _model_case(clean, ["encoder-model.onnx.data: holds 1000 bytes", "truncated"])


@pytest.mark.parametrize(("name", "content", "words"), [
    ("config.json", "{features_size: 128", ["config.json: not valid JSON"]),
    ("config.json", json.dumps({"model_type": "nemo-conformer-tdt", "features_size": 80}), ["features_size is 80"]),
    ("vocab.txt", "a 0\nb 1\n", ["vocab.txt", "'<blk>' must have the last id"]),
], ids=["config-not-json", "config-80-mels", "vocab-without-blank"])
def test_bad_small_files(clean: Path, name: str, content: str, words: list[str]) -> None:
    (clean / "demo" / "model" / name).write_text(content)
    _model_case(clean, words)


def test_missing_decoder(clean: Path) -> None:
    (clean / "demo" / "model" / "decoder_joint-model.onnx").unlink()
    _model_case(clean, ["missing decoder_joint-model.onnx"])


def test_an_encoder_pattern_the_census_does_not_know(clean: Path) -> None:
    path = clean / "demo" / "model" / "encoder-model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    model.graph.node.insert(len(model.graph.node) - 2, onnx.helper.make_node(
        "Erf", ["/pre_encode/out/MatMul_output_0"], ["odd"], name="/odd/Erf"))
    path.write_bytes(model.SerializeToString())
    _model_case(clean, ["encoder-model.onnx: op types the pipeline has never been tested on: Erf"])


# --- a stage run alone before the stage that produces its input ---------------------------------------------

@pytest.fixture(scope="module")
def data_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project where the data stages and base_model have run, and no encoder variant exists yet."""
    root = make_project(tmp_path_factory.mktemp("alone") / "repo", **{"diagnose.lengths_s": [2.0]})
    params = read_params(root)
    for kind, names in (("speech", params["speeches"]), ("eval", params["eval_clips"])):
        for name in names:
            succeeds(run_stage(root, "fetch", kind, name))
            succeeds(run_stage(root, "decode", *(["eval"] if kind == "eval" else []), name))
    for stage in ("windows", "base_model", "corpus"):
        succeeds(run_stage(root, stage))
    return root


ALONE = [  # (stage and arguments, remove models/base too, what its line must name)
    (["pointwise"], True, "models/base"), (["smoothquant"], False, "models/pointwise"),
    (["int8_dynamic"], True, "models/base"), (["fp16"], True, "models/base"),
    (["shard"], True, "models/base"), (["nbits", "w4"], False, "models/pointwise"),
    (["reference", "jfk"], True, "models/base"), (["int8"], False, "models/smoothed"),
    (["int8_compare", "matmul_only"], False, "models/smoothed"), (["diagnose"], False, "models/smoothed"),
    (["int8_mixed"], False, "metrics/diagnosis.json"), (["blockwise"], False, "models/variants"),
    (["fidelity"], False, "models/"), (["evaluate", "int8_smoothquant"], False, "models/"),
    (["package"], False, "models/"), (["longform_data"], True, "models/base"), (["longform"], False, "data/longform"),
]


@pytest.mark.parametrize(("command", "without_base", "names"), ALONE, ids=[" ".join(c) for c, _, _ in ALONE])
def test_a_stage_whose_input_is_missing_says_which(data_built: Path, command: list[str], without_base: bool,
                                                   names: str) -> None:
    """`dvc repro -s <stage>` with the model it reads never built: one line naming it and what to run,
    not onnxruntime's NoSuchFile traceback."""
    base, aside = data_built / "models" / "base", data_built / "base-aside"
    if without_base:
        base.rename(aside)
    try:
        line = error_line(run_stage(data_built, *command), names)
    finally:
        if without_base:
            aside.rename(base)
    assert "run" in line, line


def test_a_truncated_intermediate_model_is_named(data_built: Path) -> None:
    """models/base/encoder-model.onnx.data cut short (a full disk, a killed copy): the first stage that reads it
    names the file instead of ending in onnxruntime's 'out of bounds' traceback."""
    data = data_built / "models" / "base" / "encoder-model.onnx.data"
    whole = data.read_bytes()
    data.write_bytes(whole[: len(whole) // 2])
    try:
        error_line(run_stage(data_built, "pointwise"), "models/base/encoder-model.onnx.data", "truncated")
    finally:
        data.write_bytes(whole)
    nothing_under(data_built / "models" / "pointwise")


def test_a_speech_key_with_a_space_is_named(clean: Path) -> None:
    """`de gaulle:` in speeches: DVC's foreach hands the stage two words; the params check names the key
    instead of argparse's 'unrecognized arguments: gaulle'."""
    params = read_params(clean)
    params["speeches"]["de gaulle"] = params["speeches"].pop("veil")
    write_params(clean, params)
    for command in (["fetch", "speech", "de", "gaulle"], ["decode", "de", "gaulle"]):
        error_line(run_stage(clean, *command), "speeches", "de gaulle", "rename")
