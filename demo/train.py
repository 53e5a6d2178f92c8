"""Train the demo FastConformer-TDT on synthesized speech and export it in Parakeet's layout.

    python -m demo.train --out demo/model [--minutes 60] [--seed 0] [--segment-long]
    (`make train-demo` runs the from-scratch recipe in demo/model/CARD.md)

1. Synthesizes bilingual sentences (demo.corpus: demo.text spoken by demo.synth) with the training
   voices (every variant but the held-out +m3 and +f2), random speaking rates and pitches; espeak-ng
   mostly waits, so many processes share the 2 cores. The audio is cached under demo/.work/.
2. Trains with torch (2 threads, or a GPU when one is present) on features from onnx-asr's own
   NumPy nemo128 preprocessor (requant.features.features, the one inference uses): batches of single
   sentences, and batches of long concatenations (sentences with pauses, 15-50 s) featurized as a
   whole, as a long pass is at inference. Local attention (+-64 frames) with relative positions keeps
   the context the same at any length. The learning-rate schedule follows the wall-clock budget
   (`--steps` caps it by steps instead); checkpoints are written every 5 minutes, so an interrupted
   run still leaves a usable model (`--export-only` exports a checkpoint).
3. Exports fp32 ONNX (demo.fastconformer), adds outlier channels by exact rescaling
   (demo.outliers) and makes the stock int8 files with onnxruntime's quantize_dynamic defaults.

`--resume CKPT` continues from a checkpoint's weights with fresh data (`--seed`) and a new schedule.
`--segment-long` scores each long concatenation sentence by sentence (same encoder pass, about 5x
cheaper steps on long batches; `python -m demo.loss_bench` compares).
How the committed model was made is in demo/model/CARD.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from demo.corpus import WORK, Cut, bucketed_batches, concatenation, make_batch, speak, training_corpus, vocab_tokens
from demo.fastconformer import TINY, ModelConfig, weight_names
from demo.model_torch import FrozenBatchNorm1d, TdtModel, freeze_batch_norms, import_weights
from demo.tdt_loss import gather_terms, tdt_nll
from demo.text import ALPHABET, sentences

log = logging.getLogger("demo.train")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a lent GPU is optional


def model_config() -> ModelConfig:
    if TINY.vocab_size != len(ALPHABET) + 1:
        raise ValueError("demo.fastconformer.TINY.vocab_size must be len(demo.text.ALPHABET) + 1")
    return TINY


# ------------------------------------------------------------------------------------------- loss
def _chunk_terms(dec, enc_chunk, pred, targets):  # type: ignore[no-untyped-def]
    logits = dec.out(dec.joint_hidden(enc_chunk, pred))
    return gather_terms(logits, targets, dec.cfg.vocab_size - 1, dec.cfg.vocab_size)


def batch_loss(model: TdtModel, x, x_lens, y, y_lens, cuts: list[list[Cut]] | None = None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Mean TDT NLL per target token; the joint runs in time chunks (recomputed in backward).

    With `cuts` (long concatenations), the encoder and the prediction network still run over each
    whole clip, but the loss is summed over its sentences, each aligned within its own frames (cut in
    the middle of the pauses; all but the clip's last end with their last label). The joint then costs
    sum(T_k * U_k) instead of T * U, about 15x less on 40 s clips."""
    enc, enc_lens = model.encoder(x, x_lens)
    dec = model.decoder
    blank = dec.cfg.vocab_size - 1
    sos = torch.full((y.shape[0], 1), blank, dtype=y.dtype, device=y.device)
    pred, _ = dec.predict(torch.cat([sos, y], dim=1))
    free_end, n_tokens = None, y_lens.sum()
    if cuts is not None:
        enc, pred, y, enc_lens, y_lens, free_end = _segments(enc, enc_lens, pred, y, y_lens, cuts)
    cells = enc.shape[0] * enc.shape[1] * pred.shape[1] * dec.cfg.joint_hidden
    limit = 40e6 if enc.device.type == "cpu" else 2e9
    chunk = enc.shape[1] if cells < limit else max(1, int(enc.shape[1] * limit / 2 / cells))
    parts = []
    for s in range(0, enc.shape[1], chunk):
        fn = torch.utils.checkpoint.checkpoint if chunk < enc.shape[1] else (lambda f, *a, **k: f(*a))
        parts.append(fn(_chunk_terms, dec, enc[:, s : s + chunk], pred, y, use_reentrant=False))
    blank_lp, label_lp, dur_lp = (torch.cat([p[i] for p in parts], dim=1) for i in range(3))
    nll = tdt_nll(blank_lp, label_lp, dur_lp, enc_lens, y_lens, dec.cfg.durations, free_end)
    return nll.sum() / n_tokens


