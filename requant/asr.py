"""Speech recognition through onnx-asr: per-variant model folders, and one long pass with timestamps."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_asr
import onnxruntime as ort
import soundfile as sf
from onnx_asr.adapters import TimestampedResultsAsrAdapter
from onnx_asr.asr import Preprocessor
from onnx_asr.loader import Manager
from onnx_asr.models.nemo import NemoConformerCtc
from onnx_asr.onnx import OnnxSessionOptions
from onnx_asr.preprocessors.numpy_preprocessor import NemoPreprocessorNumpy
from onnx_asr.utils import read_wav_files

from requant.beam import BeamParams, JointFn, beam_search

from requant.common import fail, sha256_file
from requant.features import SAMPLE_RATE, BlockedPreprocessor
from requant.layouts import CTC_OUTPUT, HEAD_INPUT, decoder_name, layout_of
from requant.onnx_graph import load_graph
from requant.variants import BASE_DIR, BUILT_ON_REQUEST, DECODERS, VARIANTS, ModelFile


# --- Variants and speech recognition through onnx-asr -------------------------------------------

VOCAB, CONFIG = "vocab.txt", "config.json"
CANONICAL_ENCODER, CANONICAL_DECODER = "encoder-model.onnx", "decoder_joint-model.onnx"


def encoder_digest(variant: str, root: Path = Path(".")) -> str | None:
    """sha256 over the variant's encoder files in order (graph, then external data): what a committed figure
    was measured on. None when the encoder is not built."""
    spec = VARIANTS[variant]
    if not (root / spec.folder / spec.name).is_file():
        return None
    digest = hashlib.sha256()
    for path in model_files(spec, root, f"variant '{variant}'"):
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def model_files(spec: ModelFile, root: Path, what: str, on_request: bool = False) -> list[Path]:
    """The ONNX file plus its external-data sidecars (`<name>.onnx.data`, `<name>.onnx.data.000`, ...).

    Sidecars are found by name rather than by parsing the graph, so that no weights are read before
    the peak-memory baseline is taken.
    """
    onnx_path = root / spec.folder / spec.name
    if not onnx_path.is_file():
        how = ("build the comparison encoders first: `make compare`, or `dvc exp run -S 'compare.builds=[all]'`"
               if on_request else f"run `dvc repro {spec.stage}` first")
        fail(f"{what}: {onnx_path} is missing; {how}")
    prefixes = (spec.name + ".", spec.name.removesuffix(".onnx") + ".data")
    sidecars = sorted(p for p in onnx_path.parent.iterdir() if p.is_file() and p.name.startswith(prefixes))
    return [onnx_path, *sidecars]


def assemble_model_dir(variant: str, decoder: str, dest: Path, root: Path = Path(".")) -> list[Path]:
    """Fill `dest` with symlinks that onnx-asr loads as one model (encoder under the canonical name).

    Returns the encoder's files (graph + external data), whose total size is the encoder size.
    """
    if variant not in VARIANTS:
        fail(f"unknown variant '{variant}'; choose one of {', '.join(VARIANTS)}")
    if decoder not in DECODERS:
        fail(f"params.yaml: eval.decoder='{decoder}'; use one of {', '.join(DECODERS)}")
    layout = layout_of(root / BASE_DIR)
    encoder_files = model_files(VARIANTS[variant], root, f"variant '{variant}'", variant in BUILT_ON_REQUEST)
    decoder_files = model_files(decoder_file(decoder, layout), root, f"decoder '{decoder}'")
    for graph in (encoder_files[0], decoder_files[0]):  # missing or truncated weights: one line naming the file,
        load_graph(graph)  # here, once, before any measured region (load_asr does not parse again)
    dest.mkdir(parents=True, exist_ok=True)
    links = {CANONICAL_ENCODER: encoder_files[0], CANONICAL_DECODER: decoder_files[0]}
    # External data keeps its own name: the graph refers to it by that name.
    links |= {p.name: p for p in encoder_files[1:] + decoder_files[1:]}
    for name in (VOCAB, CONFIG):
        source = root / BASE_DIR / name
        if not source.is_file():
            fail(f"{source} is missing; run `dvc repro base_model` first")
        links[name] = source
    for name, source in links.items():
        (dest / name).symlink_to(source.resolve())
    return encoder_files


def decoder_file(precision: str, layout: str) -> ModelFile:
    """The decoder of that precision in the layout (for CTC: its head)."""
    spec = DECODERS[precision]
    return ModelFile(spec.folder, decoder_name(spec.name, layout), spec.stage)


@dataclass(frozen=True)
class Transcript:
    """One recognition: the text and, per token, its text and start time in seconds."""

    text: str
    tokens: list[str]
    starts: list[float]


def load_asr(model_dir: Path) -> TimestampedResultsAsrAdapter:
    """Load a model folder offline (CPU) with timestamped results. Its files are checked where it is assembled
    (assemble_model_dir): parsing them here would count in the memory a pass measures."""
    try:
        if layout_of(model_dir) == "ctc":
            manager = Manager(providers=["CPUExecutionProvider"])
            files = {"encoder": model_dir / CANONICAL_ENCODER, "head": model_dir / CANONICAL_DECODER,
                     "vocab": model_dir / VOCAB, "config": model_dir / CONFIG}
            model = manager._create_asr_adapter(SplitCtc(files, manager._create_preprocessor,
                                                         manager.default_onnx_config))
        else:
            model = onnx_asr.load_model(None, model_dir, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime/onnx-asr raise many types; the user needs one line
        fail(f"could not load the model in {model_dir}: {str(err).splitlines()[0][:300]}")
    blocked_features(model.asr)
    return model.with_timestamps()


class SplitCtc(NemoConformerCtc):
    """onnx-asr's CTC model on the pipeline's two parts of the graph (requant/layouts.py): the encoder variant,
    then the head, in two sessions. The same operations as the single graph (split and joined graphs give the
    same bits), without writing a joined file beside weights that onnxruntime reads only from its own folder."""

    def __init__(self, model_files: dict[str, Path], preprocessor_factory: Callable[[str], Preprocessor],
                 onnx_options: OnnxSessionOptions) -> None:
        super(NemoConformerCtc, self).__init__(model_files, preprocessor_factory, onnx_options)  # not model.onnx
        self._encoder = ort.InferenceSession(model_files["encoder"], **onnx_options)
        self._head = ort.InferenceSession(model_files["head"], **onnx_options)

    def _encode(self, features: np.ndarray, features_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        encoded, lengths = self._encoder.run(["outputs", "encoded_lengths"],
                                             {"audio_signal": features, "length": features_lens})
        (logprobs,) = self._head.run([CTC_OUTPUT], {HEAD_INPUT: encoded})
        return logprobs, lengths


def blocked_features(model: object) -> None:
    """Give an onnx-asr model the same features computed in blocks (requant.features): its own preprocessor
    holds a long recording's frames several times over (1.5 GB at 20 min). onnx-asr takes no preprocessor from
    outside, so the wrapper replaces its attribute; a model with another preprocessor is left as it is."""
    inner = getattr(model, "_preprocessor", None)
    if isinstance(inner, NemoPreprocessorNumpy):
        model._preprocessor = BlockedPreprocessor(inner)  # type: ignore[attr-defined]


def transcribe(asr: TimestampedResultsAsrAdapter, audio: np.ndarray) -> Transcript:
    """One single pass over the whole clip (no chunking)."""
    result = asr.recognize(np.ascontiguousarray(audio, dtype=np.float32), sample_rate=SAMPLE_RATE)
    return Transcript(result.text, list(result.tokens or []), [float(t) for t in result.timestamps or []])


@dataclass(frozen=True)
class Decoded:
    """Every clip of a batch under each decoding, with the time spent encoding and decoding apart."""

    transcripts: dict[str, list[Transcript]]  # decoding name -> one transcript per clip
    encode_s: float
    decode_s: dict[str, float]


def _onnx_joint(session: ort.InferenceSession) -> JointFn:
    """The decoder_joint graph as a batched joint function for requant.beam."""
    def joint(frames: np.ndarray, tokens: np.ndarray, state1: np.ndarray, state2: np.ndarray):
        logits, new1, new2 = session.run(["outputs", "output_states_1", "output_states_2"], {
            "encoder_outputs": frames[:, :, None], "targets": tokens[:, None].astype(np.int32),
            "target_length": np.ones(len(tokens), np.int32), "input_states_1": state1, "input_states_2": state2})
        return logits[:, 0, 0, :], new1, new2
    return joint


def decodings_for(names: list[str], beam: BeamParams) -> dict[str, BeamParams | None]:
    """eval.decodings as recognize_all takes them: greedy -> None, beam -> its params."""
    return {name: beam if name == "beam" else None for name in names}


def recognize_all(asr: TimestampedResultsAsrAdapter, clips: list[np.ndarray],
                  decodings: dict[str, BeamParams | None]) -> Decoded:
    """One encoder pass over the batch, then each decoding of it: greedy (None, onnx-asr's own) or beam.

    Goes through onnx-asr's model internals (pinned by the lock file) to time the encoder apart and to
    decode its output twice; onnx-asr's own input path (padding, preprocessor) is kept as it is."""
    model = asr.asr
    waveforms, lengths = asr.resampler(*read_wav_files([np.ascontiguousarray(c, np.float32) for c in clips],
                                                       SAMPLE_RATE))
    started = time.perf_counter()
    encodings, encoded_lengths = model._encode(*model._preprocessor(waveforms, lengths))
    encode_s = time.perf_counter() - started
    transcripts, decode_s = {}, {}
    for name, params in decodings.items():
        started = time.perf_counter()
        if params is None:
            decoded = [(list(ids), list(frames)) for ids, frames, _ in model._decoding(encodings, encoded_lengths)]
        else:
            joint, blank, vocab = _onnx_joint(model._decoder_joint), model._blank_idx, model._vocab_size
            durations = list(range(model._decoder_joint.get_outputs()[0].shape[-1] - vocab))
            found = [beam_search(enc, int(n), joint, blank=blank, vocab_size=vocab, durations=durations,
                                 initial_state=model._create_state(), params=params,
                                 max_tokens_per_step=model._max_tokens_per_step)
                     for enc, n in zip(encodings, encoded_lengths, strict=True)]
            decoded = [(r.tokens, r.frames) for r in found]
        results = [model._decode_tokens(ids, frames, None) for ids, frames in decoded]
        decode_s[name] = time.perf_counter() - started
        transcripts[name] = [Transcript(r.text, list(r.tokens or []), [float(t) for t in r.timestamps or []])
                             for r in results]
    return Decoded(transcripts, encode_s, decode_s)


def load_clip(path: Path, max_s: float) -> np.ndarray:
    """An evaluation clip as mono 16 kHz float32, refusing anything one pass cannot take."""
    if not path.is_file():
        fail(f"{path} is missing; run its decode_eval (or corpus) stage first: dvc repro")
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE or audio.shape[1] != 1:
        fail(f"{path}: expected 16 kHz mono, got {rate} Hz x {audio.shape[1]} channel(s); re-run its decode stage")
    duration = audio.shape[0] / SAMPLE_RATE
    if duration > max_s:
        fail(
            f"{path}: the clip lasts {duration:.1f} s, over eval.max_s={max_s:g} s "
            "(one Parakeet pass is capped at 400 s); shorten its crop_s in eval_clips"
        )
    return audio[:, 0].copy()
