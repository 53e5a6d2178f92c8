"""Encoder runs: onnxruntime sessions that read weights where they lie, the encoder's inputs for a
window of audio, outputs over many windows, their comparison, and the windows themselves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from requant.common import fail
from requant.features import features
from requant.onnx_graph import load_graph, write_model

ENCODER_INPUTS = ("audio_signal", "length")
ENCODER_OUTPUT = "outputs"
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def open_session(model: Path | onnx.ModelProto, weights_dir: Path | None = None,
                 arena: bool = True) -> ort.InferenceSession:
    """A CPU session from a path, or from an in-memory graph whose external weights lie in weights_dir
    (read there by onnxruntime: no copy of the weights is made). arena=False returns each run's memory
    to the system (for sessions kept open side by side)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    if isinstance(model, onnx.ModelProto):
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(Path(weights_dir or ".").resolve()))
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    load_graph(Path(model))  # a missing or truncated file: one line, not onnxruntime's traceback
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def probe(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are the given float tensors: a session over it captures them."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    del probed.graph.output[:]
    probed.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    return probed


def encoder_feed(session: ort.InferenceSession, audio: np.ndarray) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    if sorted(names) != sorted(ENCODER_INPUTS):
        fail(f"the model's inputs are {names}; expected {list(ENCODER_INPUTS)} (Parakeet's encoder layout)")
    signal, length = features(audio)
    return {"audio_signal": signal, "length": length}


def encoder_outputs(model: Path, windows: Sequence[np.ndarray], desc: str) -> list[np.ndarray]:
    """The encoder's `outputs` for each window (one session, released before returning)."""
    session = open_session(model)
    return [session.run([ENCODER_OUTPUT], encoder_feed(session, w))[0] for w in tqdm(windows, desc=desc, unit="win")]


def relative_error(reference: np.ndarray, value: np.ndarray) -> float:
    """||value - reference|| / ||reference|| in float64 over every element."""
    ref = np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(np.asarray(value, dtype=np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


def compare(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> dict[str, float]:
    """Cosine similarity and relative L2 error per window against the reference, summarised."""
    cosines, errors = [], []
    for ref, out in zip(reference, outputs, strict=True):
        if ref.shape != out.shape:
            fail(f"encoder output shape {out.shape} differs from the reference's {ref.shape}")
        for name, values in (("reference", ref), ("compared", out)):
            if not np.isfinite(values).all():
                fail(f"the {name} encoder's output holds NaN or infinite values: its weights or the graph are "
                     "broken; rebuild it (dvc repro) and check models/base")
        a, b = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        cosines.append(float(a @ b / norm) if norm else float(np.array_equal(a, b)))
        errors.append(relative_error(a, b))
    return {
        "cosine_min": round_sig(min(cosines)),
        "cosine_mean": round_sig(float(np.mean(cosines))),
        "rel_error_max": round_sig(max(errors)),
        "rel_error_mean": round_sig(float(np.mean(errors))),
    }


def round_sig(value: float, digits: int = 9) -> float:
    """Round to significant digits so that JSON figures read well and compare stably."""
    return float(f"{value:.{digits}g}")


# --- audio windows ------------------------------------------------------------------------------


class Windows(Sequence[np.ndarray]):
    """The 30 s windows of one split, read lazily from the memory-mapped windows.npy."""

    def __init__(self, windows_dir: Path, split: str, limit: int = 0) -> None:
        array_path, index_path = Path(windows_dir) / "windows.npy", Path(windows_dir) / "index.json"
        for path in (array_path, index_path):
            if not path.is_file():
                fail(f"{path} not found; run `dvc repro windows` first")
        self._array = np.load(array_path, mmap_mode="r")
        index = json.loads(index_path.read_text())
        if len(index) != len(self._array):
            fail(f"{index_path} lists {len(index)} windows but {array_path} holds {len(self._array)}; rerun windows")
        rows = [i for i, entry in enumerate(index) if entry.get("split") == split]
        if not rows:
            fail(f"{windows_dir} has no '{split}' windows; check the windows params (count, heldout_per_speaker)")
        if 0 < limit < len(rows):  # evenly spread, so every speaker stays represented
            rows = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, limit).round().astype(int))]
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[no-untyped-def,override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return np.asarray(self._array[self.rows[i]], dtype=np.float32)


def write_equivalent(model: onnx.ModelProto, src: Path, dst: Path, replace: dict, heldout: Sequence[np.ndarray],
                     max_rel_error: float, what: str) -> dict[str, float]:
    """Write a rewritten `model` of the encoder `src` to dst (weights streamed from src's folder, `replace`d
    where given) and check that it computes what src computes on the held-out windows; fail, naming `what`,
    when the outputs differ by more than max_rel_error (relative). Returns the comparison."""
    reference = encoder_outputs(src, heldout, "source heldout")
    if not all(np.isfinite(r).all() for r in reference):
        fail(f"{src} gives NaN or infinite outputs on the held-out windows: its weights are corrupt; rebuild it "
             "(dvc repro; models/base from a good download)")
    write_model(model, src.parent, dst, replace=replace)
    check = compare(reference, encoder_outputs(dst, heldout, f"{what} heldout"))
    if not check["rel_error_max"] <= max_rel_error:  # written so that NaN fails too
        fail(f"the {what} encoder differs from its source by {check['rel_error_max']:.3g} (relative) on held-out "
             f"windows, above {max_rel_error:g}: the graph rewrite is wrong; nothing written")
    return check

