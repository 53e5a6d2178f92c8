"""The features the encoder sees at inference, for calibration, fidelity checks and evaluation.

Every stage takes encoder inputs from here, so that they are exactly what onnx-asr feeds the encoder:
its own NumPy nemo128 preprocessor, with per-utterance normalisation applied to each window on its own.
Stages that use it list this file as a DVC dependency: a change here re-runs calibration.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from onnx_asr.preprocessors.numpy_preprocessor import NemoPreprocessorNumpy

SAMPLE_RATE = 16_000
FEATURES = "nemo128"


@cache
def _preprocessor() -> NemoPreprocessorNumpy:
    return NemoPreprocessorNumpy(FEATURES)


def features(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encoder inputs for one mono 16 kHz clip: (audio_signal f32 [1,128,T], length i64 [1])."""
    waveform = np.ascontiguousarray(audio, dtype=np.float32)[None, :]
    feats, lens = _preprocessor()(waveform, np.array([waveform.shape[1]], dtype=np.int64))
    return feats.astype(np.float32, copy=False), lens.astype(np.int64, copy=False)
