"""Evaluation's library: one long pass scored per section, the corpus counted per utterance, and the
split of an evaluation into the figures a re-run reproduces and the run-time ones. The evaluate stage
runs these in its own process, the Ray engine as tasks (requant/ray_engine.py): the same bytes either way.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from requant.asr import SAMPLE_RATE, decodings_for, load_asr, load_clip, recognize_all
from requant.common import fail, memory_bytes, read_json, reset_peak_memory
from requant.evalsets import EVAL_AUDIO_DIR, REFERENCE_DIR, SECTIONS_FILE, TRUTH_FILE, Utterance, clip_audio
from requant.params import BeamParams, EvalParams
from requant.scoring import Section, count_char_errors, count_errors, percent, score_sections, split_by_section

log = logging.getLogger("pipeline.evaluate")

METRICS_DIR = Path("metrics/eval")
TIMING_DIR = Path("metrics/timing")  # run-time figures apart: a re-run changes them, never the accuracy files
CLIP_TIMING = ("load_s", "encode_s", "baseline_rss_mb", "peak_rss_mb")
MB = 1e6
CORPUS_BATCH = 16  # utterances per encoder call: bounded padding and memory
CORPUS_ITEM_KEYS = ("ids", "ref_words", "edits", "ref_chars", "char_edits")


def read_reference(reference_dir: Path, decodings: list[str]) -> tuple[list[Section], dict[str, list[str]], str | None]:
    """The sections, their fp32 short-clip text under each decoding, and the true transcript if any."""
    path = reference_dir / SECTIONS_FILE
    if not path.is_file():
        fail(f"{path} is missing; run `dvc repro reference@{reference_dir.name}` first")
    rows = read_json(path)
    if any(not isinstance(r["text"], dict) or set(decodings) - set(r["text"]) for r in rows):
        fail(f"{path} lacks the {'/'.join(decodings)} reference; re-run `dvc repro reference@{reference_dir.name}`")
    sections = [Section(r["index"], r["start_s"], r["end_s"]) for r in rows]
    truth = reference_dir / TRUTH_FILE
    return (sections, {d: [r["text"][d] for r in rows] for d in decodings},
            truth.read_text() if truth.is_file() else None)


def long_pass(model_dir: Path, clip: str, eval_params: EvalParams, beam: BeamParams, root: Path) -> dict[str, Any]:
    """One single encoder pass over the clip in a fresh session, each decoding of it scored per section
    (and against the truth when there is one). Fresh, because a session that has already run one 390 s
    pass keeps onnxruntime's arena from it and runs the next one on top: about twice the memory."""
    sections, references, truth = read_reference(root / REFERENCE_DIR / clip, list(eval_params.decodings))
    audio = load_clip(clip_audio(clip, root / EVAL_AUDIO_DIR), eval_params.max_s)
    duration_s = len(audio) / SAMPLE_RATE
    if abs(duration_s - sections[-1].end_s) > 1e-3:
        fail(f"{REFERENCE_DIR / clip} was made for a {sections[-1].end_s} s clip, not {duration_s} s; "
             f"re-run reference@{clip}")
    gc.collect()
    reset_peak_memory()
    baseline = memory_bytes("VmRSS")
    started = time.perf_counter()
    asr = load_asr(model_dir)
    load_s = time.perf_counter() - started
    decoded = recognize_all(asr, [audio], decodings_for(eval_params.decodings, beam))
    peak = memory_bytes("VmHWM")
    del asr
    log.info("%s: encoder %.2f s (RTF %.4f), decoding %s, peak RSS %.0f MB", clip, decoded.encode_s,
             decoded.encode_s / duration_s, {k: round(v, 2) for k, v in decoded.decode_s.items()}, peak / MB)
    by_decoding = {}
    for name, [transcript] in decoded.transcripts.items():
        hypotheses = split_by_section(transcript.tokens, transcript.starts, sections,
                                      by_token=eval_params.normalize == "chars")
        scored = {**score_sections(sections, references[name], hypotheses, eval_params.normalize), "vs_truth": None,
                  "decode_s": round(decoded.decode_s[name], 3)}
        if truth is not None:
            counts = count_errors(truth, transcript.text, eval_params.normalize)
            scored["vs_truth"] = {"wer_pct": percent(counts.wer), **counts.as_dict()}
        by_decoding[name] = scored
    return {"duration_s": round(duration_s, 6), "load_s": round(load_s, 3), "encode_s": round(decoded.encode_s, 3),
            "baseline_rss_mb": round(baseline / MB, 1), "peak_rss_mb": round(peak / MB, 1),
            "by_decoding": by_decoding}


