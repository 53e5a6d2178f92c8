"""One variant, one single pass over the whole evaluation clip: per-section WER and costs.

Run as `python -m stages.evaluate <variant>`, one process per variant, so the peak RSS (ru_maxrss)
is that variant's alone. The long pass's words are split into the reference's sections by start time
and scored against the fp32 short-clip transcripts; also against the true transcript when there is one.
Output: metrics/eval/<variant>.json.
"""

from __future__ import annotations

import logging
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from requant.asr import SAMPLE_RATE, VARIANTS, assemble_model_dir, load_asr, load_clip, transcribe
from requant.common import fail, read_json, run_cli, write_json
from requant.params import EvalParams, load_params
from stages.reference import AUDIO, OUT as REFERENCE_DIR, SECTIONS_FILE, TRUTH_FILE
from requant.scoring import Section, corpus_wer, count_errors, split_by_section, total

log = logging.getLogger("pipeline.evaluate")

METRICS_DIR = Path("metrics/eval")
MB = 1e6


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 4)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def read_reference(reference_dir: Path) -> tuple[list[Section], list[str], str | None]:
    path = reference_dir / SECTIONS_FILE
    if not path.is_file():
        fail(f"{path} is missing; run `dvc repro reference` first")
    rows = read_json(path)
    sections = [Section(r["index"], r["start_s"], r["end_s"]) for r in rows]
    truth = reference_dir / TRUTH_FILE
    return sections, [r["text"] for r in rows], truth.read_text() if truth.is_file() else None


def score_sections(
    sections: list[Section], references: list[str], hypotheses: list[str], normalize: str
) -> dict[str, Any]:
    counts = [count_errors(ref, hyp, normalize) for ref, hyp in zip(references, hypotheses, strict=True)]
    rows = [
        {"index": s.index, "start_s": s.start_s, "end_s": s.end_s, "wer_pct": _pct(c.wer), **c.as_dict(),
         "hypothesis": hyp}
        for s, c, hyp in zip(sections, counts, hypotheses, strict=True)
    ]
    scored = [r for r in rows if r["wer_pct"] is not None]
    worst = max(scored, key=lambda r: r["wer_pct"], default=None)  # first of equals: the earliest section
    return {
        "overall_wer_pct": _pct(corpus_wer(counts)),
        "overall_counts": total(counts).as_dict(),
        "worst_section": None if worst is None else {k: worst[k] for k in ("index", "start_s", "end_s", "wer_pct")},
        "sections": rows,
    }


def evaluate(variant: str, eval_params: EvalParams, root: Path = Path("."), out_dir: Path | None = None) -> dict:
    """Score one variant's single long pass; write and return metrics/eval/<variant>.json."""
    out_dir = root / METRICS_DIR if out_dir is None else out_dir
    sections, references, truth = read_reference(root / REFERENCE_DIR)
    with tempfile.TemporaryDirectory(prefix=f"eval-{variant}-") as model_dir:
        encoder_files = assemble_model_dir(variant, eval_params.decoder, Path(model_dir), root)
        audio = load_clip(root / AUDIO, eval_params.max_s)
        duration_s = len(audio) / SAMPLE_RATE
        if abs(duration_s - sections[-1].end_s) > 1e-3:
            fail(f"{REFERENCE_DIR} was made for a {sections[-1].end_s} s clip, not {duration_s} s; re-run reference")
        baseline = _peak_rss_bytes()
        started = time.perf_counter()
        asr = load_asr(Path(model_dir))
        load_s = time.perf_counter() - started
        log.info("%s: loaded in %.2f s; one pass over %.1f s of audio...", variant, load_s, duration_s)
        started = time.perf_counter()
        transcript = transcribe(asr, audio)
        pass_s = time.perf_counter() - started
        peak = _peak_rss_bytes()
    log.info("%s: pass took %.2f s (RTF %.4f), %d tokens", variant, pass_s, pass_s / duration_s, len(transcript.tokens))
    hypotheses = split_by_section(transcript.tokens, transcript.starts, sections)
    result = {
        "variant": variant,
        "encoder_files": [p.name for p in encoder_files],
        "decoder": eval_params.decoder,
        "normalize": eval_params.normalize,
        "reference": "fp32 encoder, each section transcribed on its own",
        "duration_s": round(duration_s, 6),
        **score_sections(sections, references, hypotheses, eval_params.normalize),
        "vs_truth": None,
        "cost": {
            "encoder_mb": round(sum(p.stat().st_size for p in encoder_files) / MB, 3),
            "load_s": round(load_s, 3),
            "pass_s": round(pass_s, 3),
            "rtf": round(pass_s / duration_s, 5),
            "baseline_rss_mb": round(baseline / MB, 1),
            "peak_rss_mb": round(peak / MB, 1),
            "rss_delta_mb": round((peak - baseline) / MB, 1),
        },
    }
    if truth is not None:
        counts = count_errors(truth, transcript.text, eval_params.normalize)
        result["vs_truth"] = {"wer_pct": _pct(counts.wer), **counts.as_dict()}
    write_json(out_dir / f"{variant}.json", result)
    log.info("%s: overall WER %s %% vs the fp32 reference", variant, result["overall_wer_pct"])
    return result


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        fail(f"usage: python -m stages.evaluate <variant>, variant one of {', '.join(VARIANTS)}")
    evaluate(sys.argv[1], load_params().eval)


if __name__ == "__main__":
    run_cli(main)
