"""stages/longform.py: one recording decoded every way (one pass full and local, windows, VAD segments) with
real onnx-asr sessions on the demo model, scored against its fp32 short-section references."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import soundfile as sf

from demo.synth import make_speech
from requant.asr import load_clip
from requant.params import load_params
from requant.scoring import tokens_to_text
from stages.base_model import demo_model
from requant.recordings import decode, prepare_encoder, run_cell, vad_segments
from stages.longform import summarize
from requant.evalsets import LONGFORM_DIR
from requant.clips import build_reference

REPO = Path(__file__).resolve().parents[1]
MODES = ["full", "local", "chunk20", "vad"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model as models/base and one 50 s recording with its references, as longform_data leaves them."""
    root = tmp_path_factory.mktemp("longform")
    (root / "models/base").mkdir(parents=True)
    demo_model(REPO / "demo/model", root / "models/base")
    clip = root / LONGFORM_DIR / "rec"
    for folder in ("raw", "audio"):
        (clip / folder).mkdir(parents=True)
    audio, text = make_speech("en", "en-us+f2", 50.0, 7, text_seed_offset=5000)
    sf.write(clip / "audio/audio.wav", audio, 16000, subtype="PCM_16")
    (clip / "raw/transcript.txt").write_text(text + "\n")
    build_reference(clip / "audio/audio.wav", clip / "raw", clip / "reference", 15.0, 50.0, "fp32", root)
    return root


@pytest.fixture(scope="module")
def params():
    p = load_params(REPO / "params.yaml")
    longform = dataclasses.replace(p.longform, variants=["fp32"], modes=MODES, overlap_s=4.0)
    return dataclasses.replace(p, longform=longform, local=dataclasses.replace(p.local, context=[32, 32]))


def test_every_mode_transcribes_the_recording_and_the_windows_lose_no_word(project: Path, params) -> None:
    audio = load_clip(project / LONGFORM_DIR / "rec/audio/audio.wav", 60)
    speech = {"rec": vad_segments(audio, params.longform)}
    assert 2 <= len(speech["rec"]) and all(b > a for a, b in speech["rec"])
    cells = {("fp32", mode): run_cell("fp32", mode, ["rec"], params, project, speech) for mode in MODES}
    truth = {mode: cells[("fp32", mode)]["rec"]["truth_wer_pct"] for mode in MODES}
    assert truth["full"] < 15, truth  # the demo model on held-out text: a few percent
    # the windows are stitched without doubling or losing words: as good as one pass, within a few words
    assert truth["chunk20"] <= truth["full"] + 5 and truth["vad"] <= truth["full"] + 10, truth
    summary = summarize(cells, 200, 0)["fp32"]
    assert "vs_fp32_full" not in summary["full"] and set(summary["chunk20"]["vs_fp32_full"]) >= {"delta_pct"}
    assert all(summary[m]["peak_rss_mb"] > 0 and summary[m]["encode_s"] > 0 for m in MODES)


def test_a_window_transcript_doubled_at_every_seam_would_show(project: Path, params, tmp_path: Path) -> None:
    """What the stitch prevents: the windows simply concatenated repeat every overlap's words."""
    audio = load_clip(project / LONGFORM_DIR / "rec/audio/audio.wav", 60)
    prepare_encoder("fp32", "chunk20", params, tmp_path / "model", project)
    from requant.asr import load_asr

    asr = load_asr(tmp_path / "model")
    tokens, starts, _ = decode(asr, audio, "chunk20", params, [])
    stitched = tokens_to_text(tokens).split()
    wide = dataclasses.replace(params, longform=dataclasses.replace(params.longform, overlap_s=10.0))
    tokens, _, _ = decode(asr, audio, "chunk20", wide, [])
    assert abs(len(tokens_to_text(tokens).split()) - len(stitched)) <= 3  # the overlap's size does not matter
    assert starts == sorted(starts) or max(a - b for a, b in zip(starts, starts[1:])) < 0.5
