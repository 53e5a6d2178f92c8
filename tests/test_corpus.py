"""stages/corpus.py, requant/evalsets.py, requant/fleurs.py: the short-utterance corpus.

A user's manifest (CSV and JSONL) and its refusals; the demo corpus; FLEURS from a Hugging Face cache
holding a two-language miniature of the real layout (TSV + audio/dev.tar.gz), fetched by the stage in
its own process with the hub offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from demo.synth import synthesize
from requant.audio import read_wav
from requant.common import StageError
from requant.evalsets import read_manifest
from stages.corpus import build_corpus
from bench.hub_cache import hub_blob
from tests.params_helpers import make_params, raw_params

REPO = Path(__file__).resolve().parents[1]
REVISION = raw_params()["corpus"]["fleurs_revision"]
FLEURS = {"fr_fr": ["le chat dort", "nous partons demain", "il pleut encore"],
          "de_de": ["der hund schläft", "wir gehen morgen"]}


def _wav(path: Path, text: str, voice: str = "en-us") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, synthesize(text, voice), 16_000)


def _corpus(tmp_path: Path, manifest: str, name: str = "manifest.csv", **corpus) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(manifest, encoding="utf-8")
    params = make_params(preset="parakeet", corpus={"local_dir": str(folder), **corpus})  # a manifest wins over both
    build_corpus(params, tmp_path / "corpus")
    return tmp_path / "corpus"


def test_a_csv_manifest_is_decoded_and_capped_per_language(tmp_path: Path) -> None:
    _wav(tmp_path / "mine/clips/a.wav", "the cat sleeps")
    sf.write(tmp_path / "mine/clips/b.flac", synthesize("le chien court", "fr"), 22_050)  # any rate, any format
    _wav(tmp_path / "mine/clips/c.wav", "we go home")
    manifest = ("audio,text,lang,id\nclips/a.wav,The cat sleeps.,en,a1\nclips/b.flac,le chien court,fr,\n"
                "clips/c.wav,we go home,en,c1\n")
    out = _corpus(tmp_path, manifest, max_per_language=1)
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["id"], r["lang"], r["text"]) for r in lines] == [("a1", "en", "The cat sleeps."),
                                                                ("fr_00001", "fr", "le chien court")]
    audio = read_wav(out / lines[1]["audio"])
    assert lines[1]["duration_s"] == pytest.approx(len(audio) / 16_000, abs=1e-4) and audio.dtype == np.float32
    assert json.loads((out / "provenance.json").read_text())["utterances"] == {"en": 1, "fr": 1}


def test_a_jsonl_manifest_reads_the_same_rows(tmp_path: Path) -> None:
    _wav(tmp_path / "mine/a.wav", "the cat sleeps")
    (tmp_path / "mine/manifest.jsonl").write_text('{"audio": "a.wav", "text": "the cat sleeps", "lang": "en"}\n\n')
    rows = read_manifest(tmp_path / "mine/manifest.jsonl")
    assert [(r.id, r.lang, r.text, r.audio.name) for r in rows] == [("en_00000", "en", "the cat sleeps", "a.wav")]


@pytest.mark.parametrize(("manifest", "message"), [
    ("audio,text,lang\na.wav,the cat,en\nmissing.wav,a dog,en\n",
     r"manifest.csv line 3: audio 'missing.wav' does not exist \(paths are relative to .*mine/\)"),
    ("audio,text,lang\na.wav,,en\n", "manifest.csv line 2: the transcript \\(text\\) is empty"),
    ("audio,text\na.wav,the cat\n", "the header lacks column\\(s\\) lang"),
    ("audio,text,lang,id\na.wav,the cat,en,x\na.wav,the cat,en,x\n", "line 3: id 'x' must be unique"),
    ("audio,text,lang\na.wav,the cat,e n\n", "line 2: lang 'e n' must be a code"),
    ("audio,text,lang\n", "no rows"),
])
def test_bad_manifest_rows_are_named(tmp_path: Path, manifest: str, message: str) -> None:
    _wav(tmp_path / "mine/a.wav", "the cat")
    with pytest.raises(StageError, match=message):
        _corpus(tmp_path, manifest)
    assert not (tmp_path / "corpus").exists()


def test_unreadable_audio_and_bad_json_are_named(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/broken.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(StageError, match=r"manifest.csv line 2: .*broken.wav: cannot be decoded"):
        _corpus(tmp_path, "audio,text,lang\nbroken.wav,the cat,en\n")
    with pytest.raises(StageError, match="mine: both manifest.csv and manifest.jsonl; keep one"):
        _corpus(tmp_path, '{"audio": "broken.wav",\n', name="manifest.jsonl")
    (tmp_path / "mine/manifest.csv").unlink()
    with pytest.raises(StageError, match="manifest.jsonl line 1: not valid JSON"):
        _corpus(tmp_path, '{"audio": "broken.wav",\n', name="manifest.jsonl")


def test_demo_corpus_uses_held_out_voices_and_is_reproducible(tmp_path: Path) -> None:
    demo = {**raw_params()["presets"]["demo"], "corpus.max_per_language": 3}
    params = make_params(preset="demo", presets={"demo": demo},
                         corpus={"local_dir": str(tmp_path / "none")})
    first = build_corpus(params, tmp_path / "a")
    build_corpus(params, tmp_path / "b")
    assert [r["lang"] for r in first] == ["en_us"] * 3 + ["fr_fr"] * 3
    for name in ["manifest.jsonl", *(r["audio"] for r in first)]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert json.loads((tmp_path / "a/provenance.json").read_text())["voices"] == params.corpus.demo_voices


# ------------------------------------------------------------------ FLEURS from a Hugging Face cache
def fleurs_cache(root: Path) -> Path:
    """google/fleurs@REVISION with fr_fr and de_de dev splits in FLEURS' own layout."""
    repo_dir = root / "hub" / "datasets--google--fleurs"
    snapshot = repo_dir / "snapshots" / REVISION
    (repo_dir / "blobs").mkdir(parents=True)
    for config, texts in FLEURS.items():
        rows, archive = [], io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            for i, text in enumerate(texts):
                wav = io.BytesIO()
                sf.write(wav, synthesize(text, "fr" if config == "fr_fr" else "de"), 16_000, format="WAV")
                member = tarfile.TarInfo(f"dev/{1000 + i}.wav")
                member.size = len(wav.getvalue())
                tar.addfile(member, io.BytesIO(wav.getvalue()))
                rows.append(f"{i}\t{1000 + i}.wav\t{text.capitalize()}.\t{text}\t{' '.join(text)}\t16000\tFEMALE")
        hub_blob(repo_dir, snapshot, f"data/{config}/dev.tsv", ("\n".join(rows) + "\n").encode(), lfs=False)
        hub_blob(repo_dir, snapshot, f"data/{config}/audio/dev.tar.gz", archive.getvalue(), lfs=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REVISION)
    return repo_dir


