"""One variant on every evaluation set: a single pass over each long clip, then the short utterances.

Run as `python -m stages.evaluate <variant>`, one process per variant. Each long clip gets a fresh
session and its own peak RSS (VmHWM, reset before the pass). The encoder runs once per clip (or batch
of utterances) and its output is decoded each way listed in eval.decodings (greedy: onnx-asr's own;
beam: requant/beam.py), encoder and decoding timed apart. A long pass's words are split into the
reference's sections by start time and scored against the fp32 short-clip transcripts (and the true
transcript when there is one); each utterance is scored against its transcript, per language, in words
and characters. Per-section and per-utterance counts are kept: the report resamples them for
confidence intervals. Output: metrics/eval/<variant>.json.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from requant.asr import assemble_model_dir, encoder_digest, load_asr
from requant.common import fail, run_cli, write_json
from requant.evalsets import EVAL_AUDIO_DIR, Utterance, read_corpus, scored_clips
from requant.evaluation import MB, METRICS_DIR, TIMING_DIR, long_pass, score_corpus, split_timing
from requant.params import BeamParams, EvalParams, RayParams, load_params
from requant.variants import VARIANTS

log = logging.getLogger("pipeline.evaluate")

def run_local(variant: str, eval_params: EvalParams, beam: BeamParams, clips: list[str],
              utterances: list[Utterance], root: Path) -> tuple[list[tuple[str, int]], dict, tuple]:
    """The whole evaluation in this process: (encoder file names and sizes, long passes, score_corpus's tuple)."""
    with tempfile.TemporaryDirectory(prefix=f"eval-{variant}-") as model_dir:
        encoder_files = assemble_model_dir(variant, eval_params.decoder, Path(model_dir), root)
        long = {clip: long_pass(Path(model_dir), clip, eval_params, beam, root)
                for clip in tqdm(clips, desc=variant, unit="clip")}
        corpus = score_corpus(load_asr(Path(model_dir)), utterances, eval_params, beam)
    return [(p.name, p.stat().st_size) for p in encoder_files], long, corpus


def evaluate(variant: str, eval_params: EvalParams, clips: list[str], root: Path = Path("."),
             out_dir: Path | None = None, beam: BeamParams = BeamParams(), timing_dir: Path | None = None,
             ray_params: RayParams = RayParams()) -> dict:
    """Score one variant on every scored clip and the corpus, under each decoding; write
    metrics/eval/<variant>.json (accuracy) and metrics/timing/<variant>.json (run time), return both merged.
    eval.engine picks where the work runs: here, or as Ray tasks (the same bytes either way)."""
    out_dir = root / METRICS_DIR if out_dir is None else out_dir
    clips = scored_clips(clips, root / EVAL_AUDIO_DIR)
    utterances = read_corpus(root)
    if eval_params.engine == "ray":
        from requant.ray_engine import run_ray  # only here: the local engine never pays for importing ray

        encoder_files, long, corpus_result = run_ray(variant, eval_params, beam, clips, utterances, root, ray_params)
    else:
        encoder_files, long, corpus_result = run_local(variant, eval_params, beam, clips, utterances, root)
    corpus, corpus_audio_s, corpus_encode_s, corpus_decode_s = corpus_result
    primary = eval_params.decodings[0]
    duration_s, encode_s = sum(c["duration_s"] for c in long.values()), sum(c["encode_s"] for c in long.values())
    decode_s = {name: round(sum(c["by_decoding"][name]["decode_s"] for c in long.values()), 3)
                for name in eval_params.decodings}
    worst = max(long.values(), key=lambda c: c["peak_rss_mb"])  # the long pass that needs the most memory
    result = {
        "variant": variant,
        "encoder_files": [name for name, _ in encoder_files],
        "encoder_sha256": encoder_digest(variant, root),  # the report leaves out figures of other encoders
        "decoder": eval_params.decoder,
        "normalize": eval_params.normalize,
        "reference": "long clips: the fp32 encoder on each section alone, same decoding; corpus: the true transcripts",
        "decodings": list(eval_params.decodings),
        "beam": asdict(beam) if "beam" in eval_params.decodings else None,
        "long": long,
        "corpus": corpus,
        "cost": {
            "encoder_mb": round(sum(size for _, size in encoder_files) / MB, 3),
            "load_s": min(c["load_s"] for c in long.values()),
            "encode_s": round(encode_s, 3),
            "decode_s": decode_s,
            "pass_s": round(encode_s + decode_s[primary], 3),
            "rtf": round((encode_s + decode_s[primary]) / duration_s, 5),
            "corpus_rtf": round((corpus_encode_s + corpus_decode_s[primary]) / max(1e-9, corpus_audio_s), 5),
            "corpus_decode_s": {k: round(v, 3) for k, v in corpus_decode_s.items()},
            "baseline_rss_mb": worst["baseline_rss_mb"],
            "peak_rss_mb": worst["peak_rss_mb"],
            "rss_delta_mb": round(worst["peak_rss_mb"] - worst["baseline_rss_mb"], 1),
        },
    }
    accuracy, timing = split_timing(result)
    write_json(out_dir / f"{variant}.json", accuracy)
    write_json((root / TIMING_DIR if timing_dir is None else timing_dir) / f"{variant}.json", timing)
    log.info("%s: %s", variant, ", ".join(f"{clip} {c['by_decoding'][primary]['overall_wer_pct']} %"
                                          for clip, c in long.items()))
    return result


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        fail(f"usage: python -m stages.evaluate <variant>, variant one of {', '.join(VARIANTS)}")
    params = load_params()
    evaluate(sys.argv[1], params.eval, list(params.eval_clips), beam=params.beam, ray_params=params.ray)


if __name__ == "__main__":
    run_cli(main)
