"""Decoding a long recording the way apps do: fixed windows with overlap, or voice-activity segments.

Windows of `chunk_s` start every `chunk_s - overlap_s`; each is transcribed alone (token start times
shifted to the recording's clock), then neighbours are stitched at the middle of their overlap: the
left window's words before the middle, the right window's from it on. A word's start is estimated
from each window to within an encoder frame or two, so a word near the middle can be seen on both
sides (kept twice) or on neither (lost). Both are repaired with what the windows heard around the
seam: a word the right window repeats within `gap_s` of the left's last word is dropped, and a word
that both windows heard within `gap_s` of each other but on opposite sides of the middle is kept once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from requant.scoring import group_words, normalize

Word = tuple[float, list[str]]  # start time (s), tokens


@dataclass(frozen=True)
class Piece:
    """One window's (or segment's) transcript on the recording's clock."""

    start_s: float
    end_s: float
    tokens: list[str]
    starts: list[float]  # absolute seconds


def windows(samples: int, rate: int, chunk_s: float, overlap_s: float) -> list[tuple[int, int]]:
    """[start, end) sample ranges of chunk_s windows every chunk_s - overlap_s, the last one ending at the end."""
    if not 0 <= overlap_s < chunk_s:
        raise ValueError(f"overlap_s={overlap_s} must lie in [0, chunk_s={chunk_s})")
    size, hop = round(chunk_s * rate), round((chunk_s - overlap_s) * rate)
    spans, start = [], 0
    while True:
        end = min(start + size, samples)
        spans.append((start, end))
        if end >= samples:
            return spans
        start += hop


def _same(a: Word, b: Word, gap_s: float) -> bool:
    return abs(a[0] - b[0]) <= gap_s and normalize("".join(a[1]), "lower_nopunct") == \
        normalize("".join(b[1]), "lower_nopunct")


def merge(pieces: Sequence[Piece], gap_s: float) -> tuple[list[str], list[float]]:
    """The windows stitched at the middle of each overlap: tokens and start times of the whole recording."""
    kept: list[Word] = []
    previous: list[Word] = []
    for index, piece in enumerate(pieces):
        words = group_words(piece.tokens, piece.starts)
        low = -np.inf if index == 0 else (pieces[index - 1].end_s + piece.start_s) / 2
        high = np.inf if index == len(pieces) - 1 else (piece.end_s + pieces[index + 1].start_s) / 2
        mine = [w for w in words if low <= w[0] < high]
        if index and kept:
            left_after = next((w for w in previous if w[0] >= low), None)  # the left window, just past the seam
            right_before = next((w for w in reversed(words) if w[0] < low), None)  # the right one, just before
            if mine and _same(kept[-1], mine[0], gap_s):
                mine = mine[1:]  # heard on both sides of the middle: once
            elif left_after is not None and right_before is not None and _same(left_after, right_before, gap_s) \
                    and not (mine and _same(left_after, mine[0], gap_s)):
                kept.append(left_after)  # heard by both, each on the other side of the middle: keep it once
        kept.extend(mine)
        previous = words
    tokens = [token for _, word in kept for token in word]
    starts = [start for start, word in kept for _ in word]
    return tokens, starts


def pieces_from(spans: Sequence[tuple[int, int]], rate: int, transcripts: Sequence) -> list[Piece]:
    """Each span's transcript (tokens, starts relative to the span) on the recording's clock."""
    return [Piece(a / rate, b / rate, list(t.tokens), [a / rate + s for s in t.starts])
            for (a, b), t in zip(spans, transcripts, strict=True)]


def concatenate(pieces: Sequence[Piece]) -> tuple[list[str], list[float]]:
    """Pieces that do not overlap, in order (voice-activity segments): nothing to stitch."""
    tokens = [t for p in pieces for t in p.tokens]
    starts = [s for p in pieces for s in p.starts]
    return tokens, starts