def run_corpus_stage(root: Path, **corpus) -> subprocess.CompletedProcess[str]:
    raw = raw_params()
    raw["preset"] = "parakeet"
    raw["corpus"].update(local_dir=str(root / "none"), **corpus)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "stages.corpus"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def fleurs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleurs")
    fleurs_cache(root)
    return root


def test_the_parakeet_v3_alias_is_its_25_languages_each_once() -> None:
    from requant.fleurs import PARAKEET_V3, expand_languages

    assert expand_languages(["fr_fr", "parakeet_v3"]) == ["fr_fr", *(c for c in PARAKEET_V3 if c != "fr_fr")]
    assert len(expand_languages(["parakeet_v3"])) == 25


def test_fleurs_two_languages_from_the_pinned_revision(fleurs_root: Path) -> None:
    result = run_corpus_stage(fleurs_root, languages=["fr_fr", "de_de"], max_per_language=2)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (fleurs_root / "data/corpus/manifest.jsonl").read_text().splitlines()]
    assert [(r["id"], r["text"]) for r in rows] == [
        ("fr_fr_1000", "le chat dort"), ("fr_fr_1001", "nous partons demain"),
        ("de_de_1000", "der hund schläft"), ("de_de_1001", "wir gehen morgen")]
    provenance = json.loads((fleurs_root / "data/corpus/provenance.json").read_text())
    assert provenance["source"] == f"google/fleurs@{REVISION}" and provenance["split"] == "dev"
    archive = fleurs_root / "hub/datasets--google--fleurs/snapshots" / REVISION / "data/fr_fr/audio/dev.tar.gz"
    assert provenance["sha256"]["data/fr_fr/audio/dev.tar.gz"] == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_fleurs_refuses_a_corrupt_download_an_unknown_language_and_a_missing_one(fleurs_root: Path) -> None:
    unknown = run_corpus_stage(fleurs_root, languages=["fr_fr", "xx_yy"])
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "corpus.languages ['xx_yy'] are not FLEURS configs; valid ones: af_za" in unknown.stderr
    missing = run_corpus_stage(fleurs_root, languages=["it_it"])
    assert "cannot fetch data/it_it/dev.tsv from the dataset google/fleurs@" in missing.stderr
    tsv = Path(os.path.realpath(fleurs_root / "hub/datasets--google--fleurs/snapshots" / REVISION / "data/de_de/dev.tsv"))
    tsv.write_bytes(tsv.read_bytes().replace(b"hund", b"katz"))
    corrupt = run_corpus_stage(fleurs_root, languages=["de_de"])
    assert corrupt.returncode == 1 and "Traceback" not in corrupt.stderr
    assert "data/de_de/dev.tsv does not match the hash the repository states" in corrupt.stderr