def _segments(enc, enc_lens, pred, y, y_lens, cuts):  # type: ignore[no-untyped-def]
    """Each clip's sentences as a batch of their own: encoder frames, prediction rows (the state after
    every earlier character of the clip, as at inference), targets, lengths, and which end freely."""
    samples_per_frame = 160 * 8  # 10 ms feature hop, 8x subsampling
    pieces, free = [], []
    for b, clip_cuts in enumerate(cuts):
        n_frames, n_chars = int(enc_lens[b]), int(y_lens[b])
        frames = [0] + [min(max(1, round(s / samples_per_frame)), n_frames - 1) for s, _ in clip_cuts] + [n_frames]
        chars = [0] + [c for _, c in clip_cuts] + [n_chars]
        for k in range(len(frames) - 1):
            if frames[k + 1] <= frames[k] or chars[k + 1] <= chars[k]:
                raise ValueError(f"clip {b}: cut {k} leaves an empty segment (frames {frames}, characters {chars})")
            pieces.append((enc[b, frames[k] : frames[k + 1]], pred[b, chars[k] : chars[k + 1] + 1], y[b, chars[k] : chars[k + 1]]))
            free.append(k < len(frames) - 2)
    t_max, u_max = max(p[0].shape[0] for p in pieces), max(p[2].shape[0] for p in pieces)
    pad = torch.nn.functional.pad
    seg_enc = torch.stack([pad(e, (0, 0, 0, t_max - e.shape[0])) for e, _, _ in pieces])
    seg_pred = torch.stack([pad(p, (0, 0, 0, u_max + 1 - p.shape[0])) for _, p, _ in pieces])
    seg_y = torch.stack([pad(t, (0, u_max - t.shape[0])) for _, _, t in pieces])
    lens = [torch.tensor([p[i].shape[0] for p in pieces], device=enc.device) for i in (0, 2)]
    return seg_enc, seg_pred, seg_y, lens[0], lens[1], torch.tensor(free, device=enc.device)


# ------------------------------------------------------------------------------------------- decode
@torch.no_grad()
def greedy_decode(model: TdtModel, x: torch.Tensor, x_len: torch.Tensor, max_symbols: int = 10) -> str:
    """onnx-asr's greedy TDT loop (one utterance)."""
    enc, enc_len = model.encoder(x, x_len)
    dec, cfg = model.decoder, model.decoder.cfg
    blank, n_tok = cfg.vocab_size - 1, cfg.vocab_size
    enc_proj = dec.enc_proj(enc[0])
    tokens: list[int] = []
    state = None
    pred, new_state = dec.predict(torch.tensor([[blank]], device=x.device), state)
    t, emitted = 0, 0
    while t < int(enc_len[0]):
        out = dec.out(torch.relu(enc_proj[t] + dec.pred_proj(pred[0, 0])))
        token, step = int(out[:n_tok].argmax()), int(cfg.durations[int(out[n_tok:].argmax())])
        if token != blank:
            tokens.append(token)
            emitted += 1
            state = new_state
            pred, new_state = dec.predict(torch.tensor([[token]], device=x.device), state)
        if step > 0:
            t += step
            emitted = 0
        elif token == blank or emitted == max_symbols:
            t += 1
            emitted = 0
    return "".join(ALPHABET[i] for i in tokens)


