"""Stage `leaderboard`: the long-form sets scored as the Open ASR Leaderboard scores them, per encoder variant.

Each recording (stage leaderboard_data) goes through the variant's encoder in one pass with local attention
over leaderboard.context, as the leaderboard runs NeMo models (requant/recordings.py, greedy decoding, a
fresh session per recording). Two figures per set and variant:
- the leaderboard's: Whisper's English normalizer on both sides, corpus-level WER against the truth (total
  edits over total reference words of the set, never the mean of the recordings');
- ours: the pass's 60 s sections against fp32's short-section references, and the difference to the fp32
  pass with a 95 % paired bootstrap interval (sections as items, recordings as strata).
Output: metrics/leaderboard.json, the same bytes on any run (the report stage renders its tables into
docs/results.md), and metrics/leaderboard_timing.json, each pass's time and peak memory, which move with the
machine (the project keeps run-time figures apart, as metrics/timing/ does for evaluate).
"""

from __future__ import annotations

import logging
from pathlib import Path

from requant.asr import encoder_digest
from requant.bootstrap import Stratum, draw_seed, paired_interval
from requant.common import fail, run_cli, write_json
from requant.evalsets import LEADERBOARD_DIR, SKIPPED
from requant.params import Params, load_params
from requant.recordings import run_cell
from requant.scoring import Counts, corpus_wer, percent, total

log = logging.getLogger("pipeline.leaderboard")
OUT, TIMING_OUT = Path("metrics/leaderboard.json"), Path("metrics/leaderboard_timing.json")
TIMING_KEYS = ("encode_s", "peak_rss_mb")
NORMALIZER = "whisper_en"
BASELINE = "fp32"


def set_summary(cells: dict[str, dict], resamples: int, seed: int) -> dict:
    """Per variant: the leaderboard's corpus WER, the sections' WER against fp32's references, and the
    difference to the fp32 pass with its interval; time and memory."""
    out = {}
    base = cells.get(BASELINE)
    for variant, per_clip in cells.items():
        truth = total([Counts(**{k: c["truth"][k] for k in ("ref_words", "substitutions", "deletions",
                                                                "insertions")}) for c in per_clip.values()])
        sections = [s for c in per_clip.values() for s in c["sections"]]
        row = {"corpus_wer_pct": percent(corpus_wer([truth])), "truth": truth.as_dict(),
               "wer_vs_fp32_pct": round(100 * sum(s["edits"] for s in sections) / max(1, sum(s["ref_words"]
                                                                                            for s in sections)), 4),
               "recordings": len(per_clip), "audio_s": round(sum(c["audio_s"] for c in per_clip.values()), 1),
               "encode_s": round(sum(c["encode_s"] for c in per_clip.values()), 2),
               "peak_rss_mb": max(c["peak_rss_mb"] for c in per_clip.values())}
        if base is not None and variant != BASELINE:
            strata = [Stratum.of([s["ref_words"] for s in base[c]["sections"]], [s["edits"] for s in base[c]["sections"]],
                                 [s["edits"] for s in per_clip[c]["sections"]]) for c in per_clip]
            row["vs_fp32"] = paired_interval(strata, macro=False, resamples=resamples,
                                             seed=draw_seed(seed, "leaderboard")).as_dict()
        out[variant] = row
    return out


def score_leaderboard(p: Params, root: Path = Path(".")) -> dict:
    data = root / LEADERBOARD_DIR
    if (data / SKIPPED).is_file():
        log.info("leaderboard.recordings is 0: the long-form track is off")
        return {"skipped": "leaderboard.recordings is 0", "sets": {}}
    missing = [name for name in p.leaderboard_sets if not (data / name).is_dir()]
    if missing:
        fail(f"{data}: no {', '.join(missing)}; run `dvc repro leaderboard_data` first")
    if BASELINE not in p.leaderboard.variants:
        fail(f"params.yaml: leaderboard.variants={p.leaderboard.variants} must include {BASELINE}, the baseline")
    sets = {}
    for name in p.leaderboard_sets:
        recordings = sorted(path.name for path in (data / name).iterdir())
        cells = {v: run_cell(v, "local", recordings, p, root, {}, clips_dir=LEADERBOARD_DIR / name,
                             context=p.leaderboard.context, truth_normalize=NORMALIZER, max_s=p.leaderboard.max_s)
                 for v in p.leaderboard.variants}
        sets[name] = set_summary(cells, p.eval.bootstrap_resamples, p.eval.bootstrap_seed)
    means = {v: round(sum(s[v]["corpus_wer_pct"] for s in sets.values()) / len(sets), 4)
             for v in p.leaderboard.variants}
    return {"preset": p.preset, "context": p.leaderboard.context, "normalizer": NORMALIZER, "sets": sets,
            "mean_corpus_wer_pct": means, "encoder_sha256": {v: encoder_digest(v, root) for v in p.leaderboard.variants}}


def split_timing(scored: dict) -> tuple[dict, dict]:
    """The scores without the run-time figures, and those figures per set and variant."""
    timing = {name: {v: {k: row.pop(k) for k in TIMING_KEYS} for v, row in rows.items()}
              for name, rows in scored["sets"].items()}
    return scored, timing


def main() -> None:
    scored, timing = split_timing(score_leaderboard(load_params()))
    write_json(OUT, scored)
    write_json(TIMING_OUT, timing)


if __name__ == "__main__":
    run_cli(main)
