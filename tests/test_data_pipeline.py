"""The data stages under DVC: `dvc repro` in a temporary copy of the repository, then a no-op repro.

Short crops (a few seconds) and 2 s windows keep it quick; everything else is the real dvc.yaml,
params.yaml and stage code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from requant.common import read_json

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]
TARGETS = ["windows", "fetch_eval", "decode_eval"]
pytestmark = pytest.mark.dvc  # slow-ish (about a minute), still part of the default run


def _copy_repo(dest: Path) -> None:
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", ".work", "model", "*.pyc")
    for folder in ("requant", "stages", "demo", "calibration_audio", "eval_corpus"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)


def _shorten(params_file: Path) -> None:
    params = yaml.safe_load(params_file.read_text())
    for i, speech in enumerate(params["speeches"].values()):
        speech["crop_s"] = 4.0 if i % 3 == 0 else 7.0
    for clip in params["eval_clips"].values():
        clip["crop_s"] = 6.0
    params["windows"].update(window_s=2.0, count=10)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def _run(cwd: Path, *args: str) -> str:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `python` in dvc.yaml = this one
    env = {**os.environ, "PYTHONPATH": str(cwd), "PATH": path}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_repro_then_nothing_to_do(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _copy_repo(repo)
    _shorten(repo / "params.yaml")
    _run(repo, "git", "init", "-q")
    first = _run(repo, *DVC, "repro", *TARGETS)
    assert "Running stage 'windows'" in first and "Running stage 'fetch@veil'" in first

    index = read_json(repo / "data/windows/index.json")
    windows = np.load(repo / "data/windows/windows.npy")
    assert windows.shape == (len(index), 32000)
    assert sum(row["split"] == "calib" for row in index) == 10
    assert {row["speaker"] for row in index if row["split"] == "heldout"} == set(
        yaml.safe_load((repo / "params.yaml").read_text())["speeches"])
    for clip in yaml.safe_load((repo / "params.yaml").read_text())["eval_clips"]:
        assert (repo / "data/raw/eval" / clip / "transcript.txt").read_text().strip()
        assert (repo / "data/audio/eval" / clip / "audio.wav").stat().st_size > 6 * 16000 * 4

    second = _run(repo, *DVC, "repro", *TARGETS)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second or "didn't change" in second
    status = _run(repo, *DVC, "status", "--with-deps", *TARGETS)
    assert "up to date" in status and "changed" not in status

    # forcing a re-run gives byte-identical outputs: the pipeline stays clean
    _run(repo, *DVC, "repro", "--force", "--single-item", "fetch_eval", "decode_eval", "fetch@chirac", "decode@chirac")
    status = _run(repo, *DVC, "status", "--with-deps", *TARGETS)
    assert "up to date" in status and "changed" not in status
