"""A DVC remote: one clone computes and pushes, another pulls every result without recomputing.
The remote is a local folder here; the README shows the same with S3 or SSH."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.test_data_pipeline import _copy_repo, _run, _shorten

DVC = [sys.executable, "-m", "dvc"]
TARGETS = ["fetch_eval", "decode_eval"]
pytestmark = pytest.mark.dvc


def test_push_then_pull_in_another_clone(tmp_path: Path) -> None:
    first, remote = tmp_path / "first", tmp_path / "remote"
    _copy_repo(first)
    _shorten(first / "params.yaml")
    _run(first, "git", "init", "-q")
    _run(first, "git", "config", "user.email", "ci@example.org")
    _run(first, "git", "config", "user.name", "ci")
    _run(first, *DVC, "repro", *TARGETS)
    _run(first, *DVC, "remote", "add", "-d", "shared", str(remote))
    _run(first, *DVC, "push", *TARGETS)
    _run(first, "git", "add", "-A")
    _run(first, "git", "commit", "-qm", "results")

    second = tmp_path / "second"
    _run(tmp_path, "git", "clone", "-q", str(first), str(second))
    assert not (second / "data" / "audio" / "eval" / "jfk").exists()  # only DVC's .gitignore files came with git
    pulled = _run(second, *DVC, "pull", *TARGETS)
    assert "fetched" in pulled.lower() or "added" in pulled.lower() or "A " in pulled
    for path in ("data/audio/eval/jfk/audio.wav", "data/raw/eval/jfk/provenance.json"):
        assert (second / path).read_bytes() == (first / path).read_bytes()
    again = _run(second, *DVC, "repro", *TARGETS)
    assert "Running stage" not in again  # nothing recomputed
    shutil.rmtree(remote)
