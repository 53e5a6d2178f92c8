"""Stage `base_model`: the model to re-quantize, in the upstream layout, checked -> models/base/.

parakeet preset: istupakov/parakeet-tdt-0.6b-v3-onnx from Hugging Face at the pinned revision
(sha256 of every file checked when the revision is the one pinned below). demo preset: the tiny
model in model.demo_dir, with nemo128.onnx taken from the installed onnx-asr package (never a
committed copy). Either way the folder must hold exactly the upstream file list, with the tensor
names and dtypes onnx-asr expects.
"""

from __future__ import annotations

import logging
import shutil
from importlib.resources import files as package_files
from pathlib import Path

import numpy as np
import onnx

from requant import onnx_graph as og
from requant import patterns
from requant.common import StageError, atomic_path, fail, read_json, run_cli, sha256_file
from requant.params import ModelParams, load_params

log = logging.getLogger("pipeline.base_model")
OUT_DIR = Path("models/base")
MODEL_FILES = (
    "config.json", "vocab.txt", "nemo128.onnx", "encoder-model.onnx", "encoder-model.onnx.data",
    "encoder-model.int8.onnx", "decoder_joint-model.onnx", "decoder_joint-model.int8.onnx",
)
F32, I32, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.INT64
FLOAT_TYPES = (F32, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
# file -> (inputs, outputs) as {name: dtype}; dtype None = any
ENCODER_IO = ({"audio_signal": F32, "length": I64}, {"outputs": F32, "encoded_lengths": I64})
DECODER_IO = (
    {"encoder_outputs": F32, "targets": I32, "target_length": I32, "input_states_1": F32, "input_states_2": F32},
    {"outputs": F32, "prednet_lengths": None, "output_states_1": F32, "output_states_2": F32},
)
EXPECTED_IO = {
    "nemo128.onnx": ({"waveforms": F32, "waveforms_lens": I64}, {"features": F32, "features_lens": I64}),
    "encoder-model.onnx": ENCODER_IO,
    "encoder-model.int8.onnx": ENCODER_IO,
    "decoder_joint-model.onnx": DECODER_IO,
    "decoder_joint-model.int8.onnx": DECODER_IO,
}
# sha256 of the upstream files at the revision params.yaml pins (cross-checked against several
# independent pins of the same commit, and config.json against its known content).
PINNED_SHA256 = {
    "8f23f0c03c8761650bdb5b40aaf3e40d2c15f1ce": {
        "config.json": "666903c76b9798caf2c210afd4f6cd60b08a8dbf9800ec8d7a3bc0d2148ac466",
        "vocab.txt": "d58544679ea4bc6ac563d1f545eb7d474bd6cfa467f0a6e2c1dc1c7d37e3c35d",
        "nemo128.onnx": "a9fde1486ebfcc08f328d75ad4610c67835fea58c73ba57e3209a6f6cf019e9f",
        "encoder-model.onnx": "98a74b21b4cc0017c1e7030319a4a96f4a9506e50f0708f3a516d02a77c96bb1",
        "encoder-model.onnx.data": "9a22d372c51455c34f13405da2520baefb7125bd16981397561423ed32d24f36",
        "encoder-model.int8.onnx": "6139d2fa7e1b086097b277c7149725edbab89cc7c7ae64b23c741be4055aff09",
        "decoder_joint-model.onnx": "e978ddf6688527182c10fde2eb4b83068421648985ef23f7a86be732be8706c1",
        "decoder_joint-model.int8.onnx": "eea7483ee3d1a30375daedc8ed83e3960c91b098812127a0d99d1c8977667a70",
    }
}


def verify_model_dir(folder: Path, pinned: dict[str, str] | None = None) -> None:
    """Check the file list, config.json, vocab.txt, every graph's I/O and (if given) sha256 sums."""
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        fail(f"model folder {folder}: missing {', '.join(missing)}; it needs {', '.join(MODEL_FILES)}")
    try:
        config = read_json(folder / "config.json")
    except (ValueError, UnicodeDecodeError) as err:
        fail(f"{folder / 'config.json'}: not valid JSON ({err}); restore the file (upstream's is a JSON object "
             "with model_type, features_size and subsampling_factor)")
    features = config.get("features_size") if isinstance(config, dict) else None
    if features != 128:
        fail(f"{folder / 'config.json'}: features_size is {features!r}, expected 128 (nemo128)")
    _check_vocab(folder / "vocab.txt")
    for name, (inputs, outputs) in EXPECTED_IO.items():
        _check_io(folder / name, inputs, outputs)
    for name in ("encoder-model.onnx", "decoder_joint-model.onnx"):
        check_weights(folder / name)
    for name, digest in (pinned or {}).items():
        if sha256_file(folder / name) != digest:
            fail(f"{folder / name}: sha256 differs from the pinned upstream file; delete it and download again")


def _check_vocab(path: Path) -> None:
    ids = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        token, _, index = line.rpartition(" ")
        if not token or not index.isdigit():
            fail(f"{path}:{number}: expected '<token> <id>', found {line!r}")
        ids[token] = int(index)
    if sorted(ids.values()) != list(range(len(ids))):
        fail(f"{path}: token ids are not 0..{len(ids) - 1} without gaps")
    if ids.get("<blk>") != len(ids) - 1:
        fail(f"{path}: '<blk>' must have the last id ({len(ids) - 1}); found {ids.get('<blk>')}")


def _check_io(path: Path, inputs: dict[str, int | None], outputs: dict[str, int | None]) -> None:
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # noqa: BLE001 - any parse failure means a broken file
        fail(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})")
    for kind, found, expected in (("input", graph.input, inputs), ("output", graph.output, outputs)):
        types = {value.name: value.type.tensor_type.elem_type for value in found}
        if set(types) != set(expected):
            fail(f"{path}: {kind}s are {sorted(types)}, expected {sorted(expected)}")
        for name, dtype in expected.items():
            if dtype is not None and types[name] != dtype:
                fail(f"{path}: {kind} '{name}' is {onnx.TensorProto.DataType.Name(types[name])}, "
                     f"expected {onnx.TensorProto.DataType.Name(dtype)}")
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next(entry.value for entry in tensor.external_data if entry.key == "location")
            if not (path.parent / location).is_file():
                fail(f"{path}: weight '{tensor.name}' lives in '{location}', which is missing")


