"""requant/clips.py (stages fetch and decode) + requant/download.py: real yt-dlp against a loopback HTTP server, local files, synthesis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from requant.audio import decode_audio, read_wav
from requant.common import StageError, read_json
from demo.synth import make_speech
from requant import clips
from requant.clips import decode, decode_eval_clip
from requant.download import _options
from requant.params import Params, load_params
from tests.audio_helpers import make_tone
from tests.http_fixture import FileServer, file_server
from tests.params_helpers import make_params, raw_params


def fetch(clip, params: Params, out_dir: Path) -> dict:
    """As stages/fetch.py calls it: with the demo preset's synthesizer."""
    return clips.fetch(clip, params, out_dir, make_speech)


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, np.ndarray]:
    """A 20 s FLAC tone (bytes) and its own 16 kHz decode."""
    path = make_tone(tmp_path_factory.mktemp("tone") / "tone.flac", 20.0)
    return path.read_bytes(), decode_audio(path)


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The same kind of tone as an uncompressed WAV (3.5 MB), where a seek is easy to see."""
    return make_tone(tmp_path_factory.mktemp("tone") / "tone.wav", 20.0).read_bytes()


@pytest.fixture
def server(tone: tuple[bytes, np.ndarray], tone_wav: bytes) -> FileServer:
    with file_server() as srv:
        srv.files["/talk.flac"] = (tone[0], "audio/flac")
        srv.files["/talk.wav"] = (tone_wav, "audio/wav")
        srv.files["/cut.flac"] = (tone[0][: len(tone[0]) // 2], "audio/flac")  # a broken half file
        yield srv


def params_for(source: str, tmp_path: Path, start_s: float = 0.0, crop_s: float = 20.0, **groups) -> Params:
    speech = {"lang": "en", "source": source, "start_s": start_s, "crop_s": crop_s, "demo_voice": "en-us+m1"}
    fetch_group = {"retries": 2, "backoff_s": 0.01, "timeout_s": 5, "min_rate_kb_s": 4, "rate_window_s": 60,
                   "local_dir": str(tmp_path / "local")}
    return make_params(**{"preset": "parakeet", "speeches": {"talk": speech}, "fetch": fetch_group, **groups})


def test_full_file(server: FileServer, tone, tmp_path: Path) -> None:
    params = params_for(server.url("/talk.flac"), tmp_path)
    provenance = fetch(params.speeches["talk"], params, tmp_path / "raw")
    assert provenance["source"] == server.url("/talk.flac") and provenance["decoded_s"] == 20.0
    assert set(provenance["tools"]) >= {"yt-dlp", "imageio-ffmpeg"} and len(provenance["sha256"]) == 64
    assert read_json(tmp_path / "raw" / "provenance.json") == provenance
    assert decode(tmp_path / "raw", tmp_path / "talk.wav", 16000) == 320000
    np.testing.assert_allclose(read_wav(tmp_path / "talk.wav"), tone[1], atol=1e-4)


def test_crop_fetches_only_part_of_the_file(server: FileServer, tone, tone_wav: bytes, tmp_path: Path) -> None:
    params = params_for(server.url("/talk.wav"), tmp_path, start_s=12.0, crop_s=5.0)
    fetch(params.speeches["talk"], params, tmp_path / "raw")
    # ffmpeg jumped to the crop with a Range request instead of reading the file from the start. It used
    # to read ahead instead whenever the crop began within the TCP receive buffer, whose size the kernel
    # tunes as data flows (a flaky test); the code now sets ffmpeg's short-seek threshold to 1 byte.
    starts = [int(r[2].removeprefix("bytes=").split("-")[0]) for r in server.requests if r[2]]
    assert max(starts) > 0.55 * len(tone_wav)
    audio = decode(tmp_path / "raw", tmp_path / "talk.wav", 16000) and read_wav(tmp_path / "talk.wav")
    assert len(audio) == 80000
    # the same tone, in phase with the matching stretch of the source (cut at a FLAC frame boundary)
    corr = np.corrcoef(audio[4000:-4000], tone[1][192000 + 4000 : 272000 - 4000])[0, 1]
    assert corr > 0.99


def test_ffmpeg_always_seeks_to_the_crop() -> None:
    """What the code controls: ffmpeg gets a short-seek threshold of 1 byte, so it seeks with a Range
    request whatever its receive buffer (a larger -recv_buffer_size made it read the file from the start)."""
    options = _options(Path("/tmp"), 12.0, 5.0, load_params().fetch)
    args = options["external_downloader_args"]["ffmpeg_i"]
    assert args[args.index("-short_seek_size") + 1] == "1"
    assert int(args[args.index("-rw_timeout") + 1]) > 0


def test_dropped_connection_is_retried(server: FileServer, tone, tmp_path: Path) -> None:
    server.drop_bodies = 1  # the first media request is cut a third of the way through
    params = params_for(server.url("/talk.flac"), tmp_path)
    fetch(params.speeches["talk"], params, tmp_path / "raw")
    media_requests = [r for r in server.requests if r[2]]
    assert len(media_requests) >= 2
    decode(tmp_path / "raw", tmp_path / "talk.wav", 16000)
    np.testing.assert_allclose(read_wav(tmp_path / "talk.wav"), tone[1], atol=1e-4)


@pytest.mark.parametrize("path", ["/cut.flac", "/talk.flac"])
def test_truncated_or_too_short_source_is_detected(server: FileServer, tmp_path: Path, path: str) -> None:
    params = params_for(server.url(path), tmp_path, crop_s=25.0 if path == "/talk.flac" else 20.0)
    with pytest.raises(StageError, match=r"speech 'talk': could not download .* after 3 attempts"):
        fetch(params.speeches["talk"], params, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()  # nothing half-written


def test_bad_url_fails_at_once(server: FileServer, tmp_path: Path) -> None:
    params = params_for(server.url("/missing.flac"), tmp_path)
    with pytest.raises(StageError, match=r"speech 'talk': cannot download .*404"):
        fetch(params.speeches["talk"], params, tmp_path / "raw")
    assert len(server.requests) == 1  # a 404 is not retried


def test_server_down_then_up(server: FileServer, tone, tmp_path: Path) -> None:
    server.unavailable = 2
    params = params_for(server.url("/talk.flac"), tmp_path)
    assert fetch(params.speeches["talk"], params, tmp_path / "raw")["decoded_s"] == 20.0


def test_network_down_after_retries(tmp_path: Path) -> None:
    with file_server() as srv:
        url = srv.url("/talk.flac")  # nothing listens there once the server is closed
    params = params_for(url, tmp_path)
    with pytest.raises(StageError, match=r"speech 'talk': could not download .* after 3 attempts.*network"):
        fetch(params.speeches["talk"], params, tmp_path / "raw")


def test_bad_youtube_id(tmp_path: Path) -> None:
    params = params_for("youtube:too-short", tmp_path)
    with pytest.raises(StageError, match="speech 'talk'.*not a YouTube id"):
        fetch(params.speeches["talk"], params, tmp_path / "raw")


@pytest.mark.parametrize("preset", ["parakeet", "demo"])
def test_local_dir_file_is_used_without_download(tmp_path: Path, preset: str) -> None:
    local = tmp_path / "local"
    local.mkdir()
    source = make_tone(local / "talk.wav", 8.0, rate=16000, channels=1)
    params = params_for("youtube:K6pa-QdL4Wo", tmp_path, start_s=2.0, crop_s=4.0, preset=preset)
    provenance = fetch(params.speeches["talk"], params, tmp_path / "raw")
    assert provenance["source"] == str(source) and provenance["offset_s"] == 2.0
    decode(tmp_path / "raw", tmp_path / "talk.wav", 16000)
    np.testing.assert_array_equal(read_wav(tmp_path / "talk.wav"), decode_audio(source)[32000:96000])


def test_local_source_shorter_than_crop(tmp_path: Path) -> None:
    source = make_tone(tmp_path / "short.wav", 3.0)
    params = params_for(str(source), tmp_path, crop_s=10.0)
    with pytest.raises(StageError, match="speech 'talk': source '.*short.wav' holds 3.00 s .*shorter crop"):
        fetch(params.speeches["talk"], params, tmp_path / "raw")
    params = params_for(str(tmp_path / "absent.wav"), tmp_path)
    with pytest.raises(StageError, match="speech 'talk'.*absent.wav.*neither"):
        fetch(params.speeches["talk"], params, tmp_path / "raw")


def eval_clip(**changes) -> dict:
    """params.yaml's jfk clip with changes."""
    return {**raw_params()["eval_clips"]["jfk"], **changes}


