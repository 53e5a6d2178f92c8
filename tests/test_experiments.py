"""The whole pipeline under DVC in a temporary repository, then an experiment on smooth.alpha.

`dvc repro` on short synthesized clips with the demo model (or a random one of the same layout when
the trained model is not in the checkout), a commit, `dvc exp run -S smooth.alpha=0.9`, and then
`dvc metrics diff` must show the change while the stages upstream of SmoothQuant stay cached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.serialize import modify_yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]
# the `dvc exp show` commands docs/experiments.md promises under 100 columns
NARROW_TABLES = re.findall(r"dvc exp show --drop '\.\*' --keep '([^']+)' +# < 100 columns",
                           (ROOT / "docs/experiments.md").read_text())
pytestmark = pytest.mark.dvc  # a few minutes: the full pipeline twice over, on a tiny model


def copy_project(dest: Path) -> None:
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".gitignore"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", ".work", "*.pyc")
    for folder in ("requant", "stages", "demo", "calibration_audio", "eval_corpus", ".dvc/plots"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    (dest / "metrics").mkdir(exist_ok=True)
    from stages.report import BENCH_FIGURES  # in git, not dvc outs

    for path in BENCH_FIGURES:
        shutil.copyfile(ROOT / path, dest / path)
    demo_model = dest / yaml.safe_load((ROOT / "params.yaml").read_text())["model"]["demo_dir"]
    if not (demo_model / "encoder-model.onnx").is_file():
        from tests.random_model import build_full_random_model

        build_full_random_model(demo_model, seed=0)


def make_it_quick(params_file: Path) -> None:
    """Two short speeches, short windows and a short evaluation clip; the real stages otherwise.

    Edited the way `dvc exp run -S` edits params.yaml (DVC's round-trip YAML writer), so a file that
    `-S` would break fails here too.
    """
    with modify_yaml(params_file) as params:
        for name in list(params["speeches"])[2:]:
            del params["speeches"][name]
        for speech in params["speeches"].values():
            speech["crop_s"] = 12.0
        for name in list(params["eval_clips"])[2:]:
            del params["eval_clips"][name]
        for clip in params["eval_clips"].values():
            clip["crop_s"] = 20.0
        for name in list(params["longform_clips"])[1:]:
            del params["longform_clips"][name]
        for clip in params["longform_clips"].values():
            clip["crop_s"] = 30.0  # two 20 s windows, one seam
        params["longform"]["variants"] = ["fp32", "int8_smoothquant"]
        params["compare"]["longform"] = ["all"]  # the heaviest comparisons, off by default, on here
        params["compare"]["builds"] = ["all"]
        params["compare"]["rows"] = {v: f"models/variants/{v}" for v in ("fp32_sharded", "int8_dynamic",
                                                                          "int8_matmul_only")}
        params["presets"]["demo"]["corpus.max_per_language"] = 6
        params["presets"]["demo"]["leaderboard.recordings"] = 1  # one 30 s recording per leaderboard set
        params["leaderboard"]["demo_minutes"] = 0.5
        params["windows"].update(window_s=4.0, count=4, heldout_per_speaker=1)
        params["eval"]["section_s"] = 8.0
        params["fidelity"]["min_cosine"] = 0.5  # a random model's int8 may land under 0.99; alpha 0.9 must run


def run(cwd: Path, *args: str) -> str:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PYTHONPATH": str(cwd), "PATH": path}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def commit(repo: Path, message: str) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", message)


def test_alpha_experiment_shows_in_metrics_diff(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy_project(repo)
    make_it_quick(repo / "params.yaml")
    run(repo, "git", "init", "-q")
    commit(repo, "project")

    first = run(repo, *DVC, "repro")
    assert "Running stage 'evaluate@int8_smoothquant'" in first and "Running stage 'package'" in first
    wer = json.loads((repo / "metrics/wer.json").read_text())
    assert {"fp32", "fp16", "fp32_sharded", "int8_dynamic", "int8_smoothquant", "int8_stock"} <= set(wer)
    assert wer["fp32_sharded"] == wer["fp32"]  # a pure repack scores exactly as fp32
    assert (repo / "models/release/README.md").read_text() == (repo / "reports/MODEL_CARD.md").read_text()
    assert "Running stage" not in run(repo, *DVC, "repro")  # nothing left to do
    commit(repo, "pipeline outputs")

    # one comparison row switched off: its figures in git were measured on the alpha-0.5 encoder
    experiment = run(repo, *DVC, "exp", "run", "-S", "smooth.alpha=0.9", "-S", "~compare.rows.int8_matmul_only")
    for stage in ("smoothquant", "int8", "fidelity", "evaluate@int8_smoothquant", "longform@all", "report"):
        assert f"Running stage '{stage}'" in experiment
    for stage in ("fetch@villepin", "windows", "base_model", "fp16", "shard", "int8_dynamic", "evaluate@fp32",
                  "compare@int8_dynamic", "reference@jfk", "corpus", "compare@int8_matmul_only"):
        assert f"Running stage '{stage}'" not in experiment
    assert "int8_matmul_only" in wer and "int8_matmul_only" not in json.loads((repo / "metrics/wer.json").read_text())
    assert "Left out: int8_matmul_only;" in (repo / "docs/results.md").read_text()
    assert "int8_dynamic" in json.loads((repo / "metrics/wer.json").read_text())  # its encoder did not change

    diff = json.loads(run(repo, *DVC, "metrics", "diff", "--json"))
    alpha = diff["metrics/smoothquant.json"]["alpha"]
    assert (alpha["old"], alpha["new"]) == (0.5, 0.9)
    fidelity = diff["metrics/fidelity.json"]
    assert any(key.startswith("variants.int8_smoothquant.") and value["diff"] for key, value in fidelity.items())

    assert len(NARROW_TABLES) == 2
    for keep in NARROW_TABLES:  # the docs' tables, with an experiment's name in them
        table = run(repo, "env", "COLUMNS=400", *DVC, "exp", "show", "--no-pager", "--drop", ".*", "--keep", keep)
        assert "int8_smoothquant.long" in table and max(len(line.rstrip()) for line in table.splitlines()) < 100, table

    shown = json.loads(run(repo, *DVC, "exp", "show", "--json"))
    from tools.alpha_sweep import sweep_points

    points = sweep_points(shown)
    assert set(points) == {0.5, 0.9}
    assert all("int8_smoothquant" in p for p in points.values())
