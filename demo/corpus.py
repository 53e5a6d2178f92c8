"""Training data for the demo model: synthesized sentences, long concatenations, feature batches.

Sentences come from demo.text and are spoken by espeak-ng (demo.synth) with the training voices:
every variant but the held-out +m3 and +f2, random speaking rates and pitches. A corpus is cached
under demo/.work/ per (count, seed). Features are onnx-asr's own NumPy nemo128 (requant.features),
the ones inference uses.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from demo.text import ALPHABET, sentences
from requant.features import features

log = logging.getLogger("demo.corpus")

WORK = Path("demo/.work")
BLANK_TOKEN = "<blk>"
TRAIN_VOICES = {
    "en": ("en-us", "en-gb"),
    "fr": ("fr", "fr-be"),
}
TRAIN_VARIANTS = ("", "+m1", "+m2", "+m4", "+m5", "+m6", "+m7", "+m8", "+f1", "+f3", "+f4", "+f5")
SR = 16_000
SYNTH_PROCESSES = max(16, 2 * (os.cpu_count() or 2))


def vocab_tokens() -> list[str]:
    """Characters of ALPHABET (space written as SentencePiece's '▁'), then <blk> last."""
    return [("▁" if ch == " " else ch) for ch in ALPHABET] + [BLANK_TOKEN]


_CHAR_INDEX = {ch: i for i, ch in enumerate(ALPHABET)}


def encode_text(text: str) -> list[int]:
    return [_CHAR_INDEX[ch] for ch in text]


@dataclass(frozen=True)
class Utterance:
    text: str
    audio: np.ndarray  # int16, 16 kHz


def speak(text: str, voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
    """demo.synth.synthesize as int16 (how the corpus stores its audio)."""
    from demo.synth import synthesize

    audio = synthesize(text, voice, rate_wpm=rate_wpm, pitch=pitch)
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


def _speak_spec(spec: tuple[str, str, int, int]) -> np.ndarray:
    return speak(*spec)


def synth_specs(n_per_lang: int, seed: int, n_french: int | None = None) -> list[tuple[str, str, int, int]]:
    """(text, voice, rate, pitch) per training sentence; `n_french` overrides French's count."""
    rng = random.Random(f"train-voices:{seed}")
    specs = []
    for lang in ("en", "fr"):
        n = n_french if lang == "fr" and n_french is not None else n_per_lang
        for text in sentences(lang, n, seed=1000 + seed):
            voice = rng.choice(TRAIN_VOICES[lang]) + rng.choice(TRAIN_VARIANTS)
            specs.append((text, voice, rng.randint(125, 205), rng.randint(32, 68)))
    rng.shuffle(specs)
    return specs


def training_corpus(n_per_lang: int, seed: int, n_french: int | None = None) -> list[Utterance]:
    cache = WORK / f"corpus-{n_per_lang}-{seed}{'' if n_french is None else f'-fr{n_french}'}.npz"
    specs = synth_specs(n_per_lang, seed, n_french)
    if cache.exists():
        data = np.load(cache)
        audio, offsets = data["audio"], data["offsets"]
    else:
        t0 = time.time()
        # espeak-ng spends most of each call waiting, not computing: SYNTH_PROCESSES keep the cores busy
        with multiprocessing.get_context("fork").Pool(SYNTH_PROCESSES) as pool:
            clips = []
            for clip in pool.imap(_speak_spec, specs, chunksize=32):
                clips.append(clip)
                if len(clips) % 2000 == 0:
                    log.info("synthesized %d/%d clips", len(clips), len(specs))
        offsets = np.cumsum([0] + [len(c) for c in clips])
        audio = np.concatenate(clips)
        WORK.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(cache.name + ".partial")
        with partial.open("wb") as f:  # a file object: np.savez would append ".npz" to the name
            np.savez(f, audio=audio, offsets=offsets)
        partial.replace(cache)
        log.info("synthesized %d clips (%.1f h) in %.0f s", len(specs), len(audio) / SR / 3600, time.time() - t0)
    return [Utterance(s[0], audio[offsets[i] : offsets[i + 1]]) for i, s in enumerate(specs)]


# (sample in the middle of a pause, index of the space before the next sentence): the space opens the
# next segment because the model emits it at the next word's onset, after the pause
Cut = tuple[int, int]


def concatenation(utts: list[Utterance], rng: random.Random, seconds: float) -> tuple[np.ndarray, str, list[Cut]]:
    """Sentences with 0.2-0.8 s pauses (as demo.synth.make_speech) until about `seconds` long, and
    the cuts between them (for batch_loss's `cuts`)."""
    parts: list[np.ndarray] = [np.zeros(int(rng.uniform(0.1, 0.8) * SR), np.int16)]
    texts: list[str] = []
    cuts: list[Cut] = []
    total, pause_before = len(parts[0]), 0
    while total < seconds * SR:
        u = rng.choice(utts)
        pause = np.zeros(int(rng.uniform(0.2, 0.8) * SR), np.int16)
        if texts:
            cuts.append((total - pause_before // 2, sum(len(t) + 1 for t in texts) - 1))
        parts += [u.audio, pause]
        texts.append(u.text)
        total += len(u.audio) + len(pause)
        pause_before = len(pause)
    return np.concatenate(parts), " ".join(texts), cuts


def bucketed_batches(
    utts: list[Utterance], rng: random.Random, audio_budget: float, pool_batches: int = 16
) -> list[list[tuple[np.ndarray, str]]]:
    """Batches of single sentences of similar length (little padding), ~audio_budget seconds each."""
    pool = rng.sample(utts, k=min(len(utts), int(pool_batches * audio_budget / 2.5)))
    pool.sort(key=lambda u: len(u.audio))
    batches: list[list[tuple[np.ndarray, str]]] = [[]]
    total = 0.0
    for u in pool:
        if total >= audio_budget:
            batches.append([])
            total = 0.0
        batches[-1].append((u.audio, u.text))
        total += len(u.audio) / SR
    rng.shuffle(batches)
    return batches


def spec_augment(feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two frequency masks (<= 15 bins) and one time mask (<= 20 frames) per 5 s; zero = the mean."""
    feats = feats.copy()
    n_mels, t = feats.shape
    for _ in range(2):
        w = int(rng.integers(0, 16))
        f0 = int(rng.integers(0, n_mels - w))
        feats[f0 : f0 + w] = 0.0
    for _ in range(max(1, t // 500)):
        w = int(rng.integers(0, 21))
        t0 = int(rng.integers(0, max(1, t - w)))
        feats[:, t0 : t0 + w] = 0.0
    return feats


def make_batch(
    items: list[tuple[np.ndarray, str]], rng: np.random.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    feats, lens, targets = [], [], []
    for audio, text in items:
        f, n = features(audio.astype(np.float32) / 32768.0)
        f = f[0, :, : int(n[0])]
        feats.append(spec_augment(f, rng) if rng is not None else f)
        lens.append(f.shape[1])
        targets.append(encode_text(text))
    t_max, u_max = max(lens), max(len(t) for t in targets)
    x = np.zeros((len(items), feats[0].shape[0], t_max), np.float32)
    y = np.zeros((len(items), u_max), np.int64)
    for i, (f, tgt) in enumerate(zip(feats, targets, strict=True)):
        x[i, :, : f.shape[1]] = f
        y[i, : len(tgt)] = tgt
    return (torch.from_numpy(x), torch.tensor(lens), torch.from_numpy(y), torch.tensor([len(t) for t in targets]))
