"""Paired bootstrap confidence intervals for the WER difference of two systems scored on the same items.

An item is a section of a long pass or one short utterance; per item we know its reference words and
each system's edits (jiwer's alignment). A draw resamples items with replacement, within each stratum
(a clip, or a language), and both systems are scored on the very same draw, so what varies between
items (how hard each one is) cancels out of their difference. The statistic is pooled (total edits over
total words across strata) or macro (the mean over strata of each stratum's WER).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Stratum:
    """Items of one clip or one language: reference words, baseline edits, variant edits."""

    words: np.ndarray
    base_edits: np.ndarray
    variant_edits: np.ndarray

    @classmethod
    def of(cls, words: Sequence[int], base_edits: Sequence[int], variant_edits: Sequence[int]) -> Stratum:
        arrays = [np.asarray(a, dtype=np.int64) for a in (words, base_edits, variant_edits)]
        if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or arrays[0].size == 0:
            raise ValueError("a stratum needs the same non-zero number of words, base and variant edits")
        return cls(*arrays)


@dataclass(frozen=True)
class Interval:
    """Observed (variant - baseline) WER in points, and its 95 % bootstrap interval."""

    delta_pct: float
    low_pct: float
    high_pct: float

    @property
    def excludes_zero(self) -> bool:
        return self.low_pct > 0 or self.high_pct < 0

    def as_dict(self) -> dict[str, float | bool]:
        return {"delta_pct": self.delta_pct, "ci_low_pct": self.low_pct, "ci_high_pct": self.high_pct,
                "significant": self.excludes_zero}


def draw_seed(seed: int, name: str) -> int:
    """One seed per evaluation set: every variant of a set gets the same draws, whatever the set order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def _statistic(words: list[np.ndarray], diffs: list[np.ndarray], macro: bool) -> np.ndarray:
    """(variant - baseline) WER from per-stratum sums (last axis: strata)."""
    w, d = np.stack(words, axis=-1), np.stack(diffs, axis=-1)
    if macro:
        return (d / np.maximum(w, 1)).mean(axis=-1)
    return d.sum(axis=-1) / np.maximum(w.sum(axis=-1), 1)


def paired_interval(strata: Sequence[Stratum], *, macro: bool, resamples: int, seed: int) -> Interval:
    """The observed difference and the percentile interval over `resamples` paired stratified draws."""
    rng = np.random.default_rng(seed)
    drawn_words, drawn_diffs = [], []
    for s in strata:
        picks = rng.integers(0, s.words.size, size=(resamples, s.words.size))
        drawn_words.append(s.words[picks].sum(axis=1))
        drawn_diffs.append((s.variant_edits - s.base_edits)[picks].sum(axis=1))
    observed = _statistic([s.words.sum() for s in strata],
                          [(s.variant_edits - s.base_edits).sum() for s in strata], macro)
    low, high = np.quantile(_statistic(drawn_words, drawn_diffs, macro), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Interval(*(round(100.0 * float(v), 4) for v in (observed, low, high)))
