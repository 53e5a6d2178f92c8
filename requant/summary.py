"""Every variant on every evaluation set, against fp32, with paired bootstrap intervals.

Sets: each long clip (items: its sections, scored against the fp32 short-clip reference), all long
clips pooled, each corpus language (items: utterances, scored against the true transcripts) and the
macro average over languages. Input: metrics/eval/<variant>.json as the evaluate stage writes them.
"""

from __future__ import annotations

from typing import Any

from requant.bootstrap import Stratum, draw_seed, paired_interval
from requant.common import fail

BASELINE = "fp32"
POOLED, MACRO = "long_pooled", "corpus_macro"


def decoding_view(e: dict[str, Any], decoding: str) -> dict[str, Any]:
    """A variant's evaluation under one decoding, flat: long[clip] holds the clip's own figures and that
    decoding's scores; corpus[lang] that decoding's."""
    if decoding not in e["decodings"]:
        fail(f"metrics/eval/{e['variant']}.json has no '{decoding}' decoding; re-run `dvc repro evaluate`")
    long = {clip: {**{k: v for k, v in c.items() if k != "by_decoding"}, **c["by_decoding"][decoding]}
            for clip, c in e["long"].items()}
    return {**e, "long": long, "corpus": e["corpus"][decoding]}


def _rate(edits: int, words: int) -> float | None:
    return round(100.0 * edits / words, 4) if words else None


def _long_stratum(base: dict, variant: dict) -> Stratum:
    return Stratum.of([s["ref_words"] for s in base["sections"]], [s["edits"] for s in base["sections"]],
                      [s["edits"] for s in variant["sections"]])


def _corpus_stratum(base: dict, variant: dict, unit: str = "words") -> Stratum:
    """One language's utterances as a stratum, in words (WER) or characters (CER)."""
    refs, edits = ("ref_words", "edits") if unit == "words" else ("ref_chars", "char_edits")
    return Stratum.of(base["items"][refs], base["items"][edits], variant["items"][edits])


def check_paired(evals: dict[str, dict[str, Any]]) -> None:
    """Every variant must have been scored on the same clips, sections and utterances as fp32."""
    if BASELINE not in evals:
        fail("metrics/eval/fp32.json is missing: every interval is a difference to fp32; run `dvc repro evaluate@fp32`")
    base = evals[BASELINE]
    for name, e in evals.items():
        same = (e["long"].keys() == base["long"].keys() and e["corpus"].keys() == base["corpus"].keys()
                and all(len(e["long"][c]["sections"]) == len(base["long"][c]["sections"]) for c in base["long"])
                and all(e["corpus"][lang]["items"]["ids"] == base["corpus"][lang]["items"]["ids"]
                        for lang in base["corpus"]))
        if not same:
            fail(f"metrics/eval/{name}.json was scored on other clips or utterances than fp32.json; "
                 "re-run `dvc repro evaluate` so that every variant sees the same sets")


def summarize(evals: dict[str, dict[str, Any]], resamples: int, seed: int) -> dict[str, dict[str, dict]]:
    """variant -> set -> {wer_pct, delta_pct, ci_low_pct, ci_high_pct, significant} (+ cer_pct for languages)."""
    check_paired(evals)
    base = evals[BASELINE]
    clips, langs = list(base["long"]), list(base["corpus"])
    out: dict[str, dict[str, dict]] = {}
    for name, e in evals.items():
        long = {c: _long_stratum(base["long"][c], e["long"][c]) for c in clips}
        corpus = {lang: _corpus_stratum(base["corpus"][lang], e["corpus"][lang]) for lang in langs}
        row: dict[str, dict] = {}

        def interval(key: str, strata: list[Stratum], macro: bool) -> dict:
            return paired_interval(strata, macro=macro, resamples=resamples, seed=draw_seed(seed, key)).as_dict()

        for clip, s in long.items():
            row[clip] = {"wer_pct": _rate(int(s.variant_edits.sum()), int(s.words.sum())),
                         **interval(clip, [s], False)}
        if clips:
            row[POOLED] = {"wer_pct": _rate(sum(int(s.variant_edits.sum()) for s in long.values()),
                                            sum(int(s.words.sum()) for s in long.values())),
                           **interval(POOLED, list(long.values()), False)}
        chars = {lang: _corpus_stratum(base["corpus"][lang], e["corpus"][lang], "chars") for lang in langs}
        for lang, s in corpus.items():
            row[lang] = {"wer_pct": e["corpus"][lang]["wer_pct"], "cer_pct": e["corpus"][lang]["cer_pct"],
                         **interval(lang, [s], False), "cer": interval(f"{lang}/cer", [chars[lang]], False)}
        if langs:
            row[MACRO] = {"wer_pct": round(sum(e["corpus"][lang]["wer_pct"] for lang in langs) / len(langs), 4),
                          "cer_pct": round(sum(e["corpus"][lang]["cer_pct"] for lang in langs) / len(langs), 4),
                          **interval(MACRO, list(corpus.values()), True),
                          "cer": interval(f"{MACRO}/cer", list(chars.values()), True)}
        out[name] = row
    return out


def headline(summaries: dict[str, dict[str, dict[str, dict]]]) -> dict[str, dict[str, float]]:
    """metrics/wer.json: per variant, flat and short-named so that `dvc exp show` columns fit a terminal:
    `long` (pooled long passes) and `corpus` (macro average), each with `_delta`, `_lo` and `_hi` (the
    difference to fp32 and its interval); a decoding after the first adds its name (`long_beam`, ...).
    Every set is in metrics/eval_summary.json."""
    first = next(iter(summaries))
    out: dict[str, dict[str, float]] = {}
    for decoding, summary in summaries.items():
        suffix = "" if decoding == first else f"_{decoding}"
        for name, row in summary.items():
            for label, key in (("long", POOLED), ("corpus", MACRO)):
                if key in row:
                    cell, prefix = row[key], f"{label}{suffix}"
                    out.setdefault(name, {}).update({prefix: cell["wer_pct"], f"{prefix}_delta": cell["delta_pct"],
                                                     f"{prefix}_lo": cell["ci_low_pct"],
                                                     f"{prefix}_hi": cell["ci_high_pct"]})
    return out


def measured_as(floors: dict[str, Any], variant: str) -> str:
    """The variant whose floors stand for this one's (int8_blockwise: int8_smoothquant's, the same outputs)."""
    return floors.get("shared_with", {}).get(variant, variant)


def noise_floor(floors: dict[str, Any] | None, variant: str, name: str) -> float:
    """The larger WER range of a variant's two floors on one set (bench/floors.py); 0 for a variant with nothing
    calibrated, or when the floors were not measured."""
    if not floors:
        return 0.0
    measured = measured_as(floors, variant)
    ranges = [floors[kind].get(measured, {}).get(name, {}).get("range", 0.0) for kind in ("perturbation", "calibration")]
    return float(max(ranges))


def apply_floors(summary: dict[str, dict[str, dict]], floors: dict[str, Any] | None) -> None:
    """Each cell gets its noise floor and `called`: a difference is called only when its interval excludes 0
    and it exceeds the floor; everything else is within noise."""
    for variant, row in summary.items():
        for name, cell in row.items():
            floor = noise_floor(floors, variant, name)
            cell["floor_pct"] = round(floor, 4)
            cell["called"] = bool(cell["significant"] and abs(cell["delta_pct"]) > floor)