def score_corpus(asr: Any, utterances: list[Utterance], eval_params: EvalParams,
                 beam: BeamParams) -> tuple[dict[str, Any], float, float, dict[str, float]]:
    """Per decoding and language: WER and CER against the true transcripts, with each utterance's counts;
    and the seconds of audio, of encoding and of each decoding."""
    by_lang, seconds, encode_s, decode_s = count_corpus(asr, utterances, eval_params, beam)
    return summarize_corpus(by_lang), seconds, encode_s, decode_s


def count_corpus(asr: Any, utterances: list[Utterance], eval_params: EvalParams,
                 beam: BeamParams) -> tuple[dict[str, Any], float, float, dict[str, float]]:
    """Each utterance's word and character counts per decoding and language (in utterance order), and the
    seconds of audio, of encoding and of each decoding. Batches never mix languages (language_chunks), so a
    language's slice from a multiple of CORPUS_BATCH gets the very batches (so the same padding and numbers) as
    the whole list: the Ray engine's shards, one language each."""
    by_lang: dict[str, dict[str, dict[str, list]]] = {name: {} for name in eval_params.decodings}
    seconds, encode_s, decode_s = 0.0, 0.0, dict.fromkeys(eval_params.decodings, 0.0)
    for batch in tqdm(language_chunks(utterances, CORPUS_BATCH), desc="corpus batches", unit="batch"):
        audio = [load_clip(u.audio, eval_params.max_s) for u in batch]
        seconds += sum(len(a) for a in audio) / SAMPLE_RATE
        decoded = recognize_all(asr, audio, decodings_for(eval_params.decodings, beam))
        encode_s += decoded.encode_s
        for name, transcripts in decoded.transcripts.items():
            decode_s[name] += decoded.decode_s[name]
            for u, hyp in zip(batch, transcripts, strict=True):
                words = count_errors(u.text, hyp.text, eval_params.normalize)
                chars = count_char_errors(u.text, hyp.text, eval_params.normalize)
                items = by_lang[name].setdefault(u.lang, {key: [] for key in CORPUS_ITEM_KEYS})
                for key, value in zip(CORPUS_ITEM_KEYS, (u.id, words.ref_words, words.edits, chars.ref_words,
                                                         chars.edits), strict=True):
                    items[key].append(value)
    return by_lang, seconds, encode_s, decode_s


def language_chunks(utterances: list[Utterance], size: int) -> list[list[Utterance]]:
    """The utterances grouped by language (first-seen order, each language's own order kept), each language cut
    into slices of at most `size`: no slice mixes languages."""
    by_lang: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_lang.setdefault(u.lang, []).append(u)
    return [group[start : start + size] for group in by_lang.values() for start in range(0, len(group), size)]


def summarize_corpus(by_lang: dict[str, dict[str, dict[str, list]]]) -> dict[str, Any]:
    """count_corpus's items per decoding and language with their WER and CER."""
    return {name: {lang: {"utterances": len(items["ids"]),
                            "wer_pct": percent(sum(items["edits"]) / max(1, sum(items["ref_words"]))),
                            "cer_pct": percent(sum(items["char_edits"]) / max(1, sum(items["ref_chars"]))),
                            "items": items}
                   for lang, items in langs.items()}
            for name, langs in by_lang.items()}


def split_timing(result: dict) -> tuple[dict, dict]:
    """(accuracy, timing): the figures a re-run reproduces byte for byte (transcripts, WER, file sizes), and
    the run-time ones (seconds, RSS) that move with the machine and its load."""
    accuracy = {**result, "cost": {"encoder_mb": result["cost"]["encoder_mb"]}, "long": {}}
    timing = {"variant": result["variant"], "cost": {k: v for k, v in result["cost"].items() if k != "encoder_mb"},
              "long": {}}
    for clip, c in result["long"].items():
        accuracy["long"][clip] = {k: v for k, v in c.items() if k not in CLIP_TIMING}
        accuracy["long"][clip]["by_decoding"] = {name: {k: v for k, v in d.items() if k != "decode_s"}
                                                 for name, d in c["by_decoding"].items()}
        timing["long"][clip] = {**{k: c[k] for k in CLIP_TIMING},
                                "decode_s": {name: d["decode_s"] for name, d in c["by_decoding"].items()}}
    return accuracy, timing


def merge_timing(accuracy: dict, timing: dict) -> dict:
    """The evaluation as one dict again (split_timing's inverse), for the report."""
    merged = {**accuracy, "cost": {**accuracy["cost"], **timing["cost"]}, "long": {}}
    for clip, c in accuracy["long"].items():
        t = timing["long"][clip]
        merged["long"][clip] = {**c, **{k: t[k] for k in CLIP_TIMING}, "by_decoding": {
            name: {**d, "decode_s": t["decode_s"][name]} for name, d in c["by_decoding"].items()}}
    return merged