def check_weights(path: Path) -> None:
    """Every external-data file holds exactly the bytes its tensors claim, and every float weight is
    finite: a truncated or corrupted download fails here, not later inside onnxruntime or as a NaN
    metric. Streamed one tensor at a time (2.4 GB at disk speed)."""
    model = og.load_graph(path)  # lengths checked there
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_TYPES:
            values = og.read_tensor(tensor, path.parent)
            if not np.isfinite(values).all():
                bad = int(values.size - np.isfinite(values).sum())
                fail(f"{path}: weight '{tensor.name}' holds {bad} NaN or infinite values: the file is "
                     "corrupt; download it again")


def demo_model(demo_dir: Path, out: Path) -> None:
    for name in MODEL_FILES:
        if name == "nemo128.onnx":
            source = Path(str(package_files("onnx_asr.preprocessors") / "data" / "nemo128.onnx"))
        else:
            source = demo_dir / name
        if not source.is_file():
            fail(f"demo model folder {demo_dir}: missing {name}; build the demo model (see demo/train.py)")
        shutil.copyfile(source, out / name)


def parakeet_model(model: ModelParams, out: Path) -> Path:
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(model.hf_repo, revision=model.hf_revision, allow_patterns=list(MODEL_FILES)))
    except Exception as err:  # noqa: BLE001 - hub, HTTP and offline errors all end here
        fail(f"cannot download {model.hf_repo}@{model.hf_revision} from Hugging Face "
             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
             "check the network and model.hf_repo/hf_revision, or use the demo preset")
    for name in MODEL_FILES:
        if (snapshot / name).is_file():
            # a copy, not a hard link: onnx refuses external data files with several hard links
            shutil.copyfile(snapshot / name, out / name)
    return snapshot


def build_base_model(params_model: ModelParams, is_demo: bool, out_dir: Path = OUT_DIR) -> None:
    source = Path(params_model.demo_dir)  # what errors name: the user's folder, or the HF snapshot
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if is_demo:
            demo_model(Path(params_model.demo_dir), tmp)
            pinned = None
        else:
            source = parakeet_model(params_model, tmp)
            pinned = PINNED_SHA256.get(params_model.hf_revision)
            if pinned is None:
                log.warning("revision %s is not pinned here: sha256 sums are not checked", params_model.hf_revision)
        try:
            verify_model_dir(tmp, pinned)
        except StageError as err:  # name the file the user has to act on, not our copy of it
            raise StageError(str(err).replace(str(tmp), str(source))) from None
        # the census's findings, in its words: stop here rather than deep inside onnxruntime later
        problems = patterns.findings(og.load_graph(tmp / "encoder-model.onnx"))
        if problems:
            fail(f"{source / 'encoder-model.onnx'}: {'; '.join(problems)}; "
                 "`python -m tools.census <encoder.onnx>` prints the full census")
    log.info("base model ready in %s", out_dir)


def main() -> None:
    params = load_params()
    build_base_model(params.model, params.is_demo)


if __name__ == "__main__":
    run_cli(main)
