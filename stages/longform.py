"""Stage `longform`: a whole recording past the 400 s cap, decoded every way, per encoder precision.

Modes (longform.modes: full, local, chunk<s>, vad; requant/recordings.py runs them), each with greedy
decoding and a fresh session per recording. Every result is scored in sections against the fp32 short-section references and against the truth;
each cell's difference to fp32's full single pass gets a paired bootstrap interval (sections as items).
Outputs: metrics/longform.json and docs/longform-results.md (generated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from requant.asr import encoder_digest, load_clip
from requant.bootstrap import Stratum, draw_seed, paired_interval
from requant.common import atomic_path, fail, read_json, run_cli, write_json
from requant.evalsets import LONGFORM_DIR, SKIPPED, clip_audio
from requant.longform_report import longform_tables
from requant.params import load_params
from requant.recordings import run_cell, vad_segments

BASELINE = ("fp32", "full")


def summarize(cells: dict[tuple[str, str], dict], resamples: int, seed: int) -> dict:
    """Pooled WER, truth WER, time and memory per cell, and the interval of its difference to fp32 full."""
    def pooled(per_clip: dict, key: str) -> float:
        sections = [s for c in per_clip.values() for s in c["sections"]]
        return round(100.0 * sum(s["edits"] for s in sections) / max(1, sum(s["ref_words"] for s in sections)), 4) \
            if key == "wer" else round(sum(c[key] for c in per_clip.values()), 2)

    base = cells.get(BASELINE)
    out: dict = {}
    for (variant, mode), per_clip in cells.items():
        truths = [c["truth_wer_pct"] for c in per_clip.values() if c["truth_wer_pct"] is not None]
        row = {"wer_pct": pooled(per_clip, "wer"), "truth_wer_pct": round(float(np.mean(truths)), 4) if truths else None,
               "encode_s": pooled(per_clip, "encode_s"), "pass_s": pooled(per_clip, "pass_s"),
               "audio_s": pooled(per_clip, "audio_s"),
               "peak_rss_mb": max(c["peak_rss_mb"] for c in per_clip.values()), "clips": per_clip}
        if base is not None and (variant, mode) != BASELINE:
            strata = [Stratum.of([s["ref_words"] for s in base[c]["sections"]], [s["edits"] for s in base[c]["sections"]],
                                 [s["edits"] for s in per_clip[c]["sections"]]) for c in per_clip]
            row["vs_fp32_full"] = paired_interval(strata, macro=False, resamples=resamples,
                                                  seed=draw_seed(seed, "longform")).as_dict()
        out.setdefault(variant, {})[mode] = row
    return out


def main() -> None:
    p = load_params()
    clips = [c for c in p.longform_clips if not (LONGFORM_DIR / c / "audio" / SKIPPED).is_file()]
    missing = [c for c in clips if not (LONGFORM_DIR / c / "reference").is_dir()]
    if missing:
        fail(f"{LONGFORM_DIR}: {', '.join(missing)} missing; run `dvc repro longform_data` first")
    speech = {c: vad_segments(load_clip(clip_audio("audio", LONGFORM_DIR / c), p.longform.max_s),
                              p.longform) for c in clips} if "vad" in p.longform.modes else {}
    cells = {(v, m): run_cell(v, m, clips, p, Path("."), speech) for v in p.longform.variants for m in p.longform.modes}
    summary = summarize(cells, p.eval.bootstrap_resamples, p.eval.bootstrap_seed) if clips else {}
    write_json(Path("metrics/longform.json"), {
        "clips": clips, "context": p.local.context, "overlap_s": p.longform.overlap_s, "variants": summary,
        # the encoders every cell derives from: the report leaves the table out once they change
        "encoder_sha256": {v: encoder_digest(v) for v in p.longform.variants}})
    with atomic_path(Path("docs/longform-results.md")) as tmp:
        tmp.write_text(longform_tables(read_json(Path("metrics/longform.json"))))


if __name__ == "__main__":
    run_cli(main)
