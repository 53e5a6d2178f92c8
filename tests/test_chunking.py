"""requant/chunking.py: windows as apps cut them, and the stitch at the middle of each overlap."""

from __future__ import annotations

import pytest

from requant.chunking import Piece, merge, windows
from requant.scoring import tokens_to_text

TRUTH = [("one", 1.0), ("two", 3.0), ("three", 5.5), ("four", 7.96), ("five", 9.0), ("six", 11.0),
         ("seven", 13.5), ("eight", 16.02), ("nine", 17.5), ("ten", 19.0)]


def heard(start_s: float, end_s: float, jitter: dict[str, float]) -> Piece:
    """A window's transcript: the words whose start it contains, each start moved by that window's jitter."""
    words = [(w, t + jitter.get(w, 0.0)) for w, t in TRUTH if start_s <= t < end_s]
    return Piece(start_s, end_s, [f" {w}" for w, _ in words], [t for _, t in words])


def test_windows_cover_the_recording_with_the_overlap_and_end_at_its_end() -> None:
    assert windows(100, 1, 30, 10) == [(0, 30), (20, 50), (40, 70), (60, 90), (80, 100)]
    assert windows(30, 1, 30, 5) == [(0, 30)]
    with pytest.raises(ValueError, match="overlap_s"):
        windows(100, 1, 20, 20)


def test_words_at_the_seams_are_neither_duplicated_nor_dropped() -> None:
    # windows [0, 10), [6, 16), [12, 22): middles at 8 and 14... and 16 for a third seam below
    pieces = [heard(0, 10, {"four": +0.0}),  # left sees "four" at 7.96 (< 8: kept)
              heard(6, 16, {"four": +0.08, "eight": 0.0}),  # right sees it at 8.04 (>= 8: kept too) -> once
              heard(12, 22, {})]
    tokens, _ = merge(pieces, gap_s=0.25)
    assert tokens_to_text(tokens).split() == [w for w, _ in TRUTH]


def test_a_word_each_window_puts_on_the_other_side_of_the_middle_is_kept_once() -> None:
    # windows [0, 20), [12, 32): middle 16. "eight" (16.02) is heard at 16.05 on the left (not kept there)
    # and at 15.97 on the right (not kept there either): without the repair it would be lost
    pieces = [heard(0, 20, {"eight": +0.03}), heard(12, 32, {"eight": -0.05})]
    tokens, starts = merge(pieces, gap_s=0.25)
    assert tokens_to_text(tokens).split() == [w for w, _ in TRUTH]
    assert len(starts) == len(tokens)


def test_a_word_said_twice_far_apart_is_not_taken_for_a_duplicate() -> None:
    pieces = [Piece(0, 10, [" yes", " yes"], [7.0, 7.99]), Piece(6, 16, [" yes", " yes", " no"], [7.02, 8.0, 9.0])]
    # the left keeps both "yes" (< 8); the right's 8.0 "yes" is the left's 7.99 one: dropped, not the word
    tokens, _ = merge(pieces, gap_s=0.25)
    assert tokens_to_text(tokens).split() == ["yes", "yes", "no"]
