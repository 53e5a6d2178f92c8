"""Whole recordings through one encoder, decoded one way (stages longform and leaderboard).

Modes, each with greedy decoding and a fresh session per recording (its own peak RSS):
- full: one pass, full attention: the variant's encoder with positions past the table, blockwise
  attention and chunked subsampling (requant/long_pass.rewrite_long_pass, which stage blockwise gates);
- local: one pass, local attention over local.context (or the context given);
- chunk<s>: windows of s seconds every s - longform.overlap_s, stitched at the middle of each overlap
  (requant/chunking.py), each window through the variant's encoder as it is;
- vad: Silero VAD segments (onnx-asr, the model from the pinned silero-vad package), at most
  longform.vad_max_speech_s each.
Every result is scored in sections against the fp32 short-section references and against the truth.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx_asr

from requant import chunking
from requant import onnx_graph as og
from requant.asr import CANONICAL_ENCODER, SAMPLE_RATE, assemble_model_dir, load_asr, load_clip, recognize_all
from requant.common import fail, memory_bytes, reset_peak_memory
from requant.evalsets import LONGFORM_DIR, clip_audio
from requant.evaluation import read_reference
from requant.long_pass import rewrite_long_pass
from requant.params import LongformParams, Params
from requant.scoring import count_errors, percent, score_sections, split_by_section, tokens_to_text

log = logging.getLogger("pipeline.recordings")

MB = 1024 * 1024
GREEDY = {"greedy": None}


def prepare_encoder(variant: str, mode: str, p: Params, dest: Path, root: Path,
                    context: list[int] | None = None) -> None:
    """dest: the variant as onnx-asr loads it; for one-pass modes its encoder rewritten for any length (local:
    over `context`, else local.context)."""
    files = assemble_model_dir(variant, p.eval.decoder, dest, root)
    if mode not in ("full", "local"):
        return
    for link in [dest / CANONICAL_ENCODER, *(dest / f.name for f in files[1:])]:
        link.unlink()  # links to the source: never write through them
    context = (context or p.local.context) if mode == "local" else None
    try:
        model, report = rewrite_long_pass(og.load_graph(files[0]), p.blockwise, files[0].parent, context)
    except ValueError as err:
        fail(f"{variant}: {err}")
    if context and (report["refused"] or not report["sites"]):
        fail(f"{variant}: local attention needs the export's attention pattern, and none matches; set "
             "local.context to null or drop local from longform.modes")
    og.write_model(model, files[0].parent, dest / CANONICAL_ENCODER)


def vad_segments(audio: np.ndarray, p: LongformParams) -> list[tuple[int, int]]:
    """Silero VAD's speech segments, from the pinned silero-vad package's own model file (its torch code is
    never imported), through onnx-asr."""
    try:
        folder = Path(str(metadata.distribution("silero-vad").locate_file("silero_vad/data")))
    except metadata.PackageNotFoundError:
        fail("longform mode 'vad' needs the silero-vad package (requirements-vad.lock): run `make "
             ".venv/bin/.installed`, or drop vad from longform.modes")
    vad = onnx_asr.load_vad("silero", folder, providers=["CPUExecutionProvider"])
    return list(next(vad.segment_batch(audio[None], np.array([len(audio)]), SAMPLE_RATE,
                                       max_speech_duration_s=p.vad_max_speech_s, speech_pad_ms=p.vad_speech_pad_ms,
                                       min_silence_duration_ms=p.vad_min_silence_ms)))


def decode(asr: object, audio: np.ndarray, mode: str, p: Params,
           speech: list[tuple[int, int]]) -> tuple[list, list, float]:
    """Tokens and start times over the whole recording, and the seconds spent in the encoder (speech: the
    recording's voice-activity segments)."""
    if mode in ("full", "local"):
        decoded = recognize_all(asr, [audio], GREEDY)
        return decoded.transcripts["greedy"][0].tokens, decoded.transcripts["greedy"][0].starts, decoded.encode_s
    spans = speech if mode == "vad" else chunking.windows(len(audio), SAMPLE_RATE, float(mode[5:]),
                                                          p.longform.overlap_s)
    found = [recognize_all(asr, [audio[a:b]], GREEDY) for a, b in spans]
    pieces = chunking.pieces_from(spans, SAMPLE_RATE, [d.transcripts["greedy"][0] for d in found])
    tokens, starts = chunking.concatenate(pieces) if mode == "vad" else chunking.merge(pieces, p.longform.merge_gap_s)
    return tokens, starts, sum(d.encode_s for d in found)


def run_cell(variant: str, mode: str, clips: list[str], p: Params, root: Path,
             speech: dict[str, list[tuple[int, int]]], clips_dir: Path = LONGFORM_DIR,
             context: list[int] | None = None, truth_normalize: str | None = None, max_s: float | None = None) -> dict:
    """One encoder, one mode, every clip (clips_dir/<clip>/{audio, reference}): section scores, truth WER and
    its counts (under truth_normalize, else eval.normalize), encoder and pass time, peak RSS."""
    per_clip = {}
    with tempfile.TemporaryDirectory(prefix=f"longform-{variant}-{mode}-") as folder:
        prepare_encoder(variant, mode, p, Path(folder), root, context)
        for clip in clips:
            sections, references, truth = read_reference(root / clips_dir / clip / "reference", ["greedy"])
            audio = load_clip(clip_audio("audio", root / clips_dir / clip), max_s or p.longform.max_s)
            gc.collect()
            reset_peak_memory()
            started = time.perf_counter()
            asr = load_asr(Path(folder))
            tokens, starts, encode_s = decode(asr, audio, mode, p, speech.get(clip, []))
            pass_s, peak = time.perf_counter() - started, memory_bytes("VmHWM")
            del asr
            hypotheses = split_by_section(tokens, starts, sections, by_token=p.eval.normalize == "chars")
            scored = score_sections(sections, references["greedy"], hypotheses, p.eval.normalize)
            truth_counts = count_errors(truth, tokens_to_text(tokens), truth_normalize or p.eval.normalize) \
                if truth else None
            per_clip[clip] = {"wer_pct": scored["overall_wer_pct"],
                              "truth_wer_pct": truth_counts and percent(truth_counts.wer),
                              "truth": truth_counts and truth_counts.as_dict(),
                              "sections": [{k: s[k] for k in ("ref_words", "edits")} for s in scored["sections"]],
                              "encode_s": round(encode_s, 2), "pass_s": round(pass_s, 2),
                              "peak_rss_mb": round(peak / MB, 1), "audio_s": round(len(audio) / SAMPLE_RATE, 1)}
            log.info("%s %s %s: WER %.2f %% (truth %s), encoder %.1f s, peak %.0f MB", variant, mode, clip,
                     scored["overall_wer_pct"], per_clip[clip]["truth_wer_pct"], encode_s, peak / MB)
    return per_clip
