"""The fault suite's fixtures: a small copy of the project, stage runs as the pipeline runs them, and
the assertions every case makes (exit code, one error line naming the input, no traceback, nothing
under a final output name)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
# the project copied into each case: this checkout, or FAULTS_PROJECT (an older checkout, to show which
# cases fail on the code before a fix)
SOURCE = Path(os.environ.get("FAULTS_PROJECT", ROOT))
STAGE_TIMEOUT_S = 180  # every case is seconds long; a hang fails the test instead of the suite


def make_project(dest: Path, **changes: Any) -> Path:
    """stages/, demo/ (with the model), params.yaml (crops of a few seconds) and dvc.yaml in dest."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", ".work", "*.pyc")
    for folder in ("requant", "stages", "demo"):
        shutil.copytree(SOURCE / folder, dest / folder, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore", ".dvc/config"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SOURCE / name, dest / name)
    (dest / "calibration_audio").mkdir()
    (dest / "eval_corpus").mkdir()
    params = yaml.safe_load((SOURCE / "params.yaml").read_text())
    for speech in params["speeches"].values():
        speech["crop_s"] = 3.0
    for clip in [*params.get("eval_clips", {}).values(), *params.get("longform_clips", {}).values()]:
        clip["crop_s"] = 3.0
    if "corpus" in params:
        params["presets"]["demo"]["corpus.max_per_language"] = 3
    if "eval_clip" in params:  # FAULTS_PROJECT: a checkout from before eval_clips
        params["eval_clip"]["crop_s"] = 3.0
    params["windows"].update(window_s=1.0, count=8)
    params["fetch"].update(retries=0, backoff_s=0.01, timeout_s=3)
    if SOURCE == ROOT:
        params["fetch"]["attempt_timeout_s"] = 4
    write_params(dest, params, **changes)
    return dest


def read_params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def write_params(root: Path, params: dict, **changes: Any) -> None:
    for dotted, value in changes.items():
        node, *keys = [params, *dotted.split(".")]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(root: Path, module: str, *args: str, timeout: float = STAGE_TIMEOUT_S,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m stages.<module> args` in root, as dvc.yaml runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    return subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=root, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess[str], *names: str, code: int = 1) -> str:
    """Assert the run failed cleanly: exit `code`, exactly one `error:` line naming every one of
    `names`, and no traceback anywhere. Returns the line."""
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def nothing_under(final: Path) -> None:
    """No final output, and no temporary sibling of it either."""
    assert not final.exists(), final
    assert not list(final.parent.glob(f".{final.name}.tmp-*")) if final.parent.exists() else True


def succeeds(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
