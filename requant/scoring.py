"""Sections of the evaluation clip, splitting a long pass into them, and WER counts (jiwer).

Shared by the reference, evaluate and report stages. Corpus WER is total edits over total
reference words across sections, never the mean of the section WERs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import jiwer
from onnx_asr.asr import _AsrWithDecoding

from requant.common import fail

# whisper_en: Whisper's English normalizer, the leaderboard's; chars: lower_nopunct's text cut into characters (a
# space is the token ▁), so that a "WER" is the CER: for an output without words (the demo CTC model's)
NORMALIZATIONS = ("raw", "lower_nopunct", "whisper_en", "chars")
MIN_TAIL_S = 1.0  # a last section shorter than this is folded into the one before it
# onnx-asr's own rule for turning concatenated tokens into text, so section texts match its output.
_SPACE_PATTERN: re.Pattern[str] = _AsrWithDecoding.DECODE_SPACE_PATTERN

_TRANSFORMS = {
    "raw": jiwer.Compose([jiwer.RemoveMultipleSpaces(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()]),
    "lower_nopunct": jiwer.Compose(
        [
            jiwer.ToLowerCase(),
            jiwer.RemovePunctuation(),
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    ),
}


@dataclass(frozen=True)
class Section:
    index: int
    start_s: float
    end_s: float

    @property
    def label(self) -> str:
        return f"{self.start_s:g}-{self.end_s:g} s"


def make_sections(duration_s: float, section_s: float) -> list[Section]:
    """Consecutive sections of `section_s` covering the clip; the last one is shorter."""
    if section_s <= 0:
        fail(f"params.yaml: eval.section_s={section_s} must be positive")
    if duration_s <= 0:
        fail("the evaluation clip is empty; re-run `dvc repro decode_eval`")
    count = max(1, math.ceil(duration_s / section_s - 1e-9))
    if count > 1 and duration_s - (count - 1) * section_s < MIN_TAIL_S:
        count -= 1
    edges = [round(i * section_s, 6) for i in range(count)] + [round(duration_s, 6)]
    return [Section(i, edges[i], edges[i + 1]) for i in range(count)]


def tokens_to_text(tokens: Sequence[str]) -> str:
    return _SPACE_PATTERN.sub(lambda m: " " if m.group(1) else "", "".join(tokens))


def group_words(tokens: Sequence[str], starts: Sequence[float]) -> list[tuple[float, list[str]]]:
    """Tokens grouped into words (a word starts at a token beginning with a space), each with the start time
    of its first non-space token."""
    if len(tokens) != len(starts):
        raise ValueError(f"{len(tokens)} tokens but {len(starts)} start times")
    words: list[tuple[float, list[str]]] = []
    for token, start in zip(tokens, starts, strict=True):
        current_is_blank = bool(words) and not "".join(words[-1][1]).strip()
        if not words or (token[:1].isspace() and not current_is_blank):
            words.append((start, [token]))
        else:
            time = start if current_is_blank and token.strip() else words[-1][0]
            words[-1] = (time, [*words[-1][1], token])
    return words


def split_by_section(tokens: Sequence[str], starts: Sequence[float], sections: Sequence[Section],
                     by_token: bool = False) -> list[str]:
    """Text of each section from one long pass.

    Tokens are grouped into words (a word starts at a token beginning with a space); a word belongs to
    the section holding the start time of its first non-space token (start <= t < end; the last section
    also takes anything at or after its end). Whole words are assigned, never split across sections.
    by_token: each token on its own (the `chars` normalisation scores characters: an output without spaces,
    one "word" over minutes, would otherwise land whole in one section).
    """
    per_section: list[list[str]] = [[] for _ in sections]
    groups = [(t, [token]) for token, t in zip(tokens, starts, strict=True)] if by_token else group_words(tokens, starts)
    for time, word_tokens in groups:
        index = next((s.index for s in sections if s.start_s <= time < s.end_s), None)
        if index is None:
            index = 0 if time < sections[0].start_s else len(sections) - 1
        per_section[index].extend(word_tokens)
    return [tokens_to_text(t).strip() for t in per_section]


@cache
def _whisper_english() -> Callable[[str], str]:
    from whisper_normalization import EnglishTextNormalizer  # Whisper's own code and spelling map, without torch

    return EnglishTextNormalizer()


def normalize(text: str, mode: str) -> list[str]:
    """The words that are scored, after the named normalisation."""
    if mode == "whisper_en":
        return _whisper_english()(text).split()
    if mode == "chars":
        return list(" ".join(normalize(text, "lower_nopunct")).replace(" ", "▁"))
    if mode not in _TRANSFORMS:
        fail(f"params.yaml: eval.normalize='{mode}'; use one of {', '.join(NORMALIZATIONS)}")
    return [w for w in _TRANSFORMS[mode](text)[0] if w] if text.strip() else []


@dataclass(frozen=True)
class Counts:
    """Alignment counts of one hypothesis against one reference."""

    ref_words: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float | None:
        """None when there is no reference word (the edits still count in the corpus WER)."""
        return self.edits / self.ref_words if self.ref_words else None

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "edits": self.edits}


def count_errors(reference: str, hypothesis: str, mode: str) -> Counts:
    """Word alignment counts; an empty hypothesis is all deletions, an empty reference all insertions."""
    ref, hyp = normalize(reference, mode), normalize(hypothesis, mode)
    if not ref or not hyp:
        return Counts(len(ref), 0, len(ref), len(hyp))
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return Counts(len(ref), out.substitutions, out.deletions, out.insertions)


def count_char_errors(reference: str, hypothesis: str, mode: str) -> Counts:
    """Character alignment counts (for CER) of the normalised words joined by single spaces."""
    ref, hyp = " ".join(normalize(reference, mode)), " ".join(normalize(hypothesis, mode))
    if not ref or not hyp:
        return Counts(len(ref), 0, len(ref), len(hyp))
    out = jiwer.process_characters(ref, hyp)
    return Counts(len(ref), out.substitutions, out.deletions, out.insertions)


def total(counts: Sequence[Counts]) -> Counts:
    return Counts(
        sum(c.ref_words for c in counts),
        sum(c.substitutions for c in counts),
        sum(c.deletions for c in counts),
        sum(c.insertions for c in counts),
    )


def corpus_wer(counts: Sequence[Counts]) -> float | None:
    """Total edits / total reference words (not the mean of the per-section WERs)."""
    return total(counts).wer


def percent(value: float | None) -> float | None:
    """A rate as a percentage rounded to 4 decimals (None stays None)."""
    return None if value is None else round(100.0 * value, 4)


def score_sections(
    sections: list[Section], references: list[str], hypotheses: list[str], normalize: str
) -> dict[str, Any]:
    counts = [count_errors(ref, hyp, normalize) for ref, hyp in zip(references, hypotheses, strict=True)]
    rows = [
        {"index": s.index, "start_s": s.start_s, "end_s": s.end_s, "wer_pct": percent(c.wer), **c.as_dict(),
         "hypothesis": hyp}
        for s, c, hyp in zip(sections, counts, hypotheses, strict=True)
    ]
    scored = [r for r in rows if r["wer_pct"] is not None]
    worst = max(scored, key=lambda r: r["wer_pct"], default=None)  # first of equals: the earliest section
    return {
        "overall_wer_pct": percent(corpus_wer(counts)),
        "overall_counts": total(counts).as_dict(),
        "worst_section": None if worst is None else {k: worst[k] for k in ("index", "start_s", "end_s", "wer_pct")},
        "sections": rows,
    }
