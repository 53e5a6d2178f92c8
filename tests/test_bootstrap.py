"""requant/bootstrap.py: paired, stratified bootstrap intervals of a WER difference."""

from __future__ import annotations

import numpy as np
import pytest

from requant.bootstrap import Stratum, draw_seed, paired_interval


def _random_stratum(rng: np.random.Generator, n: int, shift: int = 0) -> Stratum:
    words = rng.integers(5, 40, n)
    base = rng.binomial(words, 0.1)
    return Stratum.of(words, base, base + shift * (words // 10))


def test_identical_hypotheses_give_a_zero_width_interval_at_zero() -> None:
    rng = np.random.default_rng(1)
    words = rng.integers(1, 30, 50)
    edits = rng.binomial(words, 0.2)
    interval = paired_interval([Stratum.of(words, edits, edits)], macro=False, resamples=500, seed=3)
    assert (interval.delta_pct, interval.low_pct, interval.high_pct) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero


def test_a_constant_shift_is_recovered_exactly() -> None:
    """Every item gets exactly 10 % more edits: every draw, pooled or macro, differs by 10 points."""
    rng = np.random.default_rng(2)
    strata = []
    for n in (30, 7):
        words = 10 * rng.integers(1, 5, n)
        base = rng.binomial(words, 0.15)
        strata.append(Stratum.of(words, base, base + words // 10))
    for macro in (False, True):
        interval = paired_interval(strata, macro=macro, resamples=300, seed=0)
        assert (interval.delta_pct, interval.low_pct, interval.high_pct) == (10.0, 10.0, 10.0)
        assert interval.excludes_zero


def test_a_noisy_shift_lands_inside_an_interval_that_excludes_zero() -> None:
    rng = np.random.default_rng(3)
    words = rng.integers(5, 40, 400)
    base = rng.binomial(words, 0.10)
    variant = rng.binomial(words, 0.13)  # 3 points worse on average, item by item independent
    interval = paired_interval([Stratum.of(words, base, variant)], macro=False, resamples=2000, seed=0)
    assert interval.low_pct < 3.0 < interval.high_pct and interval.low_pct > 0
    assert interval.low_pct < interval.delta_pct < interval.high_pct


def test_draws_match_a_plain_loop_with_the_same_generator() -> None:
    """Pooled over two strata: each draw resamples each stratum on its own, with the same picks for both."""
    rng = np.random.default_rng(4)
    strata = [_random_stratum(rng, 12, shift=1), _random_stratum(rng, 5)]
    picks_rng = np.random.default_rng(9)
    picks = [picks_rng.integers(0, s.words.size, size=(200, s.words.size)) for s in strata]
    stats = []
    for r in range(200):
        words = sum(s.words[p[r]].sum() for s, p in zip(strata, picks, strict=True))
        diff = sum((s.variant_edits - s.base_edits)[p[r]].sum() for s, p in zip(strata, picks, strict=True))
        stats.append(diff / words)
    low, high = np.quantile(stats, [0.025, 0.975])
    interval = paired_interval(strata, macro=False, resamples=200, seed=9)
    assert (interval.low_pct, interval.high_pct) == (round(100 * low, 4), round(100 * high, 4))


def test_same_seed_same_interval_and_seeds_differ_per_set() -> None:
    rng = np.random.default_rng(5)
    strata = [_random_stratum(rng, 40, shift=1)]
    first = paired_interval(strata, macro=True, resamples=400, seed=draw_seed(0, "en_us"))
    assert first == paired_interval(strata, macro=True, resamples=400, seed=draw_seed(0, "en_us"))
    assert draw_seed(0, "en_us") != draw_seed(0, "fr_fr") != draw_seed(1, "en_us")


def test_mismatched_items_are_refused() -> None:
    with pytest.raises(ValueError, match="same non-zero number"):
        Stratum.of([3, 4], [0, 1], [0])
