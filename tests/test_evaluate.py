"""Reference, evaluate and the release folder end to end, on a random model in Parakeet's layout.

Real onnx-asr sessions on a short synthesized clip; the variants are made by the real transform
stages (shard, fp16, dynamic int8). A random model's transcripts are nonsense, which is fine here:
these tests check the plumbing (pairing, splitting, counting, files), not accuracy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_asr
import pytest
import soundfile as sf
import yaml

from demo.synth import synthesize
from requant.asr import assemble_model_dir, load_asr, load_clip, transcribe
from requant.model_check import verify_model_dir
from stages.base_model import demo_model
from stages.blockwise import build_blockwise
from requant.common import StageError
from requant.evalsets import clip_audio
from requant.evaluation import merge_timing
from stages.evaluate import evaluate
from requant.scoring import score_sections
from stages.fp16 import build_fp16
from stages.int8_dynamic import build_dynamic_int8
from stages.package import package
from requant.asr import decodings_for
from requant.params import BeamParams, BlockwiseParams, EvalParams, NbitsRecipe, parse_params
from stages.corpus import build_corpus
from requant.clips import build_reference
from requant.scoring import Section, split_by_section
from stages.nbits import build_nbits
from stages.shard import shard_encoder
from tests.random_model import build_full_random_model

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["the small boat sails across the quiet lake", "we choose to go there this year",
             "the garden is green after the rain"]
PARAMS = EvalParams(section_s=2.0, max_s=400.0, normalize="lower_nopunct", decoder="fp32",
                    decodings=["greedy", "beam"])
CLIPS = ["long", "second"]
CORPUS = [("fr_fr", "le chat dort sur la table"), ("fr_fr", "nous partons demain matin"),
          ("en_us", "the dog runs in the park"), ("en_us", "she reads a long letter"), ("en_us", "we eat bread")]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: models/base, the sharded/fp16/int8 variants, the clip and its transcript."""
    root = tmp_path_factory.mktemp("project")
    base = root / "models/base"
    base.mkdir(parents=True)
    demo_model(build_full_random_model(root / "random-model", seed=0), base)  # as the base_model stage does
    verify_model_dir(base)
    variants = root / "models/variants"
    audio = np.concatenate([np.concatenate([synthesize(s, "en-us"), np.zeros(4000, np.float32)]) for s in SENTENCES])
    shard_encoder(base / "encoder-model.onnx", variants / "fp32_sharded", 200_000, audio[:32_000], allow_oversize=True)
    build_fp16(base, variants / "fp16")
    build_dynamic_int8(base / "encoder-model.onnx", variants / "int8_smoothquant")  # a stand-in int8 file
    for name, src in (("fp32_blockwise", base / "encoder-model.onnx"),
                      ("int8_blockwise", variants / "int8_smoothquant/encoder-model.int8.onnx")):
        build_blockwise(src, variants / name, BlockwiseParams(64, 256, 1e-5), [audio[:48_000]])
    # local attention of the fp32 encoder; the stand-in int8 file has no float source to gate against
    build_blockwise(base / "encoder-model.onnx", variants / "fp32_local", BlockwiseParams(64, 256, 1e-5),
                    [audio[:48_000]], [16, 16])
    shutil.copytree(variants / "int8_blockwise", variants / "int8_local")
    # (the aware and mixed recipes' files are round-to-nearest stand-ins: the release only needs their names)
    for recipe, bits in (("w8", 8), ("w4", 4), ("w8_aware", 8), ("w4_aware", 4), ("w4_mixed", 4)):
        build_nbits(base / "encoder-model.onnx", variants / f"nbits_{recipe}", f"encoder-model.{recipe}.onnx",
                    NbitsRecipe(bits, 32, True, 4))
    write_eval_sets(root, audio)
    return root


