"""requant/beam.py: TDT beam search (MAES) against greedy, a hand-built joint, brute force and the demo corpus."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import jiwer
import numpy as np
import pytest

from requant.beam import beam_search, log_softmax
from requant.params import BeamParams

REPO = Path(__file__).resolve().parents[1]
NO_PRUNING = BeamParams(width=10_000, expansion_beta=100, expansion_gamma=1e9, prefix_alpha=0, score_norm=False)


class TableJoint:
    """A joint whose logits depend on the frame (encodings[t] = [t]) and the whole token history, which the
    prediction-network state carries as a code: a tiny stand-in for decoder_joint with known answers."""

    def __init__(self, table: dict[tuple[int, tuple[int, ...]], np.ndarray] | None = None, *, blank: int,
                 vocab: int, durations: int, seed: int = 0) -> None:
        self.table, self.blank, self.width, self.seed = table or {}, blank, vocab + durations, seed
        self.histories: dict[float, tuple[int, ...]] = {0.0: ()}  # state code -> tokens it has consumed

    def _code(self, history: tuple[int, ...]) -> float:
        code = float(len(self.histories))
        for known, tokens in self.histories.items():
            if tokens == history:
                return known
        self.histories[code] = history
        return code

    def __call__(self, frames, tokens, state1, state2):
        logits, codes = [], []
        for frame, token, code in zip(frames[:, 0], tokens, state1[0, :, 0], strict=True):
            before = self.histories[float(code)]
            history = before if token == self.blank and not before else before + (int(token),)
            key = (int(frame), history)
            if key not in self.table:  # random logits, fixed by (seed, frame, history) whatever the order asked
                self.table[key] = np.random.default_rng([self.seed, key[0], len(history), *history]).normal(
                    0, 2, self.width)
            logits.append(self.table[key])
            codes.append(self._code(history))
        state = np.array(codes, np.float32)[None, :, None]
        return np.stack(logits), state, state


def _search(joint: TableJoint, frames: int, params: BeamParams, vocab: int = 3, durations=(0, 1, 2), max_tokens=2):
    encodings = np.arange(frames, dtype=np.float32)[:, None]
    zero = np.zeros((1, 1, 1), np.float32)
    return beam_search(encodings, frames, joint, blank=vocab - 1, vocab_size=vocab, durations=list(durations),
                       initial_state=(zero, zero), params=params, max_tokens_per_step=max_tokens)


def brute_force(joint: TableJoint, frames: int, vocab: int = 3, durations=(0, 1, 2), max_tokens: int = 2) -> dict:
    """Every path, by the transition rules greedy decoding uses; (tokens, end frame, tokens on it) -> the
    log of the summed probability of the paths that end there."""
    blank, ends = vocab - 1, {}
    zero = np.zeros((1, 1, 1), np.float32)

    def walk(tokens, frame, on_frame, state, logp):
        if frame >= frames:
            key = (tokens, frame, on_frame)
            ends[key] = np.logaddexp(ends.get(key, -np.inf), logp)
            return
        last = np.array([tokens[-1] if tokens else blank])
        logits, new, _ = joint(np.array([[frame]], np.float32), last, state, state)
        lp_tok, lp_dur = log_softmax(logits[0, :vocab]), log_softmax(logits[0, vocab:])
        for token, (d_index, step) in itertools.product(range(vocab), enumerate(durations)):
            score = logp + lp_tok[token] + lp_dur[d_index]
            if token == blank:
                walk(tokens, frame + max(step, 1), 0, state, score)
            else:
                count = 0 if step > 0 else on_frame + 1
                nxt = frame + step if step > 0 else frame + (count == max_tokens)
                walk(tokens + (token,), nxt, 0 if nxt != frame else count, new, score)

    walk((), 0, 0, zero, 0.0)
    return ends


def test_scores_match_brute_force_on_a_tiny_case() -> None:
    """No pruning, no prefix merging: the best hypothesis is the best end state of every path, its
    probability summed over the paths (alignments) that reach it."""
    for seed in range(3):
        ends = brute_force(TableJoint(blank=2, vocab=3, durations=3, seed=seed), frames=3)
        best_key = max(ends, key=ends.get)
        found = _search(TableJoint(blank=2, vocab=3, durations=3, seed=seed), 3, NO_PRUNING)
        assert tuple(found.tokens) == best_key[0]
        assert found.score == pytest.approx(ends[best_key], abs=1e-9)


def test_the_beam_finds_the_path_greedy_misses() -> None:
    """Frame 0: 'a' 0.6, 'b' 0.4. After 'a' frame 1 is uncertain (best: blank 0.35); after 'b' it is a
    sure blank (0.99). Greedy keeps 'a' (0.6 x 0.35 = 0.21); the beam finds 'b' (0.4 x 0.99 = 0.40)."""
    one_frame = np.log([1e-9, 1.0, 1e-9])  # durations 0, 1, 2: always one frame on
    table = {(0, ()): np.concatenate([np.log([0.6, 0.4, 1e-6]), one_frame]),
             (1, (0,)): np.concatenate([np.log([0.33, 0.32, 0.35]), one_frame]),
             (1, (1,)): np.concatenate([np.log([0.005, 0.005, 0.99]), one_frame])}
    greedy = _search(TableJoint(dict(table), blank=2, vocab=3, durations=3), 2, BeamParams(width=1))
    beam = _search(TableJoint(dict(table), blank=2, vocab=3, durations=3), 2, BeamParams(width=2))
    assert greedy.tokens == [0] and beam.tokens == [1] and beam.frames == [0]
    assert beam.score == pytest.approx(np.log(0.4 * 0.99), abs=1e-5)  # the 1e-6, 1e-9 entries renormalise
    assert greedy.score == pytest.approx(np.log(0.6 * 0.35), abs=1e-5)


@pytest.fixture(scope="module")
def demo_asr():
    from requant.asr import load_asr
    from stages.base_model import demo_model

    with tempfile.TemporaryDirectory() as folder:
        demo_model(REPO / "demo/model", Path(folder))
        (Path(folder) / "encoder-model.int8.onnx").unlink()
        yield load_asr(Path(folder))


def _utterances(count: int) -> tuple[list[np.ndarray], list[str]]:
    """count held-out sentences per language, spoken by the corpus stage's held-out voices."""
    from demo.synth import synthesize
    from demo.text import sentences

    audio, texts = [], []
    for lang, voices in (("en", ("en-us+f2", "en-gb+m3")), ("fr", ("fr+m3", "fr-be+f2"))):
        for i, text in enumerate(sentences(lang, count, 2**31 + 77)):
            audio.append(synthesize(text, voices[i % 2], rate_wpm=150 + 7 * (i % 6)))
            texts.append(text)
    return audio, texts


