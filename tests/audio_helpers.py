"""Audio files made on the fly with the ffmpeg bundled in imageio-ffmpeg (shared by the data tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def make_tone(path: Path, seconds: float, rate: int = 44100, channels: int = 2, freq: int = 440,
              extra: tuple[str, ...] = ()) -> Path:
    """A sine tone (plus a little noise) encoded by ffmpeg into whatever container path's suffix names."""
    source = f"sine=frequency={freq}:sample_rate={rate}:duration={seconds}"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ac", str(channels), *extra,
                    str(path)], check=True)
    return path


def make_silence(path: Path, seconds: float, rate: int = 44100) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono",
                    "-t", str(seconds), str(path)], check=True)
    return path


def dominant_hz(audio: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * rate / len(audio))