def test_eval_clip_with_its_transcript(tmp_path: Path) -> None:
    source = make_tone(tmp_path / "eval.flac", 5.0)
    (tmp_path / "truth.txt").write_text("we choose to go to the moon\n")
    clip = eval_clip(source=str(source), crop_s=5.0, transcript=str(tmp_path / "truth.txt"))
    params = params_for("youtube:K6pa-QdL4Wo", tmp_path, eval_clips={"jfk": clip})
    fetch(params.eval_clips["jfk"], params, tmp_path / "eval")
    assert (tmp_path / "eval" / "transcript.txt").read_text() == "we choose to go to the moon\n"


def test_demo_synthesis_is_reproducible(tmp_path: Path) -> None:
    params = params_for("youtube:K6pa-QdL4Wo", tmp_path, crop_s=6.0, preset="demo",
                        eval_clips={"jfk": eval_clip(crop_s=6.0)})
    for run in ("a", "b"):
        fetch(params.eval_clips["jfk"], params, tmp_path / run / "eval")
        fetch(params.speeches["talk"], params, tmp_path / run / "talk")
    for name in ("eval/speech.flac", "eval/provenance.json", "eval/transcript.txt", "talk/speech.flac"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not (tmp_path / "a" / "talk" / "transcript.txt").exists()
    with pytest.raises(StageError, match="no synthesizer was given"):  # the library knows no synthesizer itself
        clips.fetch(params.speeches["talk"], params, tmp_path / "none")
    transcript = (tmp_path / "a" / "eval" / "transcript.txt").read_text().strip()
    assert transcript and provenance_voice(tmp_path / "a" / "eval") == "en-us+m3"
    assert decode(tmp_path / "a" / "eval", tmp_path / "eval.wav", 16000) == 96000


def test_demo_clips_switch_language_and_speed_up(tmp_path: Path) -> None:
    """The switching clip speaks English then French sentences in turn; the fast one fits more words."""
    from demo.text import sentences

    clips = {"switch": eval_clip(lang="en,fr", demo_voice="en-gb+f2,fr-be+m3", demo_switch_every=2, crop_s=25.0,
                                 source=None),
             "slow": eval_clip(demo_voice="en-us+f2", crop_s=25.0), "fast": eval_clip(demo_voice="en-us+f2",
                                                                                     demo_rate=1.35, crop_s=25.0)}
    params = params_for("youtube:K6pa-QdL4Wo", tmp_path, preset="demo", eval_clips=clips)
    words = {}
    for name in clips:
        fetch(params.eval_clips[name], params, tmp_path / name)
        words[name] = (tmp_path / name / "transcript.txt").read_text().split()
    assert len(words["fast"]) > 1.2 * len(words["slow"])
    seed = read_json(tmp_path / "switch" / "provenance.json")["text_seed"]
    english, french = sentences("en", 40, seed), sentences("fr", 40, seed + 1)
    spoken = " ".join(words["switch"])
    assert spoken.startswith(" ".join([english[0], english[1], french[2], french[3], english[4]]))


def test_demo_only_clip_is_skipped_by_the_parakeet_preset(tmp_path: Path) -> None:
    params = params_for("youtube:K6pa-QdL4Wo", tmp_path, eval_clips={"fast": eval_clip(source=None)})
    assert "skipped" in fetch(params.eval_clips["fast"], params, tmp_path / "raw" / "fast")
    assert [p.name for p in (tmp_path / "raw" / "fast").iterdir()] == ["provenance.json"]
    decode_eval_clip(tmp_path / "raw" / "fast", tmp_path / "audio" / "fast", 16000)
    assert [p.name for p in (tmp_path / "audio" / "fast").iterdir()] == ["skipped.json"]


def provenance_voice(folder: Path) -> str:
    return read_json(folder / "provenance.json")["voice"]


def test_silent_source_is_refused(tmp_path: Path) -> None:
    from tests.audio_helpers import make_silence

    params = params_for(str(make_silence(tmp_path / "quiet.flac", 5.0)), tmp_path, crop_s=5.0)
    with pytest.raises(StageError, match="speech 'talk': source '.*quiet.flac' .*silent"):
        fetch(params.speeches["talk"], params, tmp_path / "raw")
