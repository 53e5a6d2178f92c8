"""DVC's own views of the figures: the data series the report and diagnose stages write, the templates in
.dvc/plots, and `dvc plots diff main <branch>` overlaying two revisions, rendered offline in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from requant.common import read_json, write_json
from requant.plots import DIAGNOSIS_SERIES, LANGUAGE_SERIES, SECTION_SERIES, diagnosis_series, language_series
from requant.plots import section_series
from requant.summary import BASELINE, MACRO, decoding_view, summarize
from stages.report import read_evaluations, section_key
from tests.test_experiments import DVC, commit, run
from tests.test_web import CHROMIUM, needs_chromium

ROOT = Path(__file__).resolve().parents[1]
# each vega view, the field it plots, and whether the branch below moves it
VEGA_PLOTS = {"metrics/plots/section_wer.json": ("wer_pct", True), "metrics/plots/language_wer.json": ("wer_pct", True),
              "diagnosis_output_error": ("output_rel_error", False), "diagnosis_broken_matmuls": ("matmuls_broken", True)}
CHANGED = "int8_smoothquant"  # the variant a smooth.alpha experiment moves


def test_series_carry_the_figures_of_the_summary() -> None:
    """Built from the committed evaluations, each point equals the figure metrics/eval_summary.json holds."""
    evals = read_evaluations(ROOT / "metrics/eval")
    first = evals[BASELINE]["decodings"][0]  # the first decoding heads every table, and the series
    stored = read_json(ROOT / "metrics/eval_summary.json")[first]
    views = {name: decoding_view(e, first) for name, e in evals.items() if name in stored["variants"]}  # kept rows
    sections = section_series(views)
    assert len(sections) == sum(len(c["sections"]) for e in views.values() for c in e["long"].values())
    by_key = {clip: {section_key(s): s for s in c["sections"]} for clip, c in views[BASELINE]["long"].items()}
    for point in sections:
        section = next(s for s in by_key[point["clip"]].values() if s["start_s"] == point["section_start_s"])
        assert point["wer_pct"] == stored["sections"][point["variant"]][point["clip"]][section_key(section)]
    summary = summarize(views, 200, 0)
    langs = list(views[BASELINE]["corpus"])
    languages = language_series(summary, langs)
    assert {p["language"] for p in languages} == {*langs, MACRO}
    for point in languages:
        cell = stored["variants"][point["variant"]][point["language"]]
        assert (point["wer_pct"], point["delta_pct"]) == (cell["wer_pct"], cell["delta_pct"])


def test_diagnosis_series_counts_the_matmuls_past_the_threshold_at_each_length() -> None:
    report = {"break_rel_error": 0.05, "variants": {"int8_x": {
        "output_rel_error": {"10": 0.01, "390": 0.08, "120": 0.02},
        "matmuls": {"a": {"10": 0.01, "120": 0.06, "390": 0.2}, "b": {"10": 0.03, "120": 0.04, "390": 0.05}}}}}
    assert diagnosis_series(report) == [  # lengths in time order, not in the JSON's string order
        {"variant": "int8_x", "length_s": 10.0, "output_rel_error": 0.01, "worst_matmul_rel_error": 0.03,
         "matmuls_broken": 0},
        {"variant": "int8_x", "length_s": 120.0, "output_rel_error": 0.02, "worst_matmul_rel_error": 0.06,
         "matmuls_broken": 1},
        {"variant": "int8_x", "length_s": 390.0, "output_rel_error": 0.08, "worst_matmul_rel_error": 0.2,
         "matmuls_broken": 1}]  # 0.05 is at the threshold, not past it


@pytest.fixture(scope="module")
def two_revisions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy of the project's plot declarations and committed figures on `main`, and a branch
    `alpha` where the SmoothQuant variant's series moved, as a smooth.alpha experiment would move them."""
    repo = tmp_path_factory.mktemp("plots") / "repo"
    for name in ("dvc.yaml", "params.yaml", ".dvc/config", ".gitignore"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, repo / name)
    shutil.copytree(ROOT / ".dvc/plots", repo / ".dvc/plots")
    shutil.copytree(ROOT / "metrics/plots", repo / "metrics/plots")
    (repo / "web").symlink_to(ROOT / "web", target_is_directory=True)  # the page's vega scripts
    run(repo, "git", "init", "-q", "-b", "main")
    commit(repo, "main")
    run(repo, "git", "checkout", "-q", "-b", "alpha")
    for path, field in ((SECTION_SERIES, "wer_pct"), (LANGUAGE_SERIES, "wer_pct"), (DIAGNOSIS_SERIES, "matmuls_broken")):
        points = read_json(repo / path)
        for point in points:
            if point["variant"] == CHANGED:
                point[field] = (point[field] or 0) + 7
        write_json(repo / path, points)
    commit(repo, "alpha")
    return repo


def test_plots_diff_overlays_the_branch_on_main(two_revisions: Path) -> None:
    shown = json.loads(run(two_revisions, *DVC, "plots", "diff", "main", "alpha", "--json"))["data"]
    assert set(VEGA_PLOTS) == {name for name, views in shown.items() if views[0]["type"] == "vega"}
    for name, (field, moves) in VEGA_PLOTS.items():
        (view,) = shown[name]
        assert view["revisions"] == ["main", "alpha"]
        values: dict[tuple, dict[str, float]] = {}
        for point in view["content"]["data"]["values"]:
            key = tuple(point.get(k) for k in ("variant", "clip", "section_start_s", "language", "length_s"))
            values.setdefault(key, {})[point["rev"]] = point[field]
        assert all(len(by_rev) == 2 for by_rev in values.values()), name
        moved = {key[0] for key, by_rev in values.items() if by_rev["main"] != by_rev["alpha"]}
        assert moved == ({CHANGED} if moves else set()), name
        if moves:
            assert all(by_rev["alpha"] == pytest.approx((by_rev["main"] or 0) + 7)
                       for key, by_rev in values.items() if key[0] == CHANGED), name


@needs_chromium
def test_the_plots_page_draws_every_view_offline(two_revisions: Path) -> None:
    """The HTML page (.dvc/plots/offline.html) loads vega from web/node_modules: no request leaves the machine."""
    run(two_revisions, *DVC, "plots", "diff", "main", "alpha")
    page = two_revisions / "dvc_plots/index.html"
    assert "cdn.jsdelivr" not in page.read_text()
    result = subprocess.run(["node", str(ROOT / "web/render-plots.mjs"), str(page)], capture_output=True, text=True,
                            timeout=180, env={"CHROMIUM": str(CHROMIUM), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    drawn = json.loads(result.stdout.splitlines()[-1])
    assert drawn == {"views": len(VEGA_PLOTS), "drawn": len(VEGA_PLOTS), "refused": [], "errors": []}
