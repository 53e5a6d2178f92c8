"""The features the encoder sees at inference, for calibration, fidelity checks and evaluation.

Every stage takes encoder inputs from here, so that they are exactly what onnx-asr feeds the encoder: its own
NumPy nemo128 preprocessor, with per-utterance normalisation applied to each clip on its own. That preprocessor
holds the whole recording's frames several times over (float64 windows, complex spectra: 1.5 GB at 20 min);
`BlockedPreprocessor` computes the same bits in blocks of frames, and load_asr puts it inside onnx-asr.
Stages that use it list this file as a DVC dependency: a change here re-runs calibration.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from onnx_asr.preprocessors.numpy_preprocessor import NemoPreprocessorNumpy

SAMPLE_RATE = 16_000
FEATURES = "nemo128"  # Parakeet TDT v2/v3 and the demo; the RNN-T and CTC 0.6B models take nemo80
BASE_CONFIG = Path("models/base/config.json")
BLOCK_FRAMES = 2048  # 20 s of frames: [2048, 512] float64 windows, 8 MB


class BlockedPreprocessor:
    """onnx-asr's NumPy nemo128 preprocessor, bit for bit, in blocks of frames.

    Each frame's log-mel depends on its 512 samples only, so a block takes the samples it needs (the STFT's
    halo) and runs the preprocessor's own operations on them. The per-utterance mean and variance are sums
    over frames, which NumPy takes row after row: they are carried across blocks in that order. Peak memory:
    the output [B, 128, T] (normalised in place) plus one block. It reads the wrapped preprocessor's settings
    and filterbank, so the pinned onnx-asr stays the definition; tests hold the two equal at block edges."""

    def __init__(self, inner: NemoPreprocessorNumpy, block_frames: int = BLOCK_FRAMES) -> None:
        self.inner, self.block = inner, block_frames
        p = inner
        side = (p._n_fft - p._win_length) // 2
        self.window = np.pad(np.hanning(p._win_length), (side, side))  # float64, as the preprocessor's

    def __call__(self, waveforms: np.ndarray, waveforms_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.inner
        frames = waveforms.shape[1] // p._hop_length + 1  # centre padding by n_fft/2 on each side
        out = np.empty((waveforms.shape[0], p._melscale_fbanks.shape[1], frames), dtype=np.float32)
        lens = waveforms_lens // p._hop_length
        for item, (waveform, length) in enumerate(zip(waveforms, waveforms_lens, strict=True)):
            for first in range(0, frames, self.block):
                stop = min(first + self.block, frames)
                out[item, :, first:stop] = self.log_mel(waveform, int(length), first, stop).T
            self.normalise(out[item], int(lens[item]))
        return out, lens

    def log_mel(self, waveform: np.ndarray, length: int, first: int, stop: int) -> np.ndarray:
        """Log-mel rows [stop - first, n_mels] of frames first..stop-1 of one clip valid up to `length`."""
        p = self.inner
        half = p._n_fft // 2
        lo, hi = first * p._hop_length - half, (stop - 1) * p._hop_length + half  # the frames' samples [lo, hi)
        samples = np.zeros(hi - lo, dtype=np.float32)  # outside the clip: the centre padding's zeros
        begin, end = max(lo, 0), min(hi, length)  # pre-emphasised samples past `length` are zeroed
        if end > begin:
            previous = waveform[begin - 1:end - 1] if begin else np.concatenate([[0], waveform[:end - 1]])
            samples[begin - lo:end - lo] = waveform[begin:end] - p._preemph * previous.astype(np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(samples, p._n_fft)[:: p._hop_length] * self.window
        spectrogram = np.abs(np.fft.rfft(windows, p._n_fft)).astype(np.float32) ** 2
        if len(spectrogram) == 1 < stop:  # one row goes down BLAS's matrix-vector path: other sums, other bits
            return self.log_mel(waveform, length, first - 1, stop)[1:]
        return np.log(np.matmul(spectrogram, p._melscale_fbanks) + p._log_zero_guard_value)

    def normalise(self, features: np.ndarray, valid: int) -> None:
        """Per-feature mean and variance over the first `valid` frames of [n_mels, T], applied in place."""
        def rows(first: int) -> np.ndarray:  # C order: NumPy sums a C-order axis 0 row by row, others pairwise
            return np.ascontiguousarray(features[:, first:min(first + self.block, valid)].T)

        total = np.zeros((1, features.shape[0]), dtype=np.float32)
        for first in range(0, valid, self.block):  # NumPy's order: one row after another
            total = np.concatenate([total, rows(first)]).sum(axis=0, keepdims=True)
        mean = np.divide(total, np.int64(valid), dtype=np.float32)
        total = np.zeros_like(total)
        for first in range(0, valid, self.block):
            total = np.concatenate([total, (rows(first) - mean) ** 2]).sum(axis=0, keepdims=True)
        scale = np.sqrt(np.divide(total, np.int64(valid - 1), dtype=np.float32)) + 1e-5
        for first in range(0, valid, self.block):
            features[:, first:min(first + self.block, valid)] = ((rows(first) - mean) / scale).T
        features[:, valid:] = 0.0


@cache
def _preprocessor(name: str) -> BlockedPreprocessor:
    return BlockedPreprocessor(NemoPreprocessorNumpy(name))


@cache
def base_features() -> str:
    """onnx-asr's preprocessor for the base model (config.json's features_size), as onnx-asr picks it."""
    from requant.layouts import preprocessor_name

    return preprocessor_name(BASE_CONFIG.parent) if BASE_CONFIG.is_file() else FEATURES


def features(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encoder inputs for one mono 16 kHz clip: (audio_signal f32 [1, mels, T], length i64 [1])."""
    waveform = np.ascontiguousarray(audio, dtype=np.float32)[None, :]
    return _preprocessor(base_features())(waveform, np.array([waveform.shape[1]], dtype=np.int64))
