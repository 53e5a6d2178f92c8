"""The dress rehearsal's Hugging Face cache: huggingface_hub, offline, resolves the twin placed there,
and the base_model stage builds models/base from it exactly as it would from a download."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from bench.rehearse import REPO_ID, REVISION, copy_project, place_twin_in_hf_cache, render, variant_figures
from demo.fastconformer import TINY, build_random_model
from demo.export import quantize_stock
from requant.common import sha256_file

ROOT = Path(__file__).resolve().parents[1]
BUILD = f"""
from pathlib import Path
from stages.base_model import build_base_model
from requant.params import ModelParams
build_base_model(ModelParams(hf_repo="{REPO_ID}", hf_revision="{REVISION}", demo_dir="unused"), is_demo=False,
                 out_dir=Path("base"))
"""


def test_the_twin_resolves_offline_from_a_hub_cache(tmp_path: Path) -> None:
    from bench.twin import nemo128

    model = build_random_model(tmp_path / "twin", TINY.replace(n_layers=1))
    quantize_stock(model)
    (model / "nemo128.onnx").write_bytes(nemo128().read_bytes())
    digests = {p.name: sha256_file(p) for p in model.iterdir()}
    snapshot = place_twin_in_hf_cache(model, tmp_path / "hf")
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(digests) and all(
        p.is_symlink() for p in snapshot.iterdir())
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", BUILD], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"revision {REVISION} is not pinned here: sha256 sums are not checked" in done.stderr
    assert {p.name: sha256_file(p) for p in (tmp_path / "base").iterdir()} == digests
    assert not any(p.is_symlink() for p in (tmp_path / "base").iterdir())  # no symlinks into the hub's cache
    # the model files hard-linked to the hub's blobs (stored once), the small ones copied
    linked = {p.name for p in (tmp_path / "base").iterdir() if p.samefile(snapshot / p.name)}
    assert linked == {"encoder-model.onnx", "encoder-model.onnx.data", "encoder-model.int8.onnx",
                      "decoder_joint-model.onnx", "decoder_joint-model.int8.onnx"}


def test_the_summary_reads_the_evaluations_as_the_evaluate_stage_writes_them() -> None:
    """Per-variant figures come from the evaluate stage's own files (accuracy and timing apart), here the
    demo's in git, and render as the docs' table."""
    variants = variant_figures(ROOT / "metrics")
    assert {"fp32", "int8_smoothquant", "int8_local"} <= set(variants)
    fp32 = variants["fp32"]
    assert fp32["encoder_mb"] > 1 and fp32["encode_s"] > 0 and fp32["beam_decode_s"] > 0 and fp32["clip_s"] > 300
    assert 0 <= fp32["overall_wer_pct"] < 10 and set(fp32["corpus_wer_pct"]) == {"en_us", "fr_fr"}
    stages = {"base_model": {"wall_s": 50.0, "peak_rss_gb": 1.4, "disk_gb": 10.0}}
    text = render({"twin": {"layers": 24, "encoder_mb": 2477, "blank_bias": 3.5}, "total_s": 60.0, "twin_s": 10.0,
                   "peak_rss_gb": 1.4, "disk_gb": 10.0, "stages": stages, "variants": variants})
    assert f"| fp32 | {fp32['encoder_mb']:.0f} MB | {fp32['load_s']:.1f} s | {fp32['encode_s']:.0f} s |" in text


def test_the_cache_counts_only_the_bytes_nothing_else_links(tmp_path: Path) -> None:
    """DVC's hardlink cache shares its objects with the workspace: only an unlinked object (a copy, an old
    version) costs disk of its own, and the summary says so beside the end figure."""
    from bench.rehearse import unlinked_bytes

    cache, workspace = tmp_path / "cache", tmp_path / "ws"
    cache.mkdir(), workspace.mkdir()
    (cache / "linked").write_bytes(b"x" * 1000)
    os.link(cache / "linked", workspace / "model")
    (cache / "old").write_bytes(b"y" * 300)
    assert unlinked_bytes(cache) == 300 and unlinked_bytes(tmp_path / "none") == 0
    text = render({"twin": {"layers": 24, "encoder_mb": 2477}, "total_s": 60.0, "twin_s": 10.0, "peak_rss_gb": 1.4,
                   "disk_gb": 27.0, "disk_end_gb": 25.5, "cache_own_gb": 0.3, "stages": {}, "variants": {}})
    assert "**27.0 GB** of disk at most, 25.5 GB at the end, of which DVC's cache holds 0.3 GB of its own" in text


def test_the_comparisons_on_top_count_only_the_stages_that_worked() -> None:
    """`--compare` runs every stage again with the comparisons on: dvc skips the done ones in seconds, and only
    the new stages and the real re-runs make the second table."""
    from bench.rehearse import comparison_summary

    figures = {"wall_s": 50.0, "peak_rss_gb": 1.4, "disk_gb": 10.0}
    done = {"stages": {"base_model": figures, "report": figures},
            "compare_stages": {"base_model": {**figures, "wall_s": 1.8}, "diagnose@all": {**figures, "wall_s": 600.0,
                                                                                           "peak_rss_gb": 6.4},
                               "report": {**figures, "wall_s": 30.0, "disk_gb": 12.0}}}
    compare = comparison_summary(done, ["base_model", "diagnose@all", "report"])
    assert compare["stage_order"] == ["diagnose@all", "report"] and compare["total_s"] == 630.0
    assert (compare["peak_rss_gb"], compare["disk_gb"]) == (6.4, 12.0)
    text = render({"twin": {"layers": 24, "encoder_mb": 2477, "blank_bias": 3.5}, "total_s": 100.0, "twin_s": 10.0,
                   "peak_rss_gb": 1.4, "disk_gb": 10.0, "stages": done["stages"], "variants": {}, "compare": compare})
    assert "**10 min** more, peak RSS **6.40 GB**" in text and "| `diagnose@all` | 600 s | 6.40 GB | 10.0 GB |" in text
    assert "No comparison run was rehearsed" in render({**{"twin": {"layers": 24, "encoder_mb": 2477, "blank_bias": 3.5}},
                                           "total_s": 1.0, "twin_s": 1.0, "peak_rss_gb": 1.0, "disk_gb": 1.0,
                                           "stages": done["stages"], "variants": {}})


def test_a_rehearsal_cut_short_says_which_stages_did_not_run() -> None:
    stages = {"base_model": {"wall_s": 50.0, "peak_rss_gb": 1.4, "disk_gb": 10.0}}
    text = render({"twin": {"layers": 24, "encoder_mb": 2477, "blank_bias": 3.5}, "total_s": 3600.0, "twin_s": 10.0,
                   "peak_rss_gb": 1.4, "disk_gb": 10.0, "stages": stages, "stage_order": ["base_model"],
                   "not_run": ["int8_mixed", "report"], "variants": {}})
    assert "**60 min** so far" in text and "**Cut short**: 2 stages not run yet: `int8_mixed`, `report`." in text
    assert "| `base_model` | 50 s | 1.40 GB | 10.0 GB |" in text and "(no variant evaluated yet)" in text


def test_the_project_copy_holds_every_figure_the_report_reads_that_no_stage_of_the_run_writes(tmp_path: Path) -> None:
    # a real parakeet run has them from git; without them the rehearsal's report stage failed after 4 hours
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    written = [next(iter(out)) if isinstance(out, dict) else out
               for stage in stages.values() if not str(stage.get("foreach", "")).startswith("${compare")
               for kind in ("outs", "metrics", "plots") for out in stage.get("do", stage).get(kind, [])]
    read = [dep for dep in stages["report"]["deps"] if dep.startswith("metrics/") and (ROOT / dep).is_file()]
    needed = [dep for dep in read if dep not in written]
    assert "metrics/longform.json" in needed and "metrics/fidelity.json" not in needed
    copy_project(tmp_path / "repo")
    assert [dep for dep in needed if not (tmp_path / "repo" / dep).is_file()] == []


def test_a_rehearsal_of_another_preset_points_its_model_and_leaderboard_set_at_the_hub_cache(tmp_path: Path) -> None:
    """parakeet_ctc pins its own revision (via parakeet_v2): the rehearsal's must win, and the leaderboard's set
    is a one-recording dataset repo in the cache, as the stages will read it."""
    import pyarrow.parquet as pq

    from bench.rehearse import preset_params
    from requant.params import parse_params

    params = preset_params(yaml.safe_load((ROOT / "params.yaml").read_text()), "parakeet_ctc", 0.25, tmp_path, 0)
    p = parse_params(params)
    assert (p.preset, p.model.layout, p.model.hf_repo) == ("parakeet_ctc", "ctc", "istupakov/parakeet-ctc-0.6b-onnx")
    assert p.model.hf_revision == REVISION and p.leaderboard.recordings == 1
    assert list(p.leaderboard_sets) == ["earnings21"] and p.leaderboard_sets["earnings21"].revision == REVISION
    assert params["compare"] == {"longform": [], "builds": [], "rows": {}}
    shard = (tmp_path / "hub/datasets--hf-audio--asr-leaderboard-longform/snapshots" / REVISION
             / "earnings21/test-00000-of-00001.parquet")
    table = pq.read_table(shard)
    assert table.num_rows == 1 and table.column("audio_length")[0].as_py() == 15.0
