"""Features in blocks: the same bits as onnx-asr's own NumPy nemo128 preprocessor, at every block edge, and
the one onnx-asr runs inside load_asr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_asr.preprocessors.numpy_preprocessor import NemoPreprocessorNumpy

from demo.synth import synthesize
from requant.features import FEATURES, BlockedPreprocessor, features

ONNX_ASR = NemoPreprocessorNumpy(FEATURES)


def whole(waveforms: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ONNX_ASR(waveforms.copy(), lengths)  # it writes into a pre-emphasised copy, never the input


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return np.concatenate([synthesize(text, "en-us") for text in ("the quiet river runs under the old bridge",
                                                                  "my brother reads a long letter")])


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
@pytest.mark.parametrize("samples", [400, 16_000 + 159, 16_000 + 160, 16_000 * 3 + 77])
def test_blocks_give_the_whole_clips_bits(speech: np.ndarray, block: int, samples: int) -> None:
    """Block edges fall inside the STFT's 512-sample windows and cut the mean's and variance's sums."""
    waveform = np.resize(speech, samples)[None].astype(np.float32)
    lengths = np.array([samples])
    expected, expected_lens = whole(waveform, lengths)
    got, lens = BlockedPreprocessor(ONNX_ASR, block)(waveform, lengths)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, expected) and np.array_equal(lens, expected_lens)


def test_a_padded_batch_gives_the_same_bits(speech: np.ndarray) -> None:
    """onnx-asr pads a batch to its longest clip: the shorter one's frames past its length are zeros, and its
    statistics cover its own frames only."""
    lengths = np.array([len(speech), len(speech) // 2 + 33])
    batch = np.zeros((2, len(speech)), np.float32)
    batch[0], batch[1, : lengths[1]] = speech, speech[: lengths[1]]
    expected, _ = whole(batch, lengths)
    for block in (5, 100):
        assert np.array_equal(BlockedPreprocessor(ONNX_ASR, block)(batch, lengths)[0], expected)


def test_features_are_onnx_asrs_and_every_value_is_finite(speech: np.ndarray) -> None:
    signal, length = features(speech)
    assert np.array_equal(signal, whole(speech[None].astype(np.float32), np.array([len(speech)]))[0])
    assert np.isfinite(signal).all() and length.tolist() == [len(speech) // 160]


def test_load_asr_runs_the_blocked_preprocessor(tmp_path: Path, speech: np.ndarray) -> None:
    """The evaluation's long passes go through onnx-asr: its preprocessor is replaced, its text unchanged."""
    import onnx_asr

    from demo.fastconformer import build_random_model
    from requant.asr import load_asr, transcribe

    folder = build_random_model(tmp_path / "model", seed=0)
    asr = load_asr(folder)
    assert isinstance(asr.asr._preprocessor, BlockedPreprocessor)
    own = onnx_asr.load_model(None, folder, providers=["CPUExecutionProvider"]).with_timestamps()
    assert isinstance(own.asr._preprocessor, NemoPreprocessorNumpy)
    assert transcribe(asr, speech) == transcribe(own, speech)
