"""Bad params: every stage run alone gives the one line `dvc repro` gives, and a fixed file runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.faults.helpers import error_line, make_project, nothing_under, read_params, run_stage, succeeds, \
    write_params

CASES = [  # (params changes, words the error line must hold)
    ({"smooth.alpha": "abc"}, ["smooth.alpha", "'abc'", "a finite number"]),
    ({"seed": "abc"}, ["seed", "'abc'", "an integer"]),
    ({"windows.window_s": 0}, ["windows.window_s=0.0 must be > 0"]),
    ({"fetch.retries": -1}, ["fetch.retries=-1 must be >= 0"]),
    ({"quant.percentile": 0}, ["quant.percentile=0.0 must be > 0"]),
    ({"eval.section_s": -5}, ["eval.section_s=-5.0 must be > 0"]),
    ({"windows.count": "many"}, ["windows.count", "'many'", "an integer"]),
    ({"shard.allow_oversize": "yes"}, ["shard.allow_oversize", "true or false"]),
    ({"eval.decoder": "bf16"}, ["eval.decoder='bf16'"]),
    ({"fidelity.min_cosine": 2}, ["fidelity.min_cosine=2.0 must be >= -1 and <= 1"]),
    ({"preset": "nemo"}, ["preset 'nemo' is unknown"]),
    ({"speeches.veil.crop_s": 0}, ["speeches.veil needs start_s >= 0 and crop_s > 0"]),
    ({"eval_clips.jfk.crop_s": 410}, ["eval_clips.jfk.crop_s=410.0 exceeds eval.max_s=400.0"]),
    ({"fetch.attempt_timeout_s": float("nan")}, ["fetch.attempt_timeout_s", "a finite number"]),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("params") / "repo")


@pytest.fixture
def fresh(project: Path) -> Path:
    """The project with its good params.yaml back and no fetched evaluation clip."""
    good = read_params(project)
    shutil.rmtree(project / "data", ignore_errors=True)
    yield project
    write_params(project, good)


@pytest.mark.parametrize(("changes", "words"), CASES, ids=[next(iter(c)) for c, _ in CASES])
def test_bad_value(fresh: Path, changes: dict, words: list[str]) -> None:
    good = read_params(fresh)
    write_params(fresh, read_params(fresh), **changes)
    _fails_then_reruns_with(fresh, good, words)


def _fails_then_reruns_with(root: Path, good: dict, words: list[str]) -> None:
    result = run_stage(root, "fetch", "eval", "jfk")
    error_line(result, "params.yaml", *words)
    nothing_under(root / "data" / "raw" / "eval" / "jfk")
    write_params(root, good)
    succeeds(run_stage(root, "fetch", "eval", "jfk"))
    assert (root / "data" / "raw" / "eval" / "jfk" / "provenance.json").is_file()


def test_speech_key_with_a_space(fresh: Path) -> None:
    good = read_params(fresh)
    broken = read_params(fresh)
    broken["speeches"]["de gaulle"] = broken["speeches"].pop("veil")
    write_params(fresh, broken)
    _fails_then_reruns_with(fresh, good, ["['de gaulle']", "letters, digits"])


def test_a_group_missing_when_a_stage_runs_alone(fresh: Path) -> None:
    good = read_params(fresh)
    broken = read_params(fresh)
    del broken["quant"]
    write_params(fresh, broken)
    result = run_stage(fresh, "int8")  # int8 reads params before anything else
    error_line(result, "params.yaml", "the 'quant' group is missing")
    nothing_under(fresh / "models" / "variants" / "int8_smoothquant")
    write_params(fresh, good)
    succeeds(run_stage(fresh, "fetch", "eval", "jfk"))


def test_a_yaml_error_when_a_stage_runs_alone(fresh: Path) -> None:
    good = read_params(fresh)
    (fresh / "params.yaml").write_text((fresh / "params.yaml").read_text().replace("seed: 0", "seed: [0"))
    _fails_then_reruns_with(fresh, good, ["not valid YAML at line", "restore it from git"])
