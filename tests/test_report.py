"""Metric files, plot and model card from evaluation results (stages/report.py, requant/model_card.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from requant.asr import encoder_digest
from requant.variants import VARIANTS
from requant.common import StageError, write_json
from requant.evaluation import split_timing
from requant.scoring import score_sections
from requant.params import parse_params
from stages.report import (CARD_FILE, COST_FILE, COSTS_FILE, HEADLINE_FILE, LANG_PLOT_FILE, PLOT_FILE, RESULTS_FILE, SUMMARY_FILE, WER_FILE,
                           build_report)
from requant.scoring import Section

REPO = Path(__file__).resolve().parents[1]
SECTIONS = [Section(0, 0.0, 60.0), Section(1, 60.0, 120.0), Section(2, 120.0, 150.0)]
REFERENCES = ["one two three four", "five six seven eight", "nine ten"]


def params(preset: str = "demo"):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["preset"] = preset
    return parse_params(raw)


def corpus(edits: list[int]) -> dict:
    """One language of 4 utterances of 5 words (20 characters) each, with these word edits."""
    items = {"ids": [f"u{i}" for i in range(4)], "ref_words": [5] * 4, "edits": edits, "ref_chars": [20] * 4,
             "char_edits": [e * 2 for e in edits]}
    return {"utterances": 4, "wer_pct": round(100 * sum(edits) / 20, 4), "cer_pct": round(100 * sum(edits) / 40, 4),
            "items": items}


def fake_eval(variant: str, hypotheses: list[str], normalize: str = "lower_nopunct",
              edits: tuple[list[int], list[int]] = ([0, 0, 0, 0], [1, 0, 0, 1]), decodings: tuple = ("greedy",)) -> dict:
    """An evaluate stage output; every decoding scores the same (the beam table is tested on its own)."""
    scored = {**score_sections(SECTIONS, REFERENCES, hypotheses, normalize), "decode_s": 0.5,
              "vs_truth": {"wer_pct": 12.5, "ref_words": 8, "substitutions": 1, "deletions": 0, "insertions": 0,
                           "edits": 1}}
    clip = {"duration_s": 150.0, "load_s": 0.2, "encode_s": 1.0, "baseline_rss_mb": 100.0, "peak_rss_mb": 150.0}
    return {
        "variant": variant,
        "encoder_files": ["encoder-model.onnx"],
        "decoder": "fp32",
        "normalize": normalize,
        "reference": "long clips: fp32 short clips; corpus: true transcripts",
        "decodings": list(decodings),
        "beam": {"width": 4} if "beam" in decodings else None,
        "long": {"jfk": {**clip, "by_decoding": {d: scored for d in decodings}},
                 "fast": {**clip, "by_decoding": {d: {**scored, "vs_truth": None} for d in decodings}}},
        "corpus": {d: {"en_us": corpus(edits[0]), "fr_fr": corpus(edits[1])} for d in decodings},
        "cost": {"encoder_mb": 10.5, "load_s": 0.2, "encode_s": 2.0, "pass_s": 2.0, "rtf": 0.0067, "corpus_rtf": 0.01,
                 "decode_s": {d: 1.0 + 3 * (d == "beam") for d in decodings},
                 "corpus_decode_s": {d: 0.5 + 2 * (d == "beam") for d in decodings},
                 "baseline_rss_mb": 100.0, "peak_rss_mb": 150.0, "rss_delta_mb": 50.0},
    }


def build_encoder(root: Path, variant: str, content: bytes | None = None) -> Path:
    """A stand-in for the variant's encoder file (the report reads only its bytes, for the sha256)."""
    spec = VARIANTS[variant]
    path = root / spec.folder / spec.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content or variant.encode())
    return path


