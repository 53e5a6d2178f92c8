"""stages/windows.py: seeded, balanced window selection; held-out set; the evaluation-overlap guard."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from requant.audio import read_wav, write_wav
from requant.common import StageError, read_json
from stages.windows import build_windows, select_windows

RATE = 100  # samples per second: selection only needs lengths
WINDOW = 30 * RATE
# the shape of the real list: six 390 s speeches and two of 60 s
LENGTHS = {f"s{i}": (60 if i in (4, 5) else 390) * RATE for i in range(8)}


def test_selection_is_deterministic_and_seeded() -> None:
    first = select_windows(LENGTHS, WINDOW, RATE, 32, 1, seed=0)
    assert first == select_windows(LENGTHS, WINDOW, RATE, 32, 1, seed=0)
    assert first != select_windows(LENGTHS, WINDOW, RATE, 32, 1, seed=1)


@pytest.mark.parametrize("seed", range(5))
def test_balanced_across_speakers_and_heldout_disjoint(seed: int) -> None:
    rows = select_windows(LENGTHS, WINDOW, RATE, 32, 1, seed=seed)
    calib = [w for w in rows if w.split == "calib"]
    heldout = [w for w in rows if w.split == "heldout"]
    assert rows == calib + heldout and len(calib) == 32
    per_speaker = Counter(w.speaker for w in calib)
    assert per_speaker["s4"] == per_speaker["s5"] == 1  # a 60 s speech has two windows, one is held out
    long_counts = [per_speaker[f"s{i}"] for i in (0, 1, 2, 3, 6, 7)]
    assert max(long_counts) - min(long_counts) <= 1 and sum(long_counts) == 30
    assert Counter(w.speaker for w in heldout) == {s: 1 for s in LENGTHS}
    assert not {(w.speaker, w.start_s) for w in calib} & {(w.speaker, w.start_s) for w in heldout}
    assert all(w.start_s % 30 == 0 and w.start_s + 30 <= LENGTHS[w.speaker] / RATE for w in rows)


def test_count_beyond_supply_takes_everything() -> None:
    rows = select_windows({"a": 95 * RATE, "b": 40 * RATE}, WINDOW, RATE, 50, 1, seed=0)
    assert Counter((w.speaker, w.split) for w in rows) == {("a", "calib"): 2, ("a", "heldout"): 1,
                                                           ("b", "heldout"): 1}


def test_no_calibration_window_is_an_error() -> None:
    with pytest.raises(StageError, match="no calibration windows"):
        select_windows({"a": 20 * RATE}, WINDOW, RATE, 4, 1, seed=0)


def _speeches(folder: Path, seconds: dict[str, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, length in seconds.items():
        write_wav(folder / f"{name}.wav", rng.uniform(-0.3, 0.3, int(length * 16000)).astype(np.float32))


def _build(audio: Path, out: Path, eval_clips: tuple[str, ...] = ()) -> list:
    return build_windows(audio, ["fr1", "en1", "fr2"], out, eval_clips=list(eval_clips), window_s=2.0, count=5,
                         heldout_per_speaker=1, seed=3, sample_rate=16000)


def _eval_clip(audio: Path, clip: str, source: Path | None) -> None:
    """data/audio/eval/<clip>/audio.wav copied from source, or the skipped marker when source is None."""
    (audio / "eval" / clip).mkdir(parents=True)
    if source is None:
        (audio / "eval" / clip / "skipped.json").write_text('{"skipped": "demo only"}')
    else:
        shutil.copyfile(source, audio / "eval" / clip / "audio.wav")


def test_build_writes_the_windows_it_indexes(tmp_path: Path) -> None:
    _speeches(tmp_path / "audio", {"fr1": 7.0, "en1": 6.5, "fr2": 4.0, "eval": 5.0})
    _eval_clip(tmp_path / "audio", "jfk", tmp_path / "audio" / "eval.wav")
    rows = _build(tmp_path / "audio", tmp_path / "w1", ("jfk",))
    array = np.load(tmp_path / "w1" / "windows.npy")
    index = read_json(tmp_path / "w1" / "index.json")
    assert array.shape == (len(rows), 32000) and array.dtype == np.float32
    assert [r["split"] for r in index] == ["calib"] * 5 + ["heldout"] * 3
    for row, entry in zip(array, index, strict=True):
        source = read_wav(tmp_path / "audio" / f"{entry['speaker']}.wav")
        start = int(entry["start_s"] * 16000)
        np.testing.assert_array_equal(row, source[start : start + 32000])
    _build(tmp_path / "audio", tmp_path / "w2", ("jfk",))
    for name in ("windows.npy", "index.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_eval_clip_identical_to_a_calibration_speech_is_refused(tmp_path: Path) -> None:
    _speeches(tmp_path / "audio", {"fr1": 7.0, "en1": 6.5, "fr2": 4.0, "other": 3.0})
    _eval_clip(tmp_path / "audio", "jfk", tmp_path / "audio" / "other.wav")
    _eval_clip(tmp_path / "audio", "demo_only", None)
    _eval_clip(tmp_path / "audio", "fast", tmp_path / "audio" / "en1.wav")
    clips = ("jfk", "demo_only", "fast")
    with pytest.raises(StageError, match="evaluation clip 'fast' has the same audio as calibration speech 'en1'"):
        _build(tmp_path / "audio", tmp_path / "w", clips)
    assert not (tmp_path / "w").exists()
    shutil.rmtree(tmp_path / "audio" / "eval" / "fast")
    with pytest.raises(StageError, match=r"eval/fast/audio.wav is missing; run `dvc repro decode_eval@fast`"):
        _build(tmp_path / "audio", tmp_path / "w", clips)
    assert _build(tmp_path / "audio", tmp_path / "w", ("jfk", "demo_only"))