def test_width_one_is_exactly_onnx_asr_greedy_on_the_demo_model(demo_asr) -> None:
    from requant.asr import recognize_all, transcribe

    audio, _ = _utterances(4)
    long = np.concatenate([np.concatenate([a, np.zeros(8000, np.float32)]) for a in audio])  # ~40 s, one pass
    clips = [*audio, long]
    decoded = recognize_all(demo_asr, clips, {"greedy": None, "w1": BeamParams(width=1)})
    for clip, greedy, beam in zip(clips, decoded.transcripts["greedy"], decoded.transcripts["w1"], strict=True):
        reference = transcribe(demo_asr, clip)  # onnx-asr's own recognize, clip by clip
        assert (greedy.tokens, greedy.starts) == (reference.tokens, reference.starts)
        assert (beam.tokens, beam.starts) == (reference.tokens, reference.starts)
    assert len(decoded.transcripts["w1"][-1].tokens) > 300


def test_wider_beams_are_no_worse_than_greedy_on_the_demo_corpus(demo_asr) -> None:
    from requant.asr import recognize_all

    audio, texts = _utterances(40)
    decoded = recognize_all(demo_asr, audio, {"greedy": None, "w4": BeamParams(width=4),
                                              "w10": BeamParams(width=10)})
    wer = {name: jiwer.wer(texts, [t.text for t in found]) for name, found in decoded.transcripts.items()}
    assert wer["w4"] <= wer["greedy"] and wer["w10"] <= wer["greedy"], wer
    # (what each width costs is bench.beam's to say: a timed assertion here failed on a loaded machine)
