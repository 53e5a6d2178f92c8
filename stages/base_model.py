"""Stage `base_model`: the model to re-quantize, checked, in the pipeline's layout -> models/base/.

parakeet presets: the model.hf_repo at the pinned revision from Hugging Face (sha256 of every file checked
when the revision is one pinned below). demo presets: the tiny model in model.demo_dir, in the layout the
preset names (demo/layouts.py derives RNN-T and CTC from it). The preprocessor (nemo80/nemo128.onnx) is the
repository's when it ships one, else the installed onnx-asr package's (never a committed copy).
model.layout (requant/layouts.py): a TDT or RNN-T model is copied as it is; a CTC model's single graph is
split where its encoder ends, into encoder-model*.onnx and ctc_head-model*.onnx, so that every transform
sees one encoder whatever the layout. The folder must hold exactly that file list, with the tensor names
and dtypes onnx-asr expects.
"""

from __future__ import annotations

import logging
import re
import shutil
from importlib.resources import files as package_files
from pathlib import Path

import numpy as np
import onnx

from demo.layouts import write_demo_layout
from requant import onnx_graph as og
from requant import patterns
from requant.common import StageError, atomic_path, fail, read_json, run_cli, sha256_file
from requant.layouts import CTC_HEAD, CTC_MODEL, CTC_OUTPUT, DECODER_JOINT, ENCODER, HEAD_INPUT, LAYOUTS, split_ctc
from requant.params import ModelParams, load_params

