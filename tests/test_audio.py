"""requant/audio.py: real containers made by ffmpeg, decoded in-process by PyAV and resampled by soxr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from requant.audio import audio_sha256, check_audio, decode_audio, read_wav, write_wav
from requant.common import StageError
from tests.audio_helpers import FFMPEG, dominant_hz, make_silence, make_tone

SECONDS = 3.3  # not a whole number of codec frames anywhere


@pytest.mark.parametrize("suffix", ["wav", "flac", "mp3", "ogg", "m4a", "webm"])
def test_any_container_decodes_to_exact_16k_mono(tmp_path: Path, suffix: str) -> None:
    path = make_tone(tmp_path / f"tone.{suffix}", SECONDS, rate=48000 if suffix == "webm" else 44100)
    audio = decode_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == round(SECONDS * 16000)
    assert abs(dominant_hz(audio) - 440) < 2  # the resampler kept the pitch
    assert 0.05 < float(np.abs(audio[1000:-1000]).max()) < 0.2  # ffmpeg's sine is at 1/8 full scale


def test_crop_is_exact_and_starts_where_asked(tmp_path: Path) -> None:
    path = make_tone(tmp_path / "tone.flac", SECONDS, rate=22050, channels=1)
    whole = decode_audio(path)
    crop = decode_audio(path, start_s=1.0, duration_s=1.5)
    assert len(crop) == 24000
    # same samples as the matching stretch of the whole decode, away from the resampler's edges
    np.testing.assert_allclose(crop[2000:-2000], whole[16000 + 2000 : 16000 + 24000 - 2000], atol=1e-3)


def test_crop_beyond_the_end_is_refused(tmp_path: Path) -> None:
    path = make_tone(tmp_path / "short.wav", 2.0)
    with pytest.raises(StageError, match="short.wav.*crop"):
        decode_audio(path, start_s=1.0, duration_s=5.0)


def test_small_shortfall_is_padded(tmp_path: Path) -> None:
    path = make_tone(tmp_path / "tone.wav", 2.0)
    audio = decode_audio(path, duration_s=2.2)
    assert len(audio) == 35200 and not np.any(audio[-3000:])


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 100, bytes(range(256)) * 64])
def test_corrupt_file_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mp3"
    path.write_bytes(content)
    with pytest.raises(StageError, match="broken.mp3"):
        decode_audio(path)


def test_file_without_audio_stream_is_refused(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "video.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=10",
                    "-c:v", "mpeg4", str(path)], check=True)
    with pytest.raises(StageError, match="video.mp4.*no audio stream"):
        decode_audio(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="nothing.wav.*not found"):
        decode_audio(tmp_path / "nothing.wav")


def test_silent_audio_is_refused(tmp_path: Path) -> None:
    audio = decode_audio(make_silence(tmp_path / "quiet.flac", 2.0))
    assert len(audio) == 32000
    with pytest.raises(StageError, match="quiet.*silent"):
        check_audio(audio, "quiet")
    with pytest.raises(StageError, match="NaN"):
        check_audio(np.array([0.1, np.nan], dtype=np.float32), "x")
    check_audio(decode_audio(make_tone(tmp_path / "loud.wav", 1.0)), "loud")


def test_wav_round_trip_is_exact_and_deterministic(tmp_path: Path) -> None:
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, 16001).astype(np.float32)
    write_wav(tmp_path / "a.wav", audio)
    write_wav(tmp_path / "b.wav", audio)
    written = (tmp_path / "a.wav").read_bytes()
    assert written == (tmp_path / "b.wav").read_bytes()
    assert written.endswith(audio.astype("<f4").tobytes()) and len(written) == 56 + 4 * len(audio)  # no PEAK/time
    back = read_wav(tmp_path / "a.wav")
    np.testing.assert_array_equal(back, audio)
    assert audio_sha256(back) == audio_sha256(audio) != audio_sha256(audio[:-1])
    assert len(decode_audio(tmp_path / "a.wav")) == 16001  # 16 kHz in: no resampling, same length
    with pytest.raises(StageError, match="expected mono 8000 Hz"):
        read_wav(tmp_path / "a.wav", sample_rate=8000)
