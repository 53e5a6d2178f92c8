"""Audio in and out: any container -> mono float32 at 16 kHz (PyAV + soxr), float WAV files, checks."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

from requant.common import fail

SAMPLE_RATE = 16_000
SILENCE_RMS = 1e-4  # about -80 dBFS: nothing audible in the whole clip


def decode_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, start_s: float = 0.0, duration_s: float | None = None
) -> np.ndarray:
    """Decode any audio/video container to mono float32 at `sample_rate`.

    Channels are averaged; resampling is soxr's very-high-quality filter. The result has exactly
    round(duration * sample_rate) samples, where duration is `duration_s` when given (the source
    must then cover [start_s, start_s + duration_s); up to one source frame of shortfall at the end
    is padded with silence) or else the decoded length minus start_s.
    """
    native, source_rate = _decode_native(Path(path), start_s, duration_s)
    available_s = len(native) / source_rate
    if duration_s is None:
        duration_s = available_s
    elif duration_s - available_s > 0.5:
        fail(f"{path}: holds {available_s + start_s:.2f} s of audio but [{start_s}, {start_s + duration_s}) s "
             "was asked for; use a longer source or a shorter crop")
    audio = native if source_rate == sample_rate else soxr.resample(native, source_rate, sample_rate, quality="VHQ")
    return _exact_length(np.asarray(audio, dtype=np.float32), round(duration_s * sample_rate))


def _decode_native(path: Path, start_s: float, duration_s: float | None) -> tuple[np.ndarray, int]:
    """Mono float32 at the source's own rate, from start_s, decoding no further than needed."""
    if not path.is_file():
        fail(f"{path}: audio file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                fail(f"{path}: has no audio stream; give a file with sound in it")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            stated = round(stream.duration * stream.time_base * rate) if stream.duration else None
            # planar float keeps the source rate and channels: one row per channel
            to_float = av.AudioResampler(format="fltp")
            first = round(start_s * rate)
            last = None if duration_s is None else first + round(duration_s * rate)
            pieces, decoded = [], 0  # only samples from `first` on are kept: a late crop costs no memory
            for frame in container.decode(stream):
                for converted in to_float.resample(frame):
                    if decoded + converted.samples > first:
                        mono = converted.to_ndarray().mean(axis=0, dtype=np.float32)
                        pieces.append(mono[max(0, first - decoded):])
                    decoded += converted.samples
                if last is not None and decoded >= last:
                    break
    except av.FFmpegError as err:
        fail(f"{path}: cannot be decoded ({err}); the file is corrupt or not audio")
    if decoded == 0:
        fail(f"{path}: decodes to no audio samples; the file is empty or corrupt")
    native = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if stated is not None and 0 < decoded - stated <= rate // 10:
        native = native[: max(0, stated - first)]  # encoder padding after the end the container states (AAC)
    return np.ascontiguousarray(native[: None if last is None else last - first], dtype=np.float32), int(rate)


def _exact_length(audio: np.ndarray, samples: int) -> np.ndarray:
    if len(audio) >= samples:
        return audio[:samples]
    return np.concatenate([audio, np.zeros(samples - len(audio), dtype=np.float32)])


def check_audio(audio: np.ndarray, name: str) -> None:
    """Refuse empty, non-finite or silent audio, naming it."""
    if audio.size == 0:
        fail(f"{name}: the audio is empty")
    if not np.all(np.isfinite(audio)):
        fail(f"{name}: the audio holds NaN or infinite samples; the file is corrupt")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < SILENCE_RMS:
        fail(f"{name}: the audio is silent (RMS {rms:.1e}); check the source and the crop")


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Mono float32 WAV whose bytes depend only on the samples.

    Written by hand because libsndfile adds a PEAK chunk holding the current time to float WAVs,
    which would make every run's output differ (and DVC re-run everything downstream).
    """
    data = np.ascontiguousarray(audio, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)  # 3 = IEEE float
    fact = struct.pack("<I", len(data) // 4)
    body = b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"fact", fact) + _chunk(b"data", data)
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _chunk(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("<I", len(payload)) + payload


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a mono WAV written by write_wav, checking its rate."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError) as err:
        fail(f"{path}: cannot be read as WAV ({err}); re-run the decode stage")
    if rate != sample_rate or audio.ndim != 1:
        fail(f"{path}: expected mono {sample_rate} Hz, found {rate} Hz with shape {audio.shape}; re-run decode")
    return audio


def audio_sha256(audio: np.ndarray) -> str:
    """Hash of the samples themselves (float32 little-endian), independent of the file format."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype="<f4").tobytes()).hexdigest()
