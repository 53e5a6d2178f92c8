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
from collections.abc import Callable
from importlib.resources import files as package_files
from pathlib import Path

from demo.layouts import write_demo_layout
from requant import onnx_graph as og
from requant import patterns
from requant.common import StageError, atomic_path, fail, link_or_copy, read_json, run_cli, sha256_file
from requant.layouts import CTC_MODEL, LAYOUTS, split_ctc
from requant.model_check import FEATURE_SIZES, verify_model_dir
from requant.params import ModelParams, load_params

log = logging.getLogger("pipeline.base_model")
OUT_DIR = Path("models/base")
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


def package_preprocessor(features: int) -> Path:
    return Path(str(package_files("onnx_asr.preprocessors") / "data" / f"nemo{features}.onnx"))


def demo_model(demo_dir: Path, out: Path) -> None:
    """The TDT demo model's files, and onnx-asr's preprocessor for its features_size, into out."""
    to_pipeline_layout(demo_dir, "tdt", out)


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


def to_pipeline_layout(upstream: Path, layout: str, out: Path,
                       place: Callable[[Path, Path], None] = shutil.copyfile) -> None:
    """Upstream files -> out: the model files placed (copied, or from the Hugging Face cache linked: its
    blobs are never rewritten, and a 2.5 GB encoder is then stored once), a CTC graph split; the small
    files copied, the preprocessor from the package when the repository ships none."""
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
            place(upstream / name, out / name)


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
            to_pipeline_layout(source, layout, tmp, place=link_or_copy)
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
