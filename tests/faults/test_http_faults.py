"""Hostile HTTP sources for the parakeet preset's fetch stage: bounded time, one line, nothing kept, and
no orphan process after SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.audio_helpers import make_tone
from tests.faults.helpers import error_line, make_project, nothing_under, read_params, run_stage, succeeds, \
    write_params
from tests.faults.hostile_http import HostileServer, hostile_server

CASES = [  # path, words of the error line, the longest the stage may take (s)
    ("/stall.wav", ["could not download", "after 1 attempts"], 30),
    ("/trickle.wav", ["could not download", "after 1 attempts"], 30),  # the stall bound or the attempt's
    ("/missing.wav", ["cannot download", "404"], 30),
    ("/error500.wav", ["could not download", "500"], 30),
    ("/truncated.wav", ["could not download", "after 1 attempts"], 30),
    ("/loop.wav", ["could not download"], 30),
    ("/page.wav", ["cannot download", "Unsupported URL"], 30),  # a web page, not audio
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> HostileServer:
    wav = make_tone(tmp_path_factory.mktemp("tone") / "tone.wav", 4.0, rate=16000, channels=1)
    long_wav = make_tone(tmp_path_factory.mktemp("tone") / "long.wav", 60.0, rate=16000, channels=1)
    with hostile_server(wav.read_bytes(), long_wav.read_bytes()) as srv:
        yield srv


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("http") / "repo", preset="parakeet")


def _fetch_from(root: Path, url: str, **changes: object) -> subprocess.CompletedProcess[str]:
    shutil.rmtree(root / "data", ignore_errors=True)
    write_params(root, read_params(root), **{"eval_clips.jfk.source": url, **changes})
    return run_stage(root, "fetch", "eval", "jfk")


@pytest.mark.parametrize(("path", "words", "limit_s"), CASES, ids=[c[0] for c in CASES])
def test_hostile_source(server: HostileServer, project: Path, path: str, words: list[str], limit_s: float) -> None:
    started = time.monotonic()
    result = _fetch_from(project, server.url(path))
    assert time.monotonic() - started < limit_s
    error_line(result, "evaluation clip", server.url(path), *words)
    nothing_under(project / "data" / "raw" / "eval" / "jfk")
    assert not list((project / "data" / "raw" / "eval").glob(".jfk.tmp-*")) if (project / "data" / "raw" / "eval").exists() else True
    succeeds(_fetch_from(project, server.url("/good.wav")))  # the same stage, a sound source: it completes
    assert (project / "data" / "raw" / "eval" / "jfk" / "provenance.json").is_file()


@pytest.mark.parametrize(("path", "words", "attempts", "changes"), [
    ("/stall-after-header.wav", ["after 2 attempts", "the server stalled", "fetch.timeout_s=3 s"], 2, {}),
    ("/trickle.wav", ["after 2 attempts", "the server stalled"], 2, {}),  # a byte every 0.2 s fills no buffer
    ("/slow.wav", ["after 1 attempts", "the server trickles", "below fetch.min_rate_kb_s=500"], 1,
     # 50 kB/s: below the floor. The stall bound is 10 s, not 3: on a loaded machine yt-dlp's own start can
     # take longer than 5 s before the first byte moves, and that first attempt then ended as a stall
     {"fetch.timeout_s": 10, "fetch.min_rate_kb_s": 500, "eval_clips.jfk.crop_s": 30}),
], ids=["stall", "trickle", "slow"])
def test_stall_and_trickle_end_the_attempt_long_before_its_timeout(server: HostileServer, project: Path, path: str,
                                                                   words: list[str], attempts: int,
                                                                   changes: dict) -> None:
    """With the last-resort bound at 900 s, a stall (no progress for fetch.timeout_s) or a trickle (below
    fetch.min_rate_kb_s over fetch.rate_window_s) ends the attempt at once: a stall gets one fresh try, a
    trickle none, however many retries are allowed. The defaults (30 s; 4 kB/s over 60 s) end both within
    about a minute; here they are scaled down."""
    started = time.monotonic()
    result = _fetch_from(project, server.url(path), **{"fetch.attempt_timeout_s": 900, "fetch.retries": 4,
                                                       "fetch.timeout_s": 3, "fetch.rate_window_s": 5, **changes})
    took = time.monotonic() - started
    error_line(result, "evaluation clip", server.url(path), *words)
    assert took < 6 * attempts + 20, took
    assert result.stderr.count("retrying in") == attempts - 1
    nothing_under(project / "data" / "raw" / "eval" / "jfk")
    write_params(project, read_params(project), **{"fetch.attempt_timeout_s": 4, "fetch.retries": 0,
                                                   "fetch.timeout_s": 3, "fetch.min_rate_kb_s": 4,
                                                   "eval_clips.jfk.crop_s": 3.0})


def _download_processes(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "requant.download" in cmdline and marker in cmdline:
            found.append(int(proc.name))
    return found


def test_sigterm_leaves_no_orphan_download(server: HostileServer, project: Path) -> None:
    """SIGTERM to a stage stuck on a trickling source: the stage dies, and so does its download child
    (its process group), instead of writing on in the background."""
    shutil.rmtree(project / "data", ignore_errors=True)
    write_params(project, read_params(project), **{"eval_clips.jfk.source": server.url("/trickle.wav"),
                                                   "fetch.attempt_timeout_s": 120})
    env = {**os.environ, "PYTHONPATH": str(project)}
    stage = subprocess.Popen([sys.executable, "-m", "stages.fetch", "eval", "jfk"], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = server.url("/trickle.wav")
    deadline = time.monotonic() + 30
    while not _download_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _download_processes(marker), "the download child never started"
    stage.send_signal(signal.SIGTERM)
    _, stderr = stage.communicate(timeout=30)
    assert stage.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    assert "error: stopped by SIGTERM; nothing was written" in stderr
    time.sleep(0.5)
    assert _download_processes(marker) == []
    nothing_under(project / "data" / "raw" / "eval" / "jfk")
    write_params(project, read_params(project), **{"fetch.attempt_timeout_s": 4})