def char_error_rate(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    import jiwer

    return float(jiwer.cer(refs, hyps)), float(jiwer.wer(refs, hyps))


def dev_set(seed: int, n_per_lang: int = 20) -> list[tuple[np.ndarray, str]]:
    rng = random.Random(f"dev:{seed}")
    out = []
    for lang, voice in (("en", "en-us+m3"), ("fr", "fr+f2")):
        for text in sentences(lang, n_per_lang, seed=500 + seed):
            out.append((speak(text, voice, rng.randint(140, 190), 50 + rng.randint(-8, 8)), text))
    return out


def evaluate(model: TdtModel, items: list[tuple[np.ndarray, str]]) -> tuple[float, float]:
    model.eval()
    hyps = []
    for audio, text in items:
        x, xl, _, _ = make_batch([(audio, text)], None)
        hyps.append(greedy_decode(model, x.to(DEVICE), xl.to(DEVICE)))
    model.train()
    return char_error_rate([t for _, t in items], hyps)


# ------------------------------------------------------------------------------------------- train
def train(
    minutes: float,
    seed: int,
    n_per_lang: int = 6000,
    long_prob: float = 0.25,
    ckpt: Path = WORK / "checkpoint.pt",
    eval_every_s: float = 600.0,
    dev_per_lang: int = 20,
    resume: Path | None = None,
    batch_seconds: float = 50.0,
    long_count: int = 1,
    peak_lr: float = 1.5e-3,
    max_steps: int | None = None,
    n_french: int | None = None,
    segment_long: bool = False,
) -> Path:
    """Train for `minutes` of wall clock (cosine schedule over that budget); returns the checkpoint.
    `resume` continues from a checkpoint's weights (fresh optimizer, short warmup); `segment_long`
    scores long concatenations sentence by sentence (batch_loss's `cuts`)."""
    torch.manual_seed(seed)
    if DEVICE.type == "cpu":
        torch.set_num_threads(2)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    utts = training_corpus(n_per_lang, seed, n_french)
    dev = dev_set(seed, dev_per_lang)
    cfg = model_config()
    model = TdtModel(cfg)
    if resume is not None:
        _load_state(model, torch.load(resume, weights_only=False, map_location="cpu"))
    frozen = isinstance(model.encoder.layers[0].conv.batch_norm, FrozenBatchNorm1d)
    model.to(DEVICE)
    log.info("parameters: %d", sum(p.numel() for p in model.parameters()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=1e-2)
    warmup = 300 if resume is None else 50
    start = time.time()
    budget = minutes * 60.0
    last_ckpt = last_eval = start
    step = 0
    audio_budget = batch_seconds  # seconds of audio per batch
    short_batches: list[list[tuple[np.ndarray, str]]] = []
    while time.time() - start < budget and (max_steps is None or step < max_steps):
        frac = (time.time() - start) / budget
        if max_steps is not None:  # a step budget makes the schedule independent of machine load
            frac = max(frac, step / max_steps)
        lr = peak_lr * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        cuts = None
        if rng.random() < long_prob:
            clips = [concatenation(utts, rng, rng.uniform(15.0, 50.0)) for _ in range(long_count)]
            items = [(audio, text) for audio, text, _ in clips]
            cuts = [clip_cuts for _, _, clip_cuts in clips] if segment_long else None
        else:
            if not short_batches:
                short_batches = bucketed_batches(utts, rng, audio_budget)
            items = short_batches.pop()
        x, xl, y, yl = (t.to(DEVICE) for t in make_batch(items, np_rng))
        loss = batch_loss(model, x, xl, y, yl, cuts)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            log.info("step %d  %.1f min  lr %.2e  loss %.4f  (%s, T=%d)", step, (time.time() - start) / 60, lr,
                     loss.item(), "long" if len(items) == long_count else "short", x.shape[-1])
        now = time.time()
        if now - last_ckpt > 300:
            _save({"config": cfg, "model": _cpu_state(model), "step": step, "frozen_batch_norm": frozen}, ckpt)
            last_ckpt = now
        if now - last_eval > eval_every_s:
            cer, wer = evaluate(model, dev)
            log.info("dev (held-out voices) step %d: CER %.2f%%  WER %.2f%%", step, 100 * cer, 100 * wer)
            last_eval = time.time()
    _save({"config": cfg, "model": _cpu_state(model), "step": step, "minutes": (time.time() - start) / 60,
           "frozen_batch_norm": frozen}, ckpt)
    cer, wer = evaluate(model, dev)
    log.info("final dev (held-out voices) step %d: CER %.2f%%  WER %.2f%%", step, 100 * cer, 100 * wer)
    return ckpt


def _save(checkpoint: dict, path: Path) -> None:
    """Written under a temporary name, then renamed: an interrupted save leaves no half checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(path)


def _cpu_state(model: TdtModel) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_checkpoint(path: Path) -> TdtModel:
    data = torch.load(path, weights_only=False, map_location="cpu")
    model = TdtModel(data["config"])
    _load_state(model, data)
    return model.eval()


def _load_state(model: TdtModel, data: dict) -> None:
    model.load_state_dict(data["model"])
    if data.get("frozen_batch_norm"):  # imported from ONNX: BatchNorm is folded in, so it stays frozen
        freeze_batch_norms(model)


def checkpoint_from_onnx(model_dir: Path, ckpt: Path, outlier_above: float = 20.0) -> Path:
    """A checkpoint of an exported model (e.g. the committed demo/model) to continue training from.

    The outlier channels the export added are scaled back first (channels of the LayerNorms that
    demo.outliers rescales whose |gamma| is over `outlier_above` x the median; the MatMul rows they feed
    are scaled up to match), so the continuation trains the plain model and a new export adds them
    afresh. The function is unchanged."""
    import onnx
    from onnx import numpy_helper

    from demo.outliers import matmul_layernorms

    models = [onnx.load(str(model_dir / name)) for name in ("encoder-model.onnx", "decoder_joint-model.onnx")]
    w = {t.name: numpy_helper.to_array(t).copy() for model in models for t in model.graph.initializer}
    by_name = {n.name: n for n in models[0].graph.node}
    for ln_name, matmuls in matmul_layernorms(models[0]).items():
        gamma_name, beta_name = by_name[ln_name].input[1:3]
        gamma = w[gamma_name]
        median = np.median(np.abs(gamma))
        chans = np.flatnonzero(np.abs(gamma) > outlier_above * median)
        if not len(chans):
            continue
        factor = (np.abs(gamma[chans]) / median).astype(np.float32)
        gamma[chans] /= factor
        w[beta_name][chans] /= factor
        for matmul in matmuls:
            w[matmul.input[1]][chans, :] *= factor[:, None]
        log.info("%s: %d outlier channels scaled back (x1/%.0f max)", ln_name, len(chans), factor.max())
    cfg = model_config()
    names = weight_names(cfg)
    model = import_weights({key: w[name] for file in names.values() for key, name in file.items()}, cfg)
    _save({"config": cfg, "model": _cpu_state(model), "step": 0, "frozen_batch_norm": True}, ckpt)
    return ckpt


def export(ckpt: Path, out_dir: Path, add_outliers: bool = True) -> None:
    from demo.export import export_model  # the ONNX side needs no torch; imported late on purpose

    model = load_checkpoint(ckpt)
    from demo.model_torch import export_weights

    report = export_model(export_weights(model), model.cfg, vocab_tokens(), out_dir, add_outliers=add_outliers)
    if add_outliers:  # figures for the model card
        (WORK / f"outliers-{out_dir.name}.json").write_text(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo/model"))
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-only", action="store_true", help="export demo/.work/checkpoint.pt")
    parser.add_argument("--no-outliers", action="store_true")
    parser.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint's weights")
    parser.add_argument("--resume-onnx", type=Path, default=None,
                        help="continue from an exported model folder (e.g. demo/model) instead")
    parser.add_argument("--peak-lr", type=float, default=1.5e-3)
    parser.add_argument("--steps", type=int, default=None, help="also stop after this many steps")
    parser.add_argument("--n-per-lang", type=int, default=6000, help="training sentences per language")
    parser.add_argument("--n-french", type=int, default=None, help="French sentences, if not --n-per-lang")
    parser.add_argument("--batch-seconds", type=float, default=50.0, help="audio per batch (more on a GPU)")
    parser.add_argument("--long-count", type=int, default=1, help="concatenations per long batch")
    parser.add_argument("--segment-long", action="store_true",
                        help="score long concatenations sentence by sentence (faster steps)")
    parser.add_argument("--checkpoint", type=Path, default=WORK / "checkpoint.pt")
    parser.add_argument("--skip-export", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.resume_onnx is not None:
        args.resume = checkpoint_from_onnx(args.resume_onnx, WORK / "imported.pt")
    if args.export_only:
        ckpt = args.checkpoint
    else:
        ckpt = train(args.minutes, args.seed, n_per_lang=args.n_per_lang, ckpt=args.checkpoint, resume=args.resume,
                     peak_lr=args.peak_lr, max_steps=args.steps, batch_seconds=args.batch_seconds,
                     long_count=args.long_count, n_french=args.n_french, segment_long=args.segment_long)
    if args.skip_export:
        return
    export(ckpt, args.out, add_outliers=not args.no_outliers)


if __name__ == "__main__":
    main()