log = logging.getLogger("pipeline.base_model")
OUT_DIR = Path("models/base")
F32, I32, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.INT64
FLOAT_TYPES = (F32, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
FEATURE_SIZES = (80, 128)  # onnx-asr's nemo80 and nemo128 preprocessors
# file stem -> (inputs, outputs) as {name: dtype}; dtype None = any
ENCODER_IO = ({"audio_signal": F32, "length": I64}, {"outputs": F32, "encoded_lengths": I64})
DECODER_IO = (
    {"encoder_outputs": F32, "targets": I32, "target_length": I32, "input_states_1": F32, "input_states_2": F32},
    {"outputs": F32, "prednet_lengths": None, "output_states_1": F32, "output_states_2": F32},
)
GRAPH_IO = {ENCODER: ENCODER_IO, DECODER_JOINT: DECODER_IO, CTC_HEAD: ({HEAD_INPUT: F32}, {CTC_OUTPUT: F32}),
            "nemo": ({"waveforms": F32, "waveforms_lens": I64}, {"features": F32, "features_lens": I64})}
# sha256 of the upstream files at the revisions params.yaml pins (each cross-checked against several
# independent pins of the same commit, and config.json against its known content).
_SHARED = {  # the v2 and v3 repositories hold the same config and preprocessor
    "config.json": "666903c76b9798caf2c210afd4f6cd60b08a8dbf9800ec8d7a3bc0d2148ac466",
    "nemo128.onnx": "a9fde1486ebfcc08f328d75ad4610c67835fea58c73ba57e3209a6f6cf019e9f",
}
PINNED_SHA256 = {
    "8f23f0c03c8761650bdb5b40aaf3e40d2c15f1ce": {  # istupakov/parakeet-tdt-0.6b-v3-onnx
        **_SHARED,
        "vocab.txt": "d58544679ea4bc6ac563d1f545eb7d474bd6cfa467f0a6e2c1dc1c7d37e3c35d",
        "encoder-model.onnx": "98a74b21b4cc0017c1e7030319a4a96f4a9506e50f0708f3a516d02a77c96bb1",
        "encoder-model.onnx.data": "9a22d372c51455c34f13405da2520baefb7125bd16981397561423ed32d24f36",
        "encoder-model.int8.onnx": "6139d2fa7e1b086097b277c7149725edbab89cc7c7ae64b23c741be4055aff09",
        "decoder_joint-model.onnx": "e978ddf6688527182c10fde2eb4b83068421648985ef23f7a86be732be8706c1",
        "decoder_joint-model.int8.onnx": "eea7483ee3d1a30375daedc8ed83e3960c91b098812127a0d99d1c8977667a70",
    },
    "0bbb45a3365852604aef28b538a8f066f4ccaa85": {  # istupakov/parakeet-tdt-0.6b-v2-onnx
        **_SHARED,
        "vocab.txt": "ec182b70dd42113aff6c5372c75cac58c952443eb22322f57bbd7f53977d497d",
        "encoder-model.onnx": "3987bcd28175d829d12888a996a84e8f62a0e374d9ffd640662c1515adc679d3",
        "encoder-model.onnx.data": "4dab7362d4874d85965045b1e41b2d61dd2cc0fb25671a7f6b3dc47bf120cc41",
        "encoder-model.int8.onnx": "3e0581fda6ab843888b51e56d7ee78b6d5bc3237ec113af1f732d1d5286aa155",
        "decoder_joint-model.onnx": "cbb52a07bd70ab5b67f8439d4b3cd8704b18467b4430bcacb5adabe154b8d191",
        "decoder_joint-model.int8.onnx": "a449f49acd68979d418651dd2dcb737cc0f1bf0225e009e29ee326354edbf7d3",
    },
}
COMMIT = re.compile(r"[0-9a-f]{40}")


def model_files(layout: str, features: int = 128) -> tuple[str, ...]:
    """The files of models/base for a layout, in the pipeline's layout (a CTC graph split in two)."""
    decoder = LAYOUTS[layout].decoder
    return ("config.json", "vocab.txt", f"nemo{features}.onnx", f"{ENCODER}.onnx", f"{ENCODER}.onnx.data",
            f"{ENCODER}.int8.onnx", f"{decoder}.onnx", f"{decoder}.int8.onnx")


MODEL_FILES = model_files("tdt")


def verify_model_dir(folder: Path, pinned: dict[str, str] | None = None, layout: str = "tdt") -> None:
    """Check the file list, config.json, vocab.txt, every graph's I/O and (if given) sha256 sums."""
    try:
        config = read_json(folder / "config.json")
    except FileNotFoundError:
        config = None
    except (ValueError, UnicodeDecodeError) as err:
        fail(f"{folder / 'config.json'}: not valid JSON ({err}); restore the file (upstream's is a JSON object "
             "with model_type, features_size and subsampling_factor)")
    features = config.get("features_size") if isinstance(config, dict) else None
    if config is not None and features not in FEATURE_SIZES:
        fail(f"{folder / 'config.json'}: features_size is {features!r}, expected 80 (nemo80) or 128 (nemo128)")
    expected = model_files(layout, features or 128)
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        fail(f"model folder {folder}: missing {', '.join(missing)}; it needs {', '.join(expected)}")
    if config.get("model_type") != LAYOUTS[layout].model_type:
        fail(f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, but model.layout '{layout}' "
             f"is {LAYOUTS[layout].model_type!r}; set model.layout to the model's own")
    _check_vocab(folder / "vocab.txt")
    for name in expected:
        stem = name.split(".")[0].rstrip("0123456789")
        if name.endswith(".onnx") and stem in GRAPH_IO:
            _check_io(folder / name, *GRAPH_IO[stem])
    for name in (f"{ENCODER}.onnx", f"{LAYOUTS[layout].decoder}.onnx"):
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


def package_preprocessor(features: int) -> Path:
    return Path(str(package_files("onnx_asr.preprocessors") / "data" / f"nemo{features}.onnx"))


def demo_model(demo_dir: Path, out: Path) -> None:
    """The TDT demo model's files (and onnx-asr's nemo128.onnx) into out."""
    for name in MODEL_FILES:
        source = package_preprocessor(128) if name == "nemo128.onnx" else demo_dir / name
        if not source.is_file():
            fail(f"demo model folder {demo_dir}: missing {name}; build the demo model (see demo/train.py)")
        shutil.copyfile(source, out / name)


def download(model: ModelParams) -> Path:
    """The repository's files at the revision, through the Hugging Face cache; the snapshot folder."""
    from huggingface_hub import snapshot_download

    patterns_ = ["config.json", "vocab.txt", "nemo*.onnx", *LAYOUTS[model.layout].upstream]
    try:
        return Path(snapshot_download(model.hf_repo, revision=model.hf_revision, allow_patterns=patterns_))
    except Exception as err:  # noqa: BLE001 - hub, HTTP and offline errors all end here
        fail(f"cannot download {model.hf_repo}@{model.hf_revision} from Hugging Face "
             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
             "check the network and model.hf_repo/hf_revision, or use a demo preset")
    raise AssertionError  # fail() raised


def to_pipeline_layout(upstream: Path, layout: str, out: Path) -> None:
    """Upstream files -> out: copied (a copy, not a hard link: onnx refuses external data with several
    links), a CTC graph split; the preprocessor from the package when the repository ships none."""
    missing = [name for name in ("config.json", "vocab.txt", *LAYOUTS[layout].upstream)
               if not (upstream / name).is_file()]
    if missing:
        fail(f"model folder {upstream}: missing {', '.join(missing)}; a {layout} model "
             f"({LAYOUTS[layout].model_type}) needs {', '.join(('config.json', 'vocab.txt', *LAYOUTS[layout].upstream))}")
    try:
        features = read_json(upstream / "config.json").get("features_size")
    except (ValueError, UnicodeDecodeError, AttributeError):
        features = None  # verify_model_dir names the fault
    for name in ("config.json", "vocab.txt"):
        shutil.copyfile(upstream / name, out / name)
    if features in FEATURE_SIZES:
        preprocessor = upstream / f"nemo{features}.onnx"
        shutil.copyfile(preprocessor if preprocessor.is_file() else package_preprocessor(features),
                        out / preprocessor.name)
    if layout == "ctc":
        boundary = split_ctc(upstream / f"{CTC_MODEL}.onnx", out)
        split_ctc(upstream / f"{CTC_MODEL}.int8.onnx", out, ".int8", boundary)
    else:
        for name in LAYOUTS[layout].upstream:
            shutil.copyfile(upstream / name, out / name)


def build_base_model(params_model: ModelParams, is_demo: bool, out_dir: Path = OUT_DIR) -> None:
    layout = params_model.layout
    source = Path(params_model.demo_dir)  # what errors name: the user's folder, or the HF snapshot
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        pinned = None
        if is_demo and layout == "tdt":
            demo_model(source, tmp)
        elif is_demo:
            upstream = tmp / ".upstream"
            upstream.mkdir()
            write_demo_layout(source, layout, upstream)
            to_pipeline_layout(upstream, layout, tmp)
            shutil.rmtree(upstream)
        else:
            source = download(params_model)
            pinned = PINNED_SHA256.get(params_model.hf_revision)
            if pinned is None:
                what = "is not a commit (a branch or tag: the files can change under it)" \
                    if not COMMIT.fullmatch(params_model.hf_revision) else "is not pinned here"
                log.warning("revision %s %s: sha256 sums are not checked", params_model.hf_revision, what)
            for name, digest in (pinned or {}).items():  # the upstream files, before any split
                if sha256_file(source / name) != digest:
                    fail(f"{source / name}: sha256 differs from the pinned upstream file; delete it and download again")
            to_pipeline_layout(source, layout, tmp)
        try:
            verify_model_dir(tmp, None, layout)
        except StageError as err:  # name the file the user has to act on, not our copy of it
            raise StageError(str(err).replace(str(tmp), str(source))) from None
        # the census's findings, in its words: stop here rather than deep inside onnxruntime later
        problems = patterns.findings(og.load_graph(tmp / "encoder-model.onnx"))
        if problems:
            fail(f"{source / 'encoder-model.onnx'}: {'; '.join(problems)}; "
                 "`python -m tools.census <encoder.onnx>` prints the full census")
    log.info("base model ready in %s (%s layout)", out_dir, layout)


def main() -> None:
    params = load_params()
    build_base_model(params.model, params.is_demo)


if __name__ == "__main__":
    run_cli(main)
