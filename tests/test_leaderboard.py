"""The leaderboard's long-form track: Whisper's normalizer on Whisper's own examples, a set fetched offline from a
Hugging Face dataset repo in the real layout (parquet files of embedded audio) with its bad inputs, and the
scoring stage on demo recordings (corpus WER as the leaderboard counts it, intervals against fp32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from bench.hub_cache import recordings_parquet, write_repo
from demo.synth import make_speech
from requant.leaderboard_report import leaderboard_tables
from requant.params import ModelParams
from requant.scoring import normalize
from stages.base_model import build_base_model
from stages.int8_dynamic import build_dynamic_int8
from stages.leaderboard import score_leaderboard
from stages.leaderboard_data import build_leaderboard_data
from tests.params_helpers import make_params, raw_params

REPO = Path(__file__).resolve().parents[1]
DATASET, REVISION = "hf-audio/asr-leaderboard-longform", "d6797370d3189c618e722721ab5b6c9be78c022c"


@pytest.mark.parametrize(("text", "expected"), [  # openai/whisper tests/test_normalizer.py and the leaderboard's
    ("Mr. Park visited Assoc. Prof. Kim Jr.", "mister park visited associate professor kim junior"),
    ("nineteen ninety nine", "1999"), ("two point five million", "2500000"), ("Let's", "let us"),
    ("10km", "10 km"), ("ninety percent", "90%"), ("two dollars and seventy cents", "$2.70"),
    ("[Laughter] Good morning (inaudible) ladies and gentlemen.", "good morning ladies and gentlemen"),
    ("I'm gonna colour the centre, mate!", "i am going to color the center mate"),
])
def test_the_leaderboard_normalizer_is_whisper_s(text: str, expected: str) -> None:
    assert " ".join(normalize(text, "whisper_en")) == expected


@pytest.fixture(scope="module")
def base_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root with the demo model as models/base (what fp32's section references run on)."""
    root = tmp_path_factory.mktemp("leaderboard")
    build_base_model(ModelParams("unused", "unused", str(REPO / "demo/model")), True, root / "models/base")
    return root


def dataset_cache(root: Path) -> dict[str, str]:
    """hf-audio/asr-leaderboard-longform@REVISION with earnings21/test-00000-of-00001.parquet: three recordings
    in the leaderboard's layout (bench.hub_cache)."""
    rows = [make_speech("en", "en-us+m3", 20.0 + 5 * i, 900 + i) for i in range(3)]
    rows = [(audio, text.capitalize() + ".") for audio, text in rows]
    write_repo(root / "hub", "datasets", DATASET, REVISION,
               {"earnings21/test-00000-of-00001.parquet": recordings_parquet(rows)})
    return {f"{i:03d}": text for i, (_, text) in enumerate(rows)}


def run_data_stage(root: Path, **spec: str) -> subprocess.CompletedProcess[str]:
    raw = raw_params()
    raw["preset"] = "parakeet"
    raw["leaderboard"]["recordings"] = 2
    raw["leaderboard_sets"] = {"earnings21": {"repo": DATASET, "revision": REVISION,
                                              "files": "earnings21/test-*.parquet", **spec}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "stages.leaderboard_data"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_set_is_read_from_its_dataset_repo_offline_with_its_bad_inputs_named(base_root: Path) -> None:
    texts = dataset_cache(base_root)
    done = run_data_stage(base_root)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = base_root / "data/leaderboard/earnings21"
    assert sorted(p.name for p in folder.iterdir()) == ["000", "001"]  # leaderboard.recordings: the first two
    for name in ("000", "001"):
        assert (folder / name / "reference/truth.txt").read_text().strip() == texts[name]
        assert sf.info(folder / name / "audio/audio.wav").duration == pytest.approx(20.0 + 5 * int(name))
        assert json.loads((folder / name / "reference/sections.json").read_text())[0]["text"]["greedy"]
        provenance = json.loads((folder / name / "raw/provenance.json").read_text())
        assert provenance["source"] == (f"hf://datasets/{DATASET}@{REVISION}/earnings21/test-00000-of-00001.parquet"
                                        f"#{int(name)}")
    for spec, message in (
        ({"files": "earnings21/validation-*.parquet"}, "no file of hf-audio/asr-leaderboard-longform@d679"),
        ({"revision": "0" * 40}, f"cannot fetch earnings21/test-*.parquet from the dataset {DATASET}@{'0' * 40}"),
    ):
        failed = run_data_stage(base_root, **spec)
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
        assert message in failed.stderr
    blob = Path(os.path.realpath(base_root / "hub" / f"datasets--{DATASET.replace('/', '--')}" / "snapshots"
                                 / REVISION / "earnings21/test-00000-of-00001.parquet"))
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])  # a truncated download
    truncated = run_data_stage(base_root)
    assert truncated.returncode == 1 and "Traceback" not in truncated.stderr
    assert "does not match the hash the repository states" in truncated.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["000", "001"]  # the last complete output is kept


def test_demo_recordings_are_scored_as_the_leaderboard_scores_them(base_root: Path) -> None:
    build_dynamic_int8(base_root / "models/base/encoder-model.onnx", base_root / "models/variants/int8_dynamic")
    demo = {**raw_params()["presets"]["demo"], "leaderboard.recordings": 1}
    p = make_params(preset="demo", presets={"demo": demo},
                    leaderboard={"demo_minutes": 1.5, "variants": ["fp32", "int8_dynamic"]})
    found = build_leaderboard_data(p, base_root / "data/leaderboard", base_root)
    assert found == {name: ["000"] for name in ("earnings21", "earnings22", "tedlium")}
    data = score_leaderboard(p, base_root)
    for name, rows in data["sets"].items():
        truth = rows["int8_dynamic"]["truth"]
        assert rows["int8_dynamic"]["corpus_wer_pct"] == pytest.approx(100 * truth["edits"] / truth["ref_words"],
                                                                       abs=1e-4)
        assert "vs_fp32" not in rows["fp32"] and {"delta_pct", "ci_low_pct"} <= set(rows["int8_dynamic"]["vs_fp32"])
    assert data["context"] == p.leaderboard.context and data["normalizer"] == "whisper_en"
    from stages.leaderboard import split_timing

    scores, timing = split_timing(json.loads(json.dumps(data)))
    assert timing["tedlium"]["fp32"]["encode_s"] > 0 and "encode_s" not in scores["sets"]["tedlium"]["fp32"]
    text = leaderboard_tables(data, True)
    assert "**Demo figures**" in text and "| int8 dynamic (stock recipe) |" in text
    assert leaderboard_tables({"skipped": "off", "sets": {}}, False).startswith("(not run: leaderboard.recordings")