def write_eval(root: Path, variant: str, evaluation: dict) -> None:
    """metrics/eval/<variant>.json and metrics/timing/<variant>.json, as the evaluate stage writes them, measured
    on the encoder built in root (a stand-in is made if there is none)."""
    if variant in VARIANTS:  # (an unknown one is refused before any encoder is looked at)
        if not (root / VARIANTS[variant].folder / VARIANTS[variant].name).is_file():
            build_encoder(root, variant)
        evaluation = {**evaluation, "encoder_sha256": encoder_digest(variant, root)}
    accuracy, timing = split_timing(evaluation)
    write_json(root / "metrics/eval" / f"{variant}.json", accuracy)
    write_json(root / "metrics/timing" / f"{variant}.json", timing)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_eval(tmp_path, "fp32", fake_eval("fp32", REFERENCES))
    write_eval(tmp_path, "int8_smoothquant", fake_eval("int8_smoothquant",
               ["one two three four", "five six", ""], edits=([1, 1, 1, 1], [1, 0, 0, 1])))
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
    assert set(wer) == {"fp32", "int8_smoothquant"}
    sq = wer["int8_smoothquant"]
    # flat, short names: `dvc exp show` columns such as int8_smoothquant.long fit a terminal
    assert set(sq) == {f"{s}{k}" for s in ("long", "corpus") for k in ("", "_delta", "_lo", "_hi")}
    # 2 deletions in section 1 and 2 in section 2 of each clip, over 20 reference words in all
    assert (sq["long"], sq["long_delta"]) == (40.0, 40.0)
    assert wer["fp32"] == {f"{s}{k}": 0.0 for s in ("long",) for k in ("", "_delta", "_lo", "_hi")} | {
        "corpus": 5.0, "corpus_delta": 0.0, "corpus_lo": 0.0, "corpus_hi": 0.0}
    # corpus: en 20 % (every utterance one edit, fp32 none: the interval is exactly [20, 20]), fr 10 % both
    assert (sq["corpus"], sq["corpus_delta"], sq["corpus_lo"], sq["corpus_hi"]) == (15.0, 10.0, 10.0, 10.0)
    summary = json.loads((root / SUMMARY_FILE).read_text())["greedy"]
    sets = {s["name"]: s for s in summary["sets"]}
    assert list(sets) == ["jfk", "fast", "long_pooled", "en_us", "fr_fr", "corpus_macro"]
    assert sets["long_pooled"]["sections"] == 6 and sets["en_us"]["utterances"] == 4
    en = summary["variants"]["int8_smoothquant"]["en_us"]
    assert en == {"wer_pct": 20.0, "cer_pct": 10.0, "delta_pct": 20.0, "ci_low_pct": 20.0, "ci_high_pct": 20.0,
                  "significant": True, "floor_pct": 0.0, "called": True,  # no floors measured: the interval decides
                  "cer": {"delta_pct": 10.0, "ci_low_pct": 10.0, "ci_high_pct": 10.0, "significant": True}}
    assert summary["variants"]["int8_smoothquant"]["fr_fr"]["significant"] is False
    assert summary["sections"]["int8_smoothquant"]["jfk"] == {"00_0-60s": 0.0, "01_60-120s": 50.0,
                                                              "02_120-150s": 100.0}
    cost = json.loads((root / COST_FILE).read_text())
    assert set(cost["fp32"]) == {"encoder_mb", "load_s", "peak_rss_mb", "rss_delta_mb", "rtf", "corpus_rtf",
                                 "decode_s"}
    for plot in (PLOT_FILE, LANG_PLOT_FILE):
        assert (root / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outputs_are_byte_identical_on_a_rerun(root: Path):
    build_report(params(), root)
    first = {p: (root / p).read_bytes() for p in (WER_FILE, COST_FILE, SUMMARY_FILE, PLOT_FILE, LANG_PLOT_FILE,
                                                  CARD_FILE, RESULTS_FILE, HEADLINE_FILE)}
    build_report(params(), root)
    assert first == {p: (root / p).read_bytes() for p in first}


def test_demo_card_says_plainly_it_is_not_parakeet(root: Path):
    build_report(params("demo"), root)
    card = (root / CARD_FILE).read_text()
    assert "tiny synthetic demo model, not of Parakeet" in card
    # the summary table: bold where the interval excludes 0 (en_us); fp32 shows its WER alone
    # one clip's 3 sections: all drawn from the error-free one has p = 1/27 > 2.5 %, so 0 stays inside;
    # two clips pooled: p = 1/729, so the pooled interval excludes 0
    assert ("| int8 SmoothQuant (this) | 40.00 (+40.00 [+0.00, +100.00]) | 40.00 (+40.00 [+0.00, +100.00]) | "
            "**40.00 (+40.00 [+") in card
    assert "| **20.00 (+20.00 [+20.00, +20.00])** | 10.00 (+0.00 [+0.00, +0.00]) | **15.00 (+10.00" in card
    assert "| fp32 (unchanged) | 0.00 | 0.00 | 0.00 | 0.00 | 10.00 | 5.00 |" in card
    assert "| int8 SmoothQuant (this) | 20.00 / 10.00 | 10.00 / 5.00 | 15.00 / 7.50 |" in card  # WER / CER
    assert "| fast | en | 150 s | 3 | synthesized, voice `en-us+f2`, rate x1.35 |" in card
    # calibration sources with their ids and window counts
    assert "| villepin | fr | 390 s from 0 s | `youtube:RNxU-tN8qNc` | synthesized, voice `fr+m1` | 2 | 1 |" in card
    assert "| nixon | en | 60 s from 0 s | `youtube:ZEOGJJ7UKFM` | synthesized, voice `en-us+m6` | 0 | 0 |" in card
    assert "smooth.alpha: 0.5" in card
    assert "| int8 SmoothQuant (this) | 0.9991 | 0.9995 | 0.04 | 0.03 | MatMul 3, QuantizeLinear 6 |" in card
    assert "(not available: its stage has not run)" in card  # no smoothquant.json here
    results = (root / RESULTS_FILE).read_text()
    assert results.startswith("# Results\n") and "not of Parakeet" in results
    headline = (root / HEADLINE_FILE).read_text()  # the README's: the short table and the picks
    assert "not of Parakeet" in headline and "| int8 SmoothQuant (this) | " in headline
    assert "Ship this for" in headline and "Every evaluation set" not in headline


def test_parakeet_card_names_the_upstream_model(root: Path):
    build_report(params("parakeet"), root)
    card = (root / CARD_FILE).read_text()
    assert "not of Parakeet" not in card
    assert "istupakov/parakeet-tdt-0.6b-v3-onnx" in card and "license: cc-by-4.0" in card


def test_no_evaluations_is_a_clear_error(tmp_path: Path):
    with pytest.raises(StageError, match="run `dvc repro evaluate`"):
        build_report(params(), tmp_path)


def test_mixed_normalisations_are_refused(root: Path):
    write_eval(root, "fp16", fake_eval("fp16", REFERENCES, normalize="raw"))
    with pytest.raises(StageError, match="different normalisations"):
        build_report(params(), root)


def test_unknown_variant_file_is_refused(root: Path):
    write_eval(root, "bf16", fake_eval("bf16", REFERENCES))
    with pytest.raises(StageError, match="bf16"):
        build_report(params(), root)


def test_variants_scored_on_other_utterances_are_refused(root: Path):
    other = fake_eval("fp16", REFERENCES)
    other["corpus"]["greedy"]["en_us"]["items"]["ids"][0] = "someone_else"
    write_eval(root, "fp16", other)
    with pytest.raises(StageError, match="fp16.json was scored on other clips or utterances than fp32.json"):
        build_report(params(), root)


def test_recommendations_need_both_the_long_passes_and_the_corpus(root: Path):
    from requant.model_card import recommendations
    from requant.summary import summarize

    from requant.summary import decoding_view

    evals = {"fp32": fake_eval("fp32", REFERENCES),
             "nbits_w8": fake_eval("nbits_w8", REFERENCES, edits=([0, 0, 0, 0], [1, 0, 0, 1])),
             "nbits_w4": fake_eval("nbits_w4", REFERENCES, edits=([1, 1, 1, 1], [1, 0, 0, 1]))}
    evals["nbits_w4"]["cost"]["encoder_mb"] = 3.0  # smaller, but 10 points worse on the corpus
    evals = {name: decoding_view(e, "greedy") for name, e in evals.items()}
    picks = dict((use.split(" (")[0], n) for use, n in recommendations(summarize(evals, 200, 0), evals))
    assert picks["smallest download"] == "nbits_w8"


def test_greedy_and_beam_side_by_side(tmp_path: Path):
    both = ("greedy", "beam")
    write_eval(tmp_path, "fp32", fake_eval("fp32", REFERENCES, decodings=both))
    beam = fake_eval("int8_smoothquant", REFERENCES, decodings=both)
    beam["corpus"]["beam"]["en_us"] = corpus([1, 0, 0, 0])  # the beam is worse on one English utterance
    write_eval(tmp_path, "int8_smoothquant", beam)
    build_report(params(), tmp_path)
    wer = json.loads((tmp_path / WER_FILE).read_text())
    assert {"long", "long_beam", "corpus_beam_hi"} <= set(wer["int8_smoothquant"])
    assert wer["int8_smoothquant"]["corpus_beam"] == 7.5  # (5 % en + 10 % fr) / 2
    card = (tmp_path / CARD_FILE).read_text()
    # per set: greedy / beam WER; the decode time of the beam relative to greedy is a run-time figure: costs.md
    assert "| int8 SmoothQuant (this) | 0.00 / 0.00 | 0.00 / 0.00 | 0.00 / 0.00 | 0.00 / 5.00 | 10.00 / 10.00 | " \
           "5.00 / 7.50 |\n" in card
    assert "4.0x" not in card and "| int8 SmoothQuant (this) | " in (tmp_path / COSTS_FILE).read_text()
    assert "| 4.0x | 5.0x |" in (tmp_path / COSTS_FILE).read_text()
    # a comparison row in git decoded otherwise (another preset on the same encoder bytes) is left out...
    write_eval(tmp_path, "int8_dynamic", fake_eval("int8_dynamic", REFERENCES))
    build_report(params(), tmp_path)
    assert "int8_dynamic" not in json.loads((tmp_path / WER_FILE).read_text())
    # ...but this run's own evaluations must agree
    write_eval(tmp_path, "int8_smoothquant", fake_eval("int8_smoothquant", REFERENCES))
    with pytest.raises(StageError, match="decoded differently"):
        build_report(params(), tmp_path)


def test_the_browser_pick_breaks_a_size_tie_by_memory():
    from requant.model_card import recommendations
    from requant.summary import decoding_view, summarize

    evals = {"fp32": fake_eval("fp32", REFERENCES), "int8_smoothquant": fake_eval("int8_smoothquant", REFERENCES),
             "int8_blockwise": fake_eval("int8_blockwise", REFERENCES)}
    for name, mb, rss in (("int8_smoothquant", 3.88, 2400.0), ("int8_blockwise", 3.90, 800.0)):
        evals[name]["cost"].update(encoder_mb=mb, peak_rss_mb=rss)
    evals = {name: decoding_view(e, "greedy") for name, e in evals.items()}
    picks = {use.split(" (")[0]: n for use, n in recommendations(summarize(evals, 200, 0), evals)}
    assert picks["smallest download"] == "int8_smoothquant" and picks["browser / WASM"] == "int8_blockwise"


def web_check_figures(passes: dict[str, float | None]) -> dict:
    """metrics/web_check.json as bench.web_check writes it: each page precision's 30 s pass at 1 and 2 threads
    (None: the page failed to run it)."""
    def run(pass_s: float | None, threads: int) -> dict:
        return {"load_s": pass_s and 1.0, "encode_s": pass_s and pass_s - 2, "decode_s": pass_s and 2.0, "pass_s": pass_s,
                "rtf": pass_s and pass_s / 30, "decode_ms_per_token": 20.0, "tokens": 100, "decoder_calls": 500,
                "threads": threads,
                "peak_mb": 2000, "error": None if pass_s else "encoder-model.onnx.data: the browser cannot read it"}
    decoder = {"blank_bias": 3.8, "tokens": 100, "frames": 375, "frames_per_token": 3.75, "unbiased_tokens": 3750}
    return {"audio_s": 30.0, "chromium": "Chromium 156", "decoder": {"target_frames_per_token": 3.5, "decoders": {
                "decoder_joint-model.onnx": decoder, "decoder_joint-model.int8.onnx": decoder}},
            "precisions": {name: {"encoder_mb": 100, "threads": {"1": run(t and 2 * t, 1), "2": run(t, 2)}}
                           for name, t in passes.items()}}


def test_the_browser_pick_comes_from_the_browser_table(tmp_path: Path):
    """With metrics/web_check.json, the browser pick is the candidate with the fastest page pass at the most
    threads (not the smallest file), and docs/results.md carries the browser table."""
    for name, mb in (("fp32", 9.0), ("int8_smoothquant", 3.0), ("int8_blockwise", 3.1), ("fp16", 5.0)):
        evaluation = fake_eval(name, REFERENCES)
        evaluation["cost"]["encoder_mb"] = mb
        write_eval(tmp_path, name, evaluation)
    build_report(params(), tmp_path)
    assert "browser / WASM (smallest" in (tmp_path / RESULTS_FILE).read_text()  # unmeasured: the size rule
    web = web_check_figures({"fp32": None, "int8": 20.0, "int8_blockwise": 15.0, "fp16": 25.0})
    write_json(tmp_path / "metrics/web_check.json", web)
    build_report(params(), tmp_path)
    results = (tmp_path / RESULTS_FILE).read_text()
    picks = results.split("Ship this for")[1]
    assert "- **browser (fastest within 0.5 pt; headless Chromium, WASM, 2 threads, 30 s pass on the " \
           "Parakeet-size twin, `make web-check`):** int8 SmoothQuant, blockwise\n" in picks
    assert "## In the browser" in results and "| int8_blockwise | 100 | 28.0 | 13.0 | 1.0 | 2.0 (100; 20.0, 4.0) | 15.0 | 0.50 | 2.0 | runs |" in results
    assert "| fp32 | 100 | – | – | – | – | – | – | 2.0 | encoder-model.onnx.data: the browser cannot read it |" in results


def test_a_difference_inside_the_noise_floor_is_not_called(root: Path):
    """en_us's +20 pt has an interval excluding 0; a floor of 25 pt (bench.floors) makes it 'within noise'."""
    build_report(params("demo"), root)
    assert "| **20.00 (+20.00 [+20.00, +20.00])** |" in (root / CARD_FILE).read_text()
    spread = {"min": 0.0, "max": 25.0, "range": 25.0, "std": 10.0}
    floors = {"preset": "demo", "k": 5, "noise": 1e-6, "decoding": "greedy", "shared_with": {},
              "perturbation": {"int8_smoothquant": {"en_us": spread}}, "calibration": {"int8_smoothquant": {}}}
    write_json(root / "metrics/floors.json", floors)
    build_report(params("demo"), root)
    card, results = (root / CARD_FILE).read_text(), (root / RESULTS_FILE).read_text()
    assert "| 20.00 (+20.00 [+20.00, +20.00]) |" in card and "**20.00 (+20.00" not in card
    summary = json.loads((root / SUMMARY_FILE).read_text())["greedy"]["variants"]["int8_smoothquant"]
    assert summary["en_us"]["significant"] is True and summary["en_us"]["called"] is False
    assert summary["en_us"]["floor_pct"] == 25.0
    assert "within noise" in results and "| 0.00 / 25.00 (σ 10.00) / n/a" not in results


def test_figures_measured_on_other_encoders_are_left_out(root: Path):
    """A comparison row that this run did not evaluate again (params.yaml compare) keeps its figures in git; once
    its encoder changes they describe another model, so the report leaves them out and says so, and the same
    for the long-form table."""
    write_eval(root, "int8_matmul_only", fake_eval("int8_matmul_only", REFERENCES))
    longform = {"clips": ["long_en"], "context": [32, 32], "overlap_s": 4.0, "variants": {},
                "encoder_sha256": {v: encoder_digest(v, root) for v in ("fp32", "int8_smoothquant")}}
    write_json(root / "metrics/longform.json", longform)
    built = params()
    built = dataclasses.replace(built, compare=dataclasses.replace(built.compare, builds=["all"]))
    build_report(built, root)
    assert "int8_matmul_only" in json.loads((root / WER_FILE).read_text())
    results = (root / RESULTS_FILE).read_text()
    assert "Left out" not in results
    not_run = next(line for line in results.splitlines() if line.startswith("Not run: "))
    assert "int8_mixed" in not_run and "int8_matmul_only" not in not_run and "`make compare`" in not_run

    build_encoder(root, "int8_matmul_only", b"rebuilt with another alpha")
    build_encoder(root, "int8_smoothquant", b"rebuilt with another alpha")
    write_eval(root, "int8_smoothquant", fake_eval("int8_smoothquant", REFERENCES))  # a core row: evaluated again
    build_report(built, root)
    assert set(json.loads((root / WER_FILE).read_text())) == {"fp32", "int8_smoothquant"}
    results = (root / RESULTS_FILE).read_text()
    assert "Left out: int8_matmul_only; their figures in git were measured on other encoders" in results
    assert "`metrics/longform.json` was measured on other encoders" in (root / CARD_FILE).read_text()

    (root / VARIANTS["int8_matmul_only"].folder / VARIANTS["int8_matmul_only"].name).unlink()  # not built at all
    build_report(built, root)
    results = (root / RESULTS_FILE).read_text()
    assert "Left out" not in results and "int8_matmul_only" in results.split("Not run: ")[1].splitlines()[0]

    build_encoder(root, "int8_matmul_only", b"rebuilt with another alpha")  # built, by an earlier run
    build_report(params(), root)  # compare.builds off: a comparison encoder in the workspace does not count
    assert "int8_matmul_only" in (root / RESULTS_FILE).read_text().split("Not run: ")[1].splitlines()[0]


def test_forced_run_table_derives_the_default_from_the_comparison_run() -> None:
    """docs/costs.md's forced-run table: with only the comparison run measured, the default column is that run
    less the stages only the comparisons add; a default run of its own replaces it."""
    from requant.model_card import repro_time_section

    machine = {"cpu_model": "Test CPU", "cpus": 2}
    compare = {"commit": "abc1234", "machine": machine, "total_s": 300.0,
               "stages": {"diagnose": 100.0, "longform@all": 120.0, "compare@int8_mixed": 50.0, "evaluate@fp32": 30.0}}
    text = repro_time_section({"default": None, "compare": compare})
    assert "| `longform@all` | off | 120 |" in text and "| `diagnose` | off | 100 |" in text
    assert "| **every stage** | **0.5 min** | **5.0 min** |" in text and "less the stages" in text
    default = {**compare, "commit": "def5678", "total_s": 600.0, "stages": {"diagnose": 600.0}}
    text = repro_time_section({"default": default, "compare": compare})
    assert "| **every stage** | **10.0 min** | **5.0 min** |" in text and "a fresh clone at def5678" in text
    assert "not measured" in repro_time_section({})


def test_forced_run_table_orders_tied_stages_by_name() -> None:
    """Stages of equal time come in name order, not in a set's order (which follows string hashing, new every
    run): the same figures must give the same docs/costs.md."""
    from requant.model_card import repro_time_section

    names = [f"evaluate@v{i:02d}" for i in range(12)]
    run = {"commit": "abc1234", "machine": {"cpu_model": "Test CPU", "cpus": 2}, "total_s": 120.0,
           "stages": {name: 10.0 for name in names}}
    rows = [line for line in repro_time_section({"default": run}).splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == names


def weight_only_grid() -> dict:
    """metrics/weight_only_grid.json as bench.weight_only_grid writes it: two recipes and a sweep of three K."""
    def row(long: float, corpus: float, mb: float) -> dict:
        cells = {name: {"wer_pct": 2.0 + delta, "delta_pct": delta, "ci_low_pct": delta - 0.3, "ci_high_pct": delta + 0.3}
                 for name, delta in (("long_pooled", long), ("corpus_macro", corpus))}
        return {"parakeet_mb": mb, "sets": cells, "heldout_rel_error": 0.05, "calib_rel_error": 0.001}
    recipe = {"bits": 4, "block_size": 32, "symmetric": True, "accuracy_level": 4, "aware": True, "gptq": True}
    return {"tolerance_pt": 0.5, "rows": {"aware+gptq b32 sym": row(0.7, 0.2, 424), "rtn b32 sym": row(4.3, 0.6, 424)},
            "mixed": {"recipe": recipe, "smallest_within": 4,
                      "sweep": {"12": row(0.38, 0.03, 454), "2": row(0.82, 0.2, 429), "4": row(0.48, -0.03, 434)}}}


def test_the_results_page_and_recipes_md_carry_the_4bit_table(root: Path, tmp_path: Path):
    from requant.weight_only_table import BEGIN, END, render_into

    build_report(params(), root)
    assert "4-bit recipes side by side" not in (root / RESULTS_FILE).read_text()  # not measured: no section
    write_json(root / "metrics/weight_only_grid.json", weight_only_grid())
    build_report(params(), root)
    results = (root / RESULTS_FILE).read_text()
    assert "## 4-bit recipes side by side (demo model)" in results
    table = results[results.index("| recipe |"):]
    assert table.index("| rtn b32 sym |") < table.index("| aware+gptq b32 sym |")  # round-to-nearest first
    assert "| aware+gptq b32 sym | 424 | 2.70 (+0.70 [+0.40, +1.00]) | 2.20 (+0.20 [-0.10, +0.50]) | 0.0500 |" in table
    sweep = table[table.index("| K in 8 bits |"):]
    assert [line.split(" | ")[0] for line in sweep.splitlines()[2:5]] == ["| 2", "| 4", "| 12"]  # by K, not as text
    assert "| 4 | 434 | 2.48 (+0.48" in sweep and sweep.splitlines()[3].endswith("| yes |")
    assert "Smallest K within 0.5 pt of fp32 on both: **4**." in sweep
    doc = tmp_path / "recipes.md"
    doc.write_text(f"# Recipes\n\nbefore\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    render_into(doc, weight_only_grid())
    text = doc.read_text()
    assert "old table" not in text and "before" in text and "after" in text and "| rtn b32 sym |" in text
    doc.write_text("# Recipes\n")
    with pytest.raises(ValueError, match="no .* section to fill"):
        render_into(doc, weight_only_grid())


def test_with_many_languages_the_corpus_table_has_a_row_per_language_with_intervals() -> None:
    """FLEURS' 25 languages: a row per language (and the macro average), each variant's WER / CER with its
    differences to fp32 and their intervals; up to four languages it stays a column per language."""
    from requant.fleurs import PARAKEET_V3
    from requant.model_card import corpus_table

    def cell(wer: float, delta: float | None) -> dict:
        ci = {"delta_pct": delta, "ci_low_pct": (delta or 0) - 0.5, "ci_high_pct": (delta or 0) + 0.5,
              "significant": bool(delta and delta > 0.5)}
        return {"wer_pct": wer, "cer_pct": wer / 2, **ci, "cer": {**ci, "delta_pct": (delta or 0) / 2}}

    langs = list(PARAKEET_V3)
    evals = {"fp32": {"corpus": {lang: {"utterances": 10 + i} for i, lang in enumerate(langs)}}}
    summary = {"fp32": {k: cell(5.0, None) for k in [*langs, "corpus_macro"]},
               "int8_dynamic": {k: cell(9.0, 4.0) for k in [*langs, "corpus_macro"]}}
    text = corpus_table(summary, evals)
    assert "| language | utterances | fp32 (unchanged) | int8 dynamic (stock recipe) |" in text
    assert "| de_de | 13 | 5.00 / 2.50 | 9.00 / 4.50 (**+4.00 [+3.50, +4.50]** / **+2.00 [+3.50, +4.50]**) |" in text
    assert text.count("\n| ") == len(langs) + 1  # after the header: a row per language, the macro row
    two = corpus_table({n: {k: row[k] for k in ("en_us", "fr_fr", "corpus_macro")} for n, row in summary.items()},
                       {"fp32": {"corpus": {k: evals["fp32"]["corpus"][k] for k in ("en_us", "fr_fr")}}})
    assert "| encoder | en_us WER / CER | fr_fr WER / CER | corpus_macro WER / CER |" in two
