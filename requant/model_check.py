"""A model folder in the pipeline's layout, checked: its file list per layout, config.json, vocab.txt, every graph's
I/O names and dtypes (what onnx-asr expects), external data whole and every float weight finite. Stage
base_model runs it on what it builds; the tests and the Ray cluster's nodes on theirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from requant import onnx_graph as og
from requant.common import fail, read_json, sha256_file
from requant.layouts import CTC_HEAD, CTC_OUTPUT, DECODER_JOINT, ENCODER, HEAD_INPUT, LAYOUTS

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
    encoder = folder / f"{ENCODER}.onnx"
    if features and encoder.is_file():  # the preprocessor follows config.json: it must make what the encoder takes
        try:
            dims = onnx.load(str(encoder), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        except Exception:  # noqa: BLE001 - a broken file: _check_io below names it
            dims = []
        mels = dims[1].dim_value if len(dims) > 1 else 0
        if mels and mels != features:
            fail(f"{folder / 'config.json'}: features_size is {features}, but {encoder.name} takes {mels} mel "
                 f"channels; set features_size to {mels}")
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