def write_eval_sets(root: Path, audio: np.ndarray) -> None:
    """Two long clips (the first with its true transcript) with their fp32 references, and a corpus in
    two languages built by the corpus stage from a user manifest."""
    for clip, samples in zip(CLIPS, (audio, audio[: len(audio) // 2]), strict=True):
        (root / "data/audio/eval" / clip).mkdir(parents=True)
        sf.write(clip_audio(clip, root / "data/audio/eval"), samples, 16_000, subtype="FLOAT")
        (root / "data/raw/eval" / clip).mkdir(parents=True)
        if clip == CLIPS[0]:
            (root / "data/raw/eval" / clip / "transcript.txt").write_text(" ".join(SENTENCES) + "\n")
        build_reference(clip_audio(clip, root / "data/audio/eval"), root / "data/raw/eval" / clip,
                        root / "data/reference" / clip, PARAMS.section_s, PARAMS.max_s, PARAMS.decoder, root,
                        decodings_for(PARAMS.decodings, BeamParams()))
    manifest = root / "my_corpus"
    manifest.mkdir()
    lines = ["audio,text,lang"]
    for i, (lang, text) in enumerate(CORPUS):
        sf.write(manifest / f"{i}.wav", synthesize(text, "fr" if lang == "fr_fr" else "en-us"), 16_000)
        lines.append(f"{i}.wav,{text},{lang}")
    (manifest / "manifest.csv").write_text("\n".join(lines) + "\n")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["corpus"]["local_dir"] = str(manifest)
    build_corpus(parse_params(raw), root / "data/corpus")


@contextlib.contextmanager
def loaded(root: Path, variant: str, scratch: Path) -> Iterator[object]:
    """The variant assembled (fp32 decoder) in a fresh folder under `scratch`, loaded for timestamps."""
    folder = scratch / f"model-{variant}"
    assemble_model_dir(variant, "fp32", folder, root)
    yield load_asr(folder)


def clip_seconds(root: Path) -> float:
    return sf.info(clip_audio(CLIPS[0], root / "data/audio/eval")).duration


def test_reference_sections_cover_the_clip(root: Path):
    rows = json.loads((root / "data/reference/long/sections.json").read_text())
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert rows[0]["start_s"] == 0 and rows[-1]["end_s"] == pytest.approx(clip_seconds(root), abs=1e-5)
    assert len(rows) >= 3
    assert all(a["end_s"] == b["start_s"] == PARAMS.section_s * b["index"] for a, b in zip(rows, rows[1:]))
    assert set(rows[0]) == {"index", "start_s", "end_s", "text"} and set(rows[0]["text"]) == {"greedy", "beam"}
    assert (root / "data/reference/long/truth.txt").read_text().split() == " ".join(SENTENCES).split()
    assert not (root / "data/reference/second/truth.txt").exists()


def test_evaluate_schema_and_arithmetic(root: Path, tmp_path: Path):
    result = evaluate("fp32", PARAMS, CLIPS, root, tmp_path, timing_dir=tmp_path / "timing")
    accuracy, timing = (json.loads((tmp_path / folder / "fp32.json").read_text()) for folder in (".", "timing"))
    assert merge_timing(accuracy, timing) == result
    assert "load_s" not in json.dumps(accuracy) and "rss" not in json.dumps(accuracy)  # run time kept apart
    assert result["normalize"] == "lower_nopunct" and result["decoder"] == "fp32"
    assert result["encoder_files"] == ["encoder-model.onnx", "encoder-model.onnx.data"]
    assert list(result["long"]) == CLIPS
    for clip in CLIPS:
        long = result["long"][clip]["by_decoding"]["greedy"]
        sections = long["sections"]
        assert len(sections) == len(json.loads((root / "data/reference" / clip / "sections.json").read_text()))
        keys = ("ref_words", "substitutions", "deletions", "insertions", "edits")
        assert long["overall_counts"] == {k: sum(s[k] for s in sections) for k in keys}
        counts = long["overall_counts"]
        expected = None if not counts["ref_words"] else round(100 * counts["edits"] / counts["ref_words"], 4)
        assert long["overall_wer_pct"] == expected and long["decode_s"] > 0 and result["long"][clip]["encode_s"] > 0
        assert result["long"][clip]["by_decoding"]["beam"]["overall_counts"]["ref_words"] == counts["ref_words"]
    assert result["long"]["long"]["by_decoding"]["greedy"]["vs_truth"]["ref_words"] == len(" ".join(SENTENCES).split())
    assert result["long"]["second"]["by_decoding"]["greedy"]["vs_truth"] is None
    assert result["decodings"] == ["greedy", "beam"] and result["beam"]["width"] == 4
    assert set(result["corpus"]) == {"greedy", "beam"}
    corpus = result["corpus"]["greedy"]
    assert list(corpus) == ["fr_fr", "en_us"] and [c["utterances"] for c in corpus.values()] == [2, 3]
    en = corpus["en_us"]["items"]
    assert en["ref_words"] == [6, 5, 3] and en["ref_chars"] == [len(t) for lang, t in CORPUS if lang == "en_us"]
    assert corpus["en_us"]["wer_pct"] == round(100 * sum(en["edits"]) / 14, 4)
    assert corpus["en_us"]["cer_pct"] == round(100 * sum(en["char_edits"]) / sum(en["ref_chars"]), 4)
    cost = result["cost"]
    assert cost["encoder_mb"] > 0 and cost["load_s"] > 0 and cost["rtf"] > 0 and cost["corpus_rtf"] > 0
    assert cost["peak_rss_mb"] >= cost["baseline_rss_mb"] > 0


def test_model_files_are_checked_once_per_variant_before_any_measured_pass(root: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    """Parsing a graph costs memory (a one-file model's weights with it): done while a pass is measured, it
    would count in that pass's peak RSS. So assemble_model_dir checks the encoder and decoder once, and the
    long passes and the corpus load what it assembled."""
    import requant.asr as asr
    import requant.evaluation as evaluation

    parsed, measuring = [], []
    real_load_graph, real_reset = asr.load_graph, evaluation.reset_peak_memory
    monkeypatch.setattr(asr, "load_graph", lambda path: (parsed.append((Path(path).name, bool(measuring))),
                                                         real_load_graph(path))[1])
    monkeypatch.setattr(evaluation, "reset_peak_memory", lambda: (measuring.append(1), real_reset())[1])
    evaluate("int8_smoothquant", PARAMS, CLIPS, root, tmp_path, timing_dir=tmp_path / "timing")
    assert measuring, "no long pass was measured"
    assert parsed == [("encoder-model.int8.onnx", False), ("decoder_joint-model.onnx", False)]


def test_a_reference_without_the_beam_is_refused(root: Path, tmp_path: Path):
    greedy_only = tmp_path / "project"
    shutil.copytree(root / "data", greedy_only / "data")
    (greedy_only / "models").symlink_to(root / "models")
    build_reference(clip_audio("second", greedy_only / "data/audio/eval"), greedy_only / "data/raw/eval/second",
                    greedy_only / "data/reference/second", PARAMS.section_s, PARAMS.max_s, PARAMS.decoder, root)
    with pytest.raises(StageError, match="sections.json lacks the greedy/beam reference; re-run `dvc repro "
                                         "reference@second`"):
        evaluate("fp32", PARAMS, ["second"], greedy_only, tmp_path)


def test_a_skipped_clip_is_left_out_and_a_missing_one_named(root: Path, tmp_path: Path):
    (root / "data/audio/eval/skipped").mkdir()
    (root / "data/audio/eval/skipped/skipped.json").write_text('{"skipped": "demo only"}')
    assert list(evaluate("fp32", PARAMS, ["skipped", "second"], root, tmp_path)["long"]) == ["second"]
    with pytest.raises(StageError, match=r"data/audio/eval/absent/audio.wav is missing; run `dvc repro decode_eval@absent`"):
        evaluate("fp32", PARAMS, ["absent", "second"], root, tmp_path)


def test_sections_together_hold_exactly_the_long_pass(root: Path, tmp_path: Path):
    with loaded(root, "fp32", tmp_path) as asr:
        whole = transcribe(asr, load_clip(clip_audio(CLIPS[0], root / "data/audio/eval"), 400)).text
    result = evaluate("fp32", PARAMS, CLIPS, root, tmp_path)
    hypotheses = [s["hypothesis"] for s in result["long"]["long"]["by_decoding"]["greedy"]["sections"]]
    assert "".join(hypotheses).replace(" ", "") == whole.replace(" ", "")


def test_sharded_fp32_scores_exactly_as_fp32(root: Path, tmp_path: Path):
    fp32 = evaluate("fp32", PARAMS, CLIPS, root, tmp_path)
    sharded = evaluate("fp32_sharded", PARAMS, CLIPS, root, tmp_path)
    assert len(sharded["encoder_files"]) >= 3  # graph + at least two shards
    for clip in CLIPS:
        for decoding in ("greedy", "beam"):
            assert sharded["long"][clip]["by_decoding"][decoding]["sections"] == \
                fp32["long"][clip]["by_decoding"][decoding]["sections"]
    assert sharded["corpus"] == fp32["corpus"]


def test_missing_variant_names_it_and_its_stage(root: Path, tmp_path: Path):
    with pytest.raises(StageError, match=r"variant 'int8_dynamic'.*missing; run `dvc repro int8_dynamic`"):
        evaluate("int8_dynamic", PARAMS, CLIPS, root, tmp_path)


def test_clip_over_the_limit_is_refused(root: Path, tmp_path: Path):
    params = EvalParams(section_s=2.0, max_s=5.0, normalize="raw", decoder="fp32")
    with pytest.raises(StageError, match="over eval.max_s=5"):
        evaluate("fp32", params, CLIPS, root, tmp_path)


def test_cli_runs_in_its_own_process_and_fails_in_one_line(root: Path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["eval"]["section_s"] = PARAMS.section_s
    raw["eval_clips"] = {clip: {**raw["eval_clips"]["jfk"], "source": None} for clip in CLIPS}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "stages.evaluate", "fp16"], cwd=root, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((root / "metrics/eval/fp16.json").read_text())["encoder_files"] == [
        "encoder-model.fp16.onnx"]
    bad = subprocess.run([sys.executable, "-m", "stages.evaluate", "bf16"], cwd=root, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: usage:")
    assert "Traceback" not in bad.stderr


def test_release_folder_loads_in_every_precision(root: Path):
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports/MODEL_CARD.md").write_text("# card\n")
    package(root)
    release = root / "models/release"
    audio = load_clip(clip_audio(CLIPS[0], root / "data/audio/eval"), 400)
    texts = {}
    for quantization in (None, "int8", "fp16", "w8", "w4"):  # w8/w4: decoders named to pair with them
        model = onnx_asr.load_model(None, release, quantization=quantization, providers=["CPUExecutionProvider"])
        texts[quantization] = model.recognize(audio, sample_rate=16_000)
    with loaded(root, "fp32", root / "scratch") as asr:
        assert texts[None] == transcribe(asr, audio).text
    assert (release / "README.md").read_text() == "# card\n"
    assert sorted(p.name for p in (release / "sharded").iterdir())[0] == "encoder-model.onnx"


def test_an_empty_long_pass_scores_as_all_deletions():
    sections = [Section(0, 0.0, 60.0), Section(1, 60.0, 90.0)]
    hypotheses = split_by_section([], [], sections)
    scored = score_sections(sections, ["one two three", "four"], hypotheses, "raw")
    assert scored["overall_wer_pct"] == 100.0
    assert scored["overall_counts"] == {"ref_words": 4, "substitutions": 0, "deletions": 4, "insertions": 0,
                                        "edits": 4}
    assert scored["worst_section"] == {"index": 0, "start_s": 0.0, "end_s": 60.0, "wer_pct": 100.0}


def test_corpus_batches_and_ray_shards_hold_one_language_each() -> None:
    """FLEURS' languages fan out on Ray as their own shards; the local engine's batches are cut the same way, so
    a shard's batches are the local ones (same padding, same numbers), whatever order the manifest lists."""
    from requant.evalsets import Utterance
    from requant.evaluation import language_chunks
    from requant.ray_engine import shards

    utterances = [Utterance(f"u{i}", ("en_us", "fr_fr", "de_de")[i % 3], Path(f"{i}.wav"), "x") for i in range(70)]
    batches, parts = language_chunks(utterances, 16), shards(utterances, 32)
    assert [len(b) for b in batches] == [16, 8, 16, 7, 16, 7] and all(len({u.lang for u in b}) == 1 for b in batches)
    assert [len(p) for p in parts] == [24, 23, 23] and [p[0].lang for p in parts] == ["en_us", "fr_fr", "de_de"]
    assert [u.id for u in parts[0]] == [f"u{i}" for i in range(0, 70, 3)]
    local = [b for p in parts for b in language_chunks(p, 16)]
    assert [[u.id for u in b] for b in local] == [[u.id for u in b] for b in batches]
