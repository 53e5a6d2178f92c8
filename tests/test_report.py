"""Metric files, plot and model card from evaluation results (stages/report.py, requant/model_card.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from requant.common import StageError, write_json
from stages.evaluate import score_sections
from requant.params import parse_params
from stages.report import CARD_FILE, COST_FILE, PLOT_FILE, RESULTS_FILE, WER_FILE, build_report
from requant.scoring import Section

REPO = Path(__file__).resolve().parents[1]
SECTIONS = [Section(0, 0.0, 60.0), Section(1, 60.0, 120.0), Section(2, 120.0, 150.0)]
REFERENCES = ["one two three four", "five six seven eight", "nine ten"]


def params(preset: str = "demo"):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["preset"] = preset
    return parse_params(raw)


def fake_eval(variant: str, hypotheses: list[str], normalize: str = "lower_nopunct") -> dict:
    return {
        "variant": variant,
        "encoder_files": ["encoder-model.onnx"],
        "decoder": "fp32",
        "normalize": normalize,
        "reference": "fp32 encoder, each section transcribed on its own",
        "duration_s": 150.0,
        **score_sections(SECTIONS, REFERENCES, hypotheses, normalize),
        "vs_truth": {"wer_pct": 12.5, "ref_words": 8, "substitutions": 1, "deletions": 0, "insertions": 0, "edits": 1},
        "cost": {"encoder_mb": 10.5, "load_s": 0.2, "pass_s": 1.0, "rtf": 0.0067, "baseline_rss_mb": 100.0,
                 "peak_rss_mb": 150.0, "rss_delta_mb": 50.0},
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_json(tmp_path / "metrics/eval/fp32.json", fake_eval("fp32", REFERENCES))
    write_json(tmp_path / "metrics/eval/int8_smoothquant.json", fake_eval("int8_smoothquant",
               ["one two three four", "five six", ""]))
    write_json(tmp_path / "metrics/fidelity.json", {
        "heldout_windows": 8, "reference": {"name": "fp32"},
        "variants": {"int8_smoothquant": {"cosine_min": 0.9991, "cosine_mean": 0.9995, "rel_error_max": 0.04,
                                          "rel_error_mean": 0.03, "ops": {"MatMul": 3, "QuantizeLinear": 6}}},
    })
    write_json(tmp_path / "data/windows/index.json", [
        {"speaker": "villepin", "start_s": 0.0, "split": "calib"},
        {"speaker": "villepin", "start_s": 30.0, "split": "calib"},
        {"speaker": "villepin", "start_s": 60.0, "split": "heldout"},
    ])
    return tmp_path


def test_wer_and_cost_metrics_schema(root: Path):
    build_report(params(), root)
    wer = json.loads((root / WER_FILE).read_text())
    assert wer["normalize"] == "lower_nopunct"
    assert set(wer) == {"normalize", "reference", "fp32", "int8_smoothquant"}
    sq = wer["int8_smoothquant"]
    assert set(sq) == {"overall_wer_pct", "worst_section_wer_pct", "worst_section", "vs_truth_wer_pct", "sections"}
    # 2 deletions in section 1 and 2 in section 2, over 10 reference words in all.
    assert sq["overall_wer_pct"] == 40.0
    assert sq["sections"] == {"00_0-60s": 0.0, "01_60-120s": 50.0, "02_120-150s": 100.0}
    assert (sq["worst_section"], sq["worst_section_wer_pct"]) == ("02_120-150s", 100.0)
    assert wer["fp32"]["overall_wer_pct"] == 0.0
    cost = json.loads((root / COST_FILE).read_text())
    assert set(cost["fp32"]) == {"encoder_mb", "load_s", "peak_rss_mb", "rss_delta_mb", "rtf"}
    assert (root / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outputs_are_byte_identical_on_a_rerun(root: Path):
    build_report(params(), root)
    first = {p: (root / p).read_bytes() for p in (WER_FILE, COST_FILE, PLOT_FILE, CARD_FILE, RESULTS_FILE)}
    build_report(params(), root)
    assert first == {p: (root / p).read_bytes() for p in first}


def test_demo_card_says_plainly_it_is_not_parakeet(root: Path):
    build_report(params("demo"), root)
    card = (root / CARD_FILE).read_text()
    assert "tiny synthetic demo model, not of Parakeet" in card
    assert "| int8 SmoothQuant (this) | 10.5 MB | 40.00% | 100.00% (120-150 s) | 12.50% | 150 MB |" in card
    assert "| 60 to 120 s | 0.00% | 50.00% |" in card
    # calibration sources with their ids and window counts
    assert "| villepin | fr | 390 s from 0 s | `youtube:RNxU-tN8qNc` | synthesized, voice `fr+m1` | 2 | 1 |" in card
    assert "| nixon | en | 60 s from 0 s | `youtube:ZEOGJJ7UKFM` | synthesized, voice `en-us+m6` | 0 | 0 |" in card
    assert "smooth.alpha: 0.5" in card
    assert "| int8 SmoothQuant (this) | 0.9991 | 0.9995 | 0.04 | 0.03 | MatMul 3, QuantizeLinear 6 |" in card
    assert "(not available: its stage has not run)" in card  # no smoothquant.json here
    results = (root / RESULTS_FILE).read_text()
    assert results.startswith("## Results\n") and "not of Parakeet" in results


def test_parakeet_card_names_the_upstream_model(root: Path):
    build_report(params("parakeet"), root)
    card = (root / CARD_FILE).read_text()
    assert "not of Parakeet" not in card
    assert "istupakov/parakeet-tdt-0.6b-v3-onnx" in card and "license: cc-by-4.0" in card


def test_no_evaluations_is_a_clear_error(tmp_path: Path):
    with pytest.raises(StageError, match="run `dvc repro evaluate`"):
        build_report(params(), tmp_path)


def test_mixed_normalisations_are_refused(root: Path):
    write_json(root / "metrics/eval/fp16.json", fake_eval("fp16", REFERENCES, normalize="raw"))
    with pytest.raises(StageError, match="different normalisations"):
        build_report(params(), root)


def test_unknown_variant_file_is_refused(root: Path):
    write_json(root / "metrics/eval/bf16.json", fake_eval("bf16", REFERENCES))
    with pytest.raises(StageError, match="bf16"):
        build_report(params(), root)
