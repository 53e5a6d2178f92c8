"""Sections, token-to-section assignment, normalisation and WER arithmetic (requant/scoring.py)."""

from __future__ import annotations

import pytest

from requant.common import StageError
from requant.scoring import (
    Counts,
    Section,
    corpus_wer,
    count_errors,
    make_sections,
    normalize,
    split_by_section,
    tokens_to_text,
)

SECTIONS = [Section(0, 0.0, 60.0), Section(1, 60.0, 120.0), Section(2, 120.0, 150.0)]


def test_sections_cover_the_clip_and_the_last_is_shorter():
    sections = make_sections(390.0, 60.0)
    assert [(s.start_s, s.end_s) for s in sections] == [
        (0, 60), (60, 120), (120, 180), (180, 240), (240, 300), (300, 360), (360, 390)
    ]
    assert [s.index for s in sections] == list(range(7))
    assert sections[-1].label == "360-390 s"


def test_exact_multiple_has_no_empty_tail_and_a_tiny_tail_is_folded():
    assert [s.end_s for s in make_sections(120.0, 60.0)] == [60, 120]
    assert [s.end_s for s in make_sections(120.5, 60.0)] == [60, 120.5]
    assert [s.end_s for s in make_sections(121.5, 60.0)] == [60, 120, 121.5]
    assert [(s.start_s, s.end_s) for s in make_sections(20.0, 60.0)] == [(0, 20)]


def test_bad_section_length_is_a_clear_error():
    with pytest.raises(StageError, match="section_s"):
        make_sections(100.0, 0)


def test_token_on_a_boundary_goes_to_the_later_section():
    tokens = [" one", " two", " three", " four", " five"]
    starts = [0.0, 59.92, 60.0, 119.99, 120.0]
    assert split_by_section(tokens, starts, SECTIONS) == ["one two", "three four", "five"]


def test_words_are_never_split_across_sections():
    # "▁ba" starts before the boundary, "na" and "na" after: the whole word stays in section 0.
    tokens = [" ba", "na", "na", " split", "s"]
    starts = [59.84, 60.0, 60.08, 60.16, 60.24]
    assert split_by_section(tokens, starts, SECTIONS) == ["banana", "splits", ""]


def test_character_vocabulary_with_space_tokens():
    # A demo-model vocabulary: "▁" is its own token; the word's time is its first letter's.
    tokens = [" ", "h", "i", " ", "y", "o"]
    starts = [59.0, 59.5, 59.6, 59.9, 60.0, 60.1]
    assert split_by_section(tokens, starts, SECTIONS) == ["hi", "yo", ""]


def test_times_outside_the_sections_go_to_the_nearest_end_and_empty_sections_stay_empty():
    tokens = [" early", " late"]
    assert split_by_section(tokens, [-0.5, 150.0], SECTIONS) == ["early", "", "late"]
    assert split_by_section([], [], SECTIONS) == ["", "", ""]


def test_section_text_follows_onnx_asr_spacing():
    tokens = [" hello", ",", " world", "."]
    assert tokens_to_text(tokens) == "hello, world."
    assert split_by_section(tokens, [1.0, 1.1, 61.0, 61.2], SECTIONS) == ["hello,", "world.", ""]


def test_mismatched_tokens_and_times_are_refused():
    with pytest.raises(ValueError):
        split_by_section([" a"], [], SECTIONS)


def test_normalisation_modes():
    text = "  Hello, World!  L'homme -- d'accord. "
    assert normalize(text, "raw") == ["Hello,", "World!", "L'homme", "--", "d'accord."]
    assert normalize(text, "lower_nopunct") == ["hello", "world", "lhomme", "daccord"]
    assert normalize("   ", "raw") == []
    with pytest.raises(StageError, match="eval.normalize"):
        normalize("x", "upper")


def test_raw_scoring_counts_case_and_punctuation_as_errors():
    assert count_errors("The cat.", "the cat", "raw").edits == 2
    assert count_errors("The cat.", "the cat", "lower_nopunct").edits == 0


def test_counts_against_a_hand_computed_alignment():
    # w2 dropped (deletion), w5 -> z (substitution), y added after w7 (insertion); matches anchor the rest.
    counts = count_errors("w1 w2 w3 w4 w5 w6 w7 w8", "w1 w3 w4 z w6 w7 y w8", "raw")
    assert counts == Counts(ref_words=8, substitutions=1, deletions=1, insertions=1)
    assert counts.edits == 3
    assert counts.wer == pytest.approx(3 / 8)


def test_empty_hypothesis_is_all_deletions_and_empty_reference_all_insertions():
    assert count_errors("one two three", "", "raw") == Counts(3, 0, 3, 0)
    assert count_errors("one two three", "", "raw").wer == 1.0
    empty_ref = count_errors("", "stray words", "raw")
    assert empty_ref == Counts(0, 0, 0, 2)
    assert empty_ref.wer is None


def test_corpus_wer_is_total_edits_over_total_words_not_the_mean():
    short = count_errors("a b", "a x", "raw")  # 1 edit / 2 words = 50 %
    long = count_errors("c d e f g h i j", "c d e f g h i j", "raw")  # 0 / 8
    assert short.wer == 0.5 and long.wer == 0.0
    assert corpus_wer([short, long]) == pytest.approx(1 / 10)
    assert corpus_wer([short, long]) != pytest.approx((short.wer + long.wer) / 2)


def test_corpus_wer_counts_insertions_in_sections_without_reference_words():
    silent = count_errors("", "noise", "raw")
    spoken = count_errors("a b c d", "a b c d", "raw")
    assert corpus_wer([silent, spoken]) == pytest.approx(1 / 4)
    assert corpus_wer([silent]) is None


def test_characters_are_split_by_their_own_times_when_chars_are_scored() -> None:
    """An output without spaces (the demo CTC head's) is one "word" for minutes: by words it lands whole in the
    section where it starts; scored by characters each one goes to the section its time falls in."""
    sections = make_sections(180.0, 60.0)
    tokens, starts = ["a", "b", "c", "d"], [10.0, 70.0, 130.0, 170.0]
    assert split_by_section(tokens, starts, sections) == ["abcd", "", ""]
    assert split_by_section(tokens, starts, sections, by_token=True) == ["a", "b", "cd"]
    assert normalize("Ab c", "chars") == ["a", "b", "▁", "c"]
