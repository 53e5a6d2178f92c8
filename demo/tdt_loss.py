"""Token-and-Duration Transducer (TDT) loss in plain torch (no torchaudio, no CUDA kernels).

alpha[t, u] = log-probability of having emitted the first u labels and standing at frame t.
From (t, u) a label moves to (t + d, u + 1) for any duration d (0 included), a blank moves to
(t + d, u) for d > 0. The sequence ends with a blank landing exactly on frame T (as in NeMo).
Zero-duration label moves chain within one frame, so the recursion runs over frames and solves
each frame's label chain with a log-cumulative-sum-exp (prefix sums) instead of anti-diagonals.
"""

from __future__ import annotations

import torch

NEG = -1.0e10  # finite "minus infinity": keeps logcumsumexp gradients free of NaN


def gather_terms(
    logits: torch.Tensor, targets: torch.Tensor, blank: int, n_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint logits [B,T,U+1,n_tokens+K] -> blank, label [B,T,U+1] and duration [B,T,U+1,K] log-probs.

    Token and duration logits are normalised separately (two softmaxes), as in TDT.
    label[..., u] is the log-prob of targets[:, u]; the last column (u = U) is unused.
    """
    tok = torch.log_softmax(logits[..., :n_tokens], dim=-1)
    dur = torch.log_softmax(logits[..., n_tokens:], dim=-1)
    blank_lp = tok[..., blank]
    idx = torch.cat([targets, targets.new_full((targets.shape[0], 1), blank)], dim=1)  # [B,U+1]
    idx = idx[:, None, :, None].expand(-1, tok.shape[1], -1, 1)
    label_lp = tok.gather(-1, idx).squeeze(-1)
    return blank_lp, label_lp, dur


def tdt_nll(
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    dur_lp: torch.Tensor,
    frame_lens: torch.Tensor,
    target_lens: torch.Tensor,
    durations: tuple[int, ...] = (0, 1, 2, 3, 4),
    free_end: torch.Tensor | None = None,
) -> torch.Tensor:
    """Negative log-likelihood per utterance [B] from the gathered terms (computed in float64).

    `free_end` [B] (bool) marks sequences that end with their last label, landing anywhere up to
    frame T, instead of with a blank landing exactly on T: a sentence cut out of a longer clip, whose
    blanks go on past the cut."""
    if durations[0] != 0 or list(durations) != sorted(durations):
        raise ValueError("durations must be ascending and start with 0")
    blank_lp, label_lp, dur_lp = blank_lp.double(), label_lp.double(), dur_lp.double()
    b, t_max, u1 = blank_lp.shape
    # Moves that leave frame t - d with duration d, for each d > 0: [T, B, D', U+1], shifted in time.
    blank_moves, label_moves = [], []
    for k, d in enumerate(durations):
        if d == 0:
            continue
        bm = blank_lp + dur_lp[..., k]
        lm = label_lp + dur_lp[..., k]
        pad = blank_lp.new_full((b, d, u1), NEG)
        blank_moves.append(torch.cat([pad, bm], dim=1)[:, :t_max])
        label_moves.append(torch.cat([pad, lm], dim=1)[:, :t_max])
    # per-frame views via unbind: indexing a big tensor inside the loop would make every backward
    # step allocate a full-size gradient (quadratic in T)
    blank_moves = torch.stack(blank_moves, dim=2).unbind(1)  # T x [B,D',U+1]
    label_moves = torch.stack(label_moves, dim=2).unbind(1)
    step = label_lp + dur_lp[..., 0]  # zero-duration label moves [B,T,U+1]
    prefixes = torch.cat([step.new_zeros((b, t_max, 1)), torch.cumsum(step[..., :-1], dim=2)], dim=2).unbind(1)
    neg_col = blank_lp.new_full((b, 1), NEG)
    start = torch.cat([blank_lp.new_zeros((b, 1)), blank_lp.new_full((b, u1 - 1), NEG)], dim=1)
    history: list[torch.Tensor] = []  # alpha per frame, [B,U+1]
    n_pos = len(durations) - 1
    for t in range(t_max):
        if t == 0:
            arrive = start
        else:
            prev = [history[t - d] if t - d >= 0 else None for d in durations[1:]]
            prev_t = torch.stack([p if p is not None else start.new_full((b, u1), NEG) for p in prev], dim=1)
            from_blank = prev_t + blank_moves[t]
            from_label = torch.cat([neg_col[:, None].expand(-1, n_pos, -1), (prev_t + label_moves[t])[..., :-1]], dim=2)
            arrive = torch.logsumexp(torch.cat([from_blank, from_label], dim=1), dim=1)
        # label chain inside frame t: alpha[u] = P[u] + logcumsumexp_k(arrive[k] - P[k])
        prefix = prefixes[t]
        history.append(prefix + torch.logcumsumexp(arrive - prefix, dim=1))
    alpha = torch.stack(history, dim=1)  # [B,T,U+1]
    # final blank landing exactly on frame T
    rows = torch.arange(b, device=alpha.device)
    ends = []
    for k, d in enumerate(durations):
        if d == 0:
            continue
        t_from = frame_lens - d
        ok = t_from >= 0
        t_idx = t_from.clamp(min=0)
        term = alpha[rows, t_idx, target_lens] + blank_lp[rows, t_idx, target_lens] + dur_lp[rows, t_idx, target_lens, k]
        ends.append(torch.where(ok, term, torch.full_like(term, NEG)))
    nll = -torch.logsumexp(torch.stack(ends, dim=1), dim=1)
    if free_end is None:
        return nll
    # every path has exactly one last label move: from (t, U-1), landing at t + d <= T
    last = (target_lens - 1).clamp(min=0)
    from_last = alpha[rows, :, last] + label_lp[rows, :, last]  # [B,T]
    frames = torch.arange(t_max, device=alpha.device)[None, :]
    inside = frames < frame_lens[:, None]
    label_ends = [torch.where(inside & (frames + d <= frame_lens[:, None]), from_last + dur_lp[rows, :, last, k], NEG)
                  for k, d in enumerate(durations)]
    free_nll = -torch.logsumexp(torch.cat(label_ends, dim=1), dim=1)
    return torch.where(free_end, free_nll, nll)


def tdt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    frame_lens: torch.Tensor,
    target_lens: torch.Tensor,
    blank: int,
    durations: tuple[int, ...] = (0, 1, 2, 3, 4),
    free_end: torch.Tensor | None = None,
) -> torch.Tensor:
    """NLL per utterance [B] from full joint logits [B,T,U+1,V+K] (V tokens including blank)."""
    n_tokens = logits.shape[-1] - len(durations)
    terms = gather_terms(logits, targets, blank, n_tokens)
    return tdt_nll(*terms, frame_lens, target_lens, durations, free_end)
