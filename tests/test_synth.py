"""demo/text.py and demo/synth.py: real espeak-ng, deterministic, exact lengths, clean text."""

from __future__ import annotations

import numpy as np
import pytest

from demo import synth, text


@pytest.mark.parametrize("lang", text.LANGS)
def test_sentences_are_reproducible_and_normalised(lang: str) -> None:
    batch = text.sentences(lang, 300, seed=3)
    assert batch == text.sentences(lang, 300, seed=3)
    assert batch != text.sentences(lang, 300, seed=4)
    assert set("".join(batch)) <= set(text.ALPHABET)
    for sentence in batch:
        words = sentence.split(" ")
        assert text.MIN_WORDS <= len(words) <= text.MAX_WORDS and all(words), sentence
    assert len({w for s in batch for w in s.split()}) > 300  # a real vocabulary, not a handful of words


def test_numbers_are_spelled_out() -> None:
    assert text.en_number(1234) == "one thousand two hundred and thirty four"
    assert text.normalize(text.fr_number(91)) == "quatre vingt onze"
    assert text.fr_number(71) == "soixante et onze" and text.fr_number(200) == "deux cents"
    assert text.normalize("L'Été, 42 fois!  Oui-oui.") == "l'été fois oui oui"


@pytest.mark.parametrize("voice", ["en-us+m3", "fr+f2", "en-gb", "fr-be+m5"])
def test_synthesize_is_deterministic_speech(voice: str) -> None:
    sentence = "one two three four" if voice.startswith("en") else "un deux trois quatre"
    first = synth.synthesize(sentence, voice, rate_wpm=170, pitch=45)
    assert first.dtype == np.float32 and first.ndim == 1
    assert 0.5 < len(first) / synth.SAMPLE_RATE < 5.0
    assert float(np.sqrt(np.mean(first**2))) > 0.02 and float(np.abs(first).max()) <= 1.0
    np.testing.assert_array_equal(first, synth.synthesize(sentence, voice, rate_wpm=170, pitch=45))
    faster = synth.synthesize(sentence, voice, rate_wpm=260, pitch=45)
    assert len(faster) < len(first)


@pytest.mark.parametrize("voice", ["xx-yy", "en-us+nosuchvariant"])
def test_unknown_voice_is_refused(voice: str) -> None:
    with pytest.raises(ValueError, match="no voice"):
        synth.synthesize("hello", voice)


def test_make_speech_fills_exact_duration_with_its_transcript() -> None:
    audio, transcript = synth.make_speech("fr", "fr+m1", 12.5, seed=7)
    assert audio.shape == (200_000,) and audio.dtype == np.float32
    assert transcript and set(transcript) <= set(text.ALPHABET)
    again, same = synth.make_speech("fr", "fr+m1", 12.5, seed=7)
    np.testing.assert_array_equal(audio, again)
    assert same == transcript
    other_text = synth.make_speech("fr", "fr+m1", 12.5, seed=7, text_seed_offset=1000)[1]
    assert other_text != transcript
    # the transcript is generated sentences in order (those that did not fit skipped), and speech
    # fills most of the clip
    rest = transcript
    for sentence in text.sentences("fr", 20, 7):
        if rest == sentence or rest.startswith(sentence + " "):
            rest = rest[len(sentence):].lstrip(" ")
    assert rest == ""
    assert float(np.mean(np.abs(audio) > 1e-3)) > 0.3


def test_breathy_voice_is_identical_across_processes():
    """fr+f3 adds breath noise from espeak-ng's random generator (with varied pitch and rate, as
    make_speech does); every process must still get the same audio."""
    import subprocess
    import sys

    code = ("import hashlib; from demo.synth import make_speech; "
            "print(hashlib.sha256(make_speech('fr', 'fr+f3', 20, 5)[0].tobytes()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
               for _ in range(2)}
    assert len(digests) == 1
