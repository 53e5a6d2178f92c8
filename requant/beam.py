"""TDT beam search (modified adaptive expansion search, MAES) over one encoder output.

Written here because no maintained library runs TDT beam search on the onnx-asr layout (one
`decoder_joint` graph: prediction network + joint, with the duration logits after the token logits).
It follows NeMo's TDT MAES (`BeamTDTInfer`, search_type "maes"):

- hypotheses are expanded frame-synchronously: those waiting at the earliest frame go first, in one
  batched `decoder_joint` call whatever their number;
- each one proposes its best (width + beta) tokens crossed with every duration, keeps the best
  (width + beta) pairs and prunes those more than gamma below its best pair (expansion beta and gamma);
  a blank moves the hypothesis on by its duration (at least one frame), a token with duration 0 stays
  on the frame for another expansion;
- prefix merging: a hypothesis that extends another one on the same frame by one token also gets that
  path's probability (NeMo's prefix search with prefix_alpha 1), and hypotheses with the same tokens on
  the same frame are merged (log-sum-exp of their scores);
- the `width` best survive each round; the result is the best finished one, its score divided by its
  length when score_norm is set (NeMo: log-probability per token, its sequences counting the start blank).

One difference, so that width 1 is exactly onnx-asr's greedy decoding: a hypothesis may emit up to
`max_tokens_per_step` tokens on one frame (the model config's cap, 10; greedy then moves on one frame),
where NeMo closes a frame after `maes_num_steps` (2) expansions. A character-level model such as the
demo's often emits three or more characters in one 80 ms frame, which two steps cannot reach.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from requant.params import BeamParams

# (encoder frames [H, D], last tokens [H], state 1 and 2 [L, H, S]) -> (logits [H, V + durations], states)
JointFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]
    frames: tuple[int, ...]  # the frame each token was emitted on
    score: float
    frame: int  # the next frame to expand on
    on_frame: int  # tokens emitted on `frame` so far
    state: tuple[np.ndarray, np.ndarray]  # prediction network state before the last token ([L, 1, S] each)


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _merge(hyps: list[Hypothesis]) -> list[Hypothesis]:
    """One hypothesis per (tokens, frame): the best one's path, the summed probability."""
    merged: dict[tuple, Hypothesis] = {}
    for h in sorted(hyps, key=lambda h: -h.score):
        key = (h.tokens, h.frame, h.on_frame)
        if key in merged:
            merged[key] = replace(merged[key], score=float(np.logaddexp(merged[key].score, h.score)))
        else:
            merged[key] = h
    return list(merged.values())


def _prefix_merge(active: list[Hypothesis], logp_tok: np.ndarray, logp_dur: np.ndarray, zero: int) -> list[Hypothesis]:
    """Add to each hypothesis the path through a one-token-shorter prefix on the same frame (duration 0)."""
    out = []
    for h in active:
        score = h.score
        for j, p in enumerate(active):
            if len(p.tokens) + 1 == len(h.tokens) and h.tokens[:-1] == p.tokens and h.on_frame > 0:
                score = float(np.logaddexp(score, p.score + logp_tok[j, h.tokens[-1]] + logp_dur[j, zero]))
        out.append(replace(h, score=score))
    return out


@dataclass(frozen=True)
class BeamResult:
    tokens: list[int]
    frames: list[int]  # the encoder frame each token was emitted on
    score: float  # log-probability (summed over the merged paths), before score_norm
    calls: int  # batched decoder_joint calls


def beam_search(encodings: np.ndarray, length: int, joint: JointFn, *, blank: int, vocab_size: int,
                durations: Sequence[int], initial_state: tuple[np.ndarray, np.ndarray], params: BeamParams,
                max_tokens_per_step: int = 10) -> BeamResult:
    """The best hypothesis over encodings[:length] ([T, D])."""
    candidates = params.width + params.expansion_beta  # best tokens per hypothesis, then best (token, duration) pairs
    zero = durations.index(0) if 0 in durations else None
    hyps = [Hypothesis((), (), 0.0, 0, 0, initial_state)]
    calls = 0
    while any(h.frame < length for h in hyps):
        t = min(h.frame for h in hyps if h.frame < length)
        active = [h for h in hyps if h.frame == t]
        waiting = [h for h in hyps if h.frame != t]
        last = np.array([h.tokens[-1] if h.tokens else blank for h in active], dtype=np.int64)
        states = [np.concatenate([h.state[i] for h in active], axis=1) for i in (0, 1)]
        logits, new1, new2 = joint(np.repeat(encodings[t][None], len(active), axis=0), last, *states)
        calls += 1
        logp_tok, logp_dur = log_softmax(logits[:, :vocab_size]), log_softmax(logits[:, vocab_size:])
        if params.prefix_alpha and zero is not None and len(active) > 1:
            active = _prefix_merge(active, logp_tok, logp_dur, zero)
        expanded = []
        for i, h in enumerate(active):
            top = np.argsort(-logp_tok[i], kind="stable")[:candidates]
            pairs = logp_dur[i][:, None] + logp_tok[i][top][None, :]  # [durations, candidates]
            order = np.argsort(-pairs, axis=None, kind="stable")[:candidates]
            best = pairs.flat[order[0]]
            for flat in order:
                if pairs.flat[flat] < best - params.expansion_gamma:
                    break
                step, token = durations[flat // len(top)], int(top[flat % len(top)])
                score = h.score + float(pairs.flat[flat])
                if token == blank:  # a blank always moves on, at least one frame (greedy does the same)
                    expanded.append(replace(h, score=score, frame=t + max(step, 1), on_frame=0))
                    continue
                on_frame = 0 if step > 0 else h.on_frame + 1
                frame = t + step if step > 0 else t + (on_frame == max_tokens_per_step)
                expanded.append(Hypothesis(h.tokens + (token,), h.frames + (t,), score, frame,
                                           0 if frame != t else on_frame,
                                           (new1[:, i : i + 1], new2[:, i : i + 1])))
        hyps = sorted(_merge(waiting + expanded), key=lambda h: -h.score)[: params.width]

    def final(h: Hypothesis) -> float:
        return h.score / (len(h.tokens) + 1) if params.score_norm else h.score

    best = max(hyps, key=final)
    return BeamResult(list(best.tokens), list(best.frames), best.score, calls)
