"""The leaderboard's long-form tables (metrics/leaderboard.json -> docs/results.md)."""

from __future__ import annotations

from typing import Any

from requant.model_card import delta_text, pct, table
from requant.variants import LABELS

SET_LABELS = {"earnings21": "earnings-21", "earnings22": "earnings-22", "tedlium": "TED-LIUM"}


def leaderboard_tables(data: dict[str, Any] | None, is_demo: bool) -> str:
    if not data or not data.get("sets"):
        return ("(not run: leaderboard.recordings is 0, the full-scale default; `dvc exp run -S "
                "leaderboard.recordings=1000` scores every recording)\n")
    sets = list(data["sets"])
    variants = sorted(data["mean_corpus_wer_pct"], key=lambda v: list(LABELS).index(v) if v in LABELS else len(LABELS))
    minutes = sum(s[variants[0]]["audio_s"] for s in data["sets"].values()) / 60
    note = ("> **Demo figures**: synthesized recordings standing in for each set (the demo model, held-out "
            "voices), not the leaderboard's audio.\n\n" if is_demo else "")
    head = (f"{note}{sum(s[variants[0]]['recordings'] for s in data['sets'].values())} recordings "
            f"({minutes:.0f} min), each in one pass with local attention {data['context']} and greedy decoding "
            f"(`stages/leaderboard.py`, `metrics/leaderboard.json`).\n\n")
    corpus = table(["encoder", *(SET_LABELS.get(s, s) for s in sets), "mean"],
                   [[LABELS.get(v, v), *(pct(data["sets"][s][v]["corpus_wer_pct"]) for s in sets),
                     pct(data["mean_corpus_wer_pct"][v])] for v in variants])
    ours = table(["encoder", *(SET_LABELS.get(s, s) for s in sets)],
                 [[LABELS.get(v, v), *(f"{pct(data['sets'][s][v]['wer_vs_fp32_pct'])} / {delta_text(data['sets'][s][v].get('vs_fp32'))}"
                                       for s in sets)] for v in variants])
    return (head + "**As the leaderboard scores it** (Whisper's English normalizer on both sides, corpus WER "
            "against the truth):\n\n" + corpus
            + "\n**Against fp32's short-section references** (60 s sections each decoded alone by fp32; WER / "
            "difference to the fp32 pass in points, 95 % paired bootstrap over sections, bold where it excludes "
            "0):\n\n" + ours)
