"""Training code: TDT loss against a brute-force sum over alignments, torch == ONNX Runtime, and a
few optimisation steps that make the loss fall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from demo.fastconformer import PARAKEET, TINY, default_tokens, weight_shapes, write_model_dir  # noqa: E402
from demo.model_torch import TdtModel, export_weights  # noqa: E402
from demo.tdt_loss import tdt_loss  # noqa: E402

DURATIONS = (0, 1, 2, 3, 4)


def brute_force_nll(logits: torch.Tensor, labels: list[int], frames: int, blank: int, free_end: bool = False) -> float:
    """-log of the sum over every TDT alignment, enumerated recursively (tiny cases only). With
    `free_end` an alignment ends with its last label, landing anywhere up to `frames`."""
    n_tok = logits.shape[-1] - len(DURATIONS)
    tok = torch.log_softmax(logits[..., :n_tok].double(), -1)
    dur = torch.log_softmax(logits[..., n_tok:].double(), -1)
    finals: list[torch.Tensor] = []

    def walk(t: int, u: int, logp: torch.Tensor) -> None:
        for k, d in enumerate(DURATIONS):
            label_step = logp + tok[t, u, labels[u]] + dur[t, u, k] if u < len(labels) else None
            if free_end and u == len(labels) - 1 and t + d <= frames:
                finals.append(label_step)
            elif u < len(labels) and t + d < frames:
                walk(t + d, u + 1, label_step)
            if d > 0:
                step = logp + tok[t, u, blank] + dur[t, u, k]
                if t + d == frames and u == len(labels) and not free_end:
                    finals.append(step)
                elif t + d < frames:
                    walk(t + d, u, step)

    walk(0, 0, torch.zeros((), dtype=torch.float64))
    return float(-torch.logsumexp(torch.stack(finals), 0))


@pytest.mark.parametrize("free_end", [False, True])
@pytest.mark.parametrize(("frames", "labels"), [(1, 1), (2, 1), (3, 2), (5, 3), (6, 4), (7, 2)])
def test_tdt_loss_matches_brute_force(frames: int, labels: int, free_end: bool) -> None:
    gen = torch.Generator().manual_seed(frames * 10 + labels)
    vocab, blank = 5, 4
    logits = torch.randn(2, frames + 1, labels + 1, vocab + len(DURATIONS), generator=gen)
    targets = torch.randint(0, blank, (2, labels), generator=gen)
    # second utterance shorter in both axes: padding must not leak into the result
    lens_t = torch.tensor([frames, max(1, frames - 1)])
    lens_u = torch.tensor([labels, max(1, labels - 1)])
    got = tdt_loss(logits, targets, lens_t, lens_u, blank, DURATIONS, torch.tensor([free_end, free_end]))
    for b in range(2):
        want = brute_force_nll(logits[b], targets[b, : lens_u[b]].tolist(), int(lens_t[b]), blank, free_end)
        assert got[b].item() == pytest.approx(want, rel=1e-5)


def test_tdt_loss_gradients_are_finite() -> None:
    logits = torch.randn(2, 9, 5, 10, requires_grad=True)
    loss = tdt_loss(logits, torch.randint(0, 4, (2, 4)), torch.tensor([9, 6]), torch.tensor([4, 2]), 4).sum()
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def _random_model(cfg=TINY) -> TdtModel:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = TdtModel(cfg)
    for mod in model.modules():  # non-trivial BatchNorm statistics, so the folding is exercised
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.normal_(0, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.normal_(1.0, 0.2)
            mod.bias.data.normal_(0.0, 0.2)
    return model.eval()


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("cfg", [TINY, PARAKEET.replace(n_layers=1)])
def test_exported_weights_match_the_builders_names_and_shapes(cfg) -> None:  # type: ignore[no-untyped-def]
    weights = export_weights(TdtModel(cfg))
    assert {k: v.shape for k, v in weights.items()} == weight_shapes(cfg)


def test_torch_forward_matches_onnxruntime(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = TINY.replace(pred_layers=2)
    model = _random_model(cfg)
    write_model_dir(tmp_path, export_weights(model), cfg, default_tokens(cfg))

    # two utterances of different lengths, the longer beyond the +-64-frame attention window
    feats = torch.randn(2, cfg.n_mels, 1500)
    lengths = torch.tensor([1500, 1100])
    with torch.no_grad():
        enc, enc_lens = model.encoder(feats, lengths)
    encoder = ort.InferenceSession(str(tmp_path / "encoder-model.onnx"))
    out, out_lens = encoder.run(None, {"audio_signal": feats.numpy(), "length": lengths.numpy()})
    assert out_lens.tolist() == enc_lens.tolist()
    for b, n in enumerate(out_lens):
        assert _relative(out[b, :, :n], enc[b, :n].numpy().T) <= 1e-4

    enc_out = np.random.default_rng(0).standard_normal((2, cfg.d_model, 6)).astype(np.float32)
    targets = np.array([[3, 7, 1, 43], [5, 2, 9, 0]], np.int32)
    states = [np.random.default_rng(i).standard_normal((2, 2, cfg.pred_hidden)).astype(np.float32) for i in (1, 2)]
    decoder = ort.InferenceSession(str(tmp_path / "decoder_joint-model.onnx"))
    logits, pred_lens, h, c = decoder.run(None, {
        "encoder_outputs": enc_out, "targets": targets, "target_length": np.array([4, 4], np.int32),
        "input_states_1": states[0], "input_states_2": states[1]})
    with torch.no_grad():
        want, (want_h, want_c) = model.decoder(torch.from_numpy(enc_out).transpose(1, 2),
                                               torch.from_numpy(targets).long(),
                                               (torch.from_numpy(states[0]), torch.from_numpy(states[1])))
    assert pred_lens.tolist() == [4, 4]
    assert _relative(logits, want.numpy()) <= 1e-4
    assert _relative(h, want_h.numpy()) <= 1e-4
    assert _relative(c, want_c.numpy()) <= 1e-4


def test_the_committed_model_imports_back_to_torch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--resume-onnx: demo/model in torch computes what onnxruntime computes, outlier channels scaled
    back (none left over 20x the median gamma) and BatchNorm frozen at identity even in train mode."""
    from pathlib import Path

    from demo.model_torch import FrozenBatchNorm1d
    from demo.train import checkpoint_from_onnx, load_checkpoint

    ckpt = checkpoint_from_onnx(Path("demo/model"), tmp_path / "imported.pt")
    model = load_checkpoint(ckpt)
    for layer in model.encoder.layers:
        assert isinstance(layer.conv.batch_norm, FrozenBatchNorm1d)
        gamma = layer.att.norm.weight.detach().abs()
        assert float(gamma.max() / gamma.median()) < 20
    model.train()
    assert not model.encoder.layers[0].conv.batch_norm.training
    model.eval()
    feats = torch.randn(1, TINY.n_mels, 400)
    with torch.no_grad():
        enc, _ = model.encoder(feats, torch.tensor([400]))
    encoder = ort.InferenceSession("demo/model/encoder-model.onnx")
    out, _ = encoder.run(None, {"audio_signal": feats.numpy(), "length": np.array([400])})
    assert _relative(out[0], enc[0].numpy().T) <= 1e-4


def test_a_few_training_steps_reduce_the_loss() -> None:
    from demo.synth import synthesize
    from demo.text import sentences
    from demo.corpus import make_batch
    from demo.train import batch_loss

    torch.manual_seed(0)
    torch.set_num_threads(2)
    items = []
    for i, text in enumerate(sentences("en", 4, seed=3)):
        audio = synthesize(text, "en-us+m1" if i % 2 else "en-gb+f3")
        items.append((np.round(audio * 32767).astype(np.int16), text))
    x, x_lens, y, y_lens = make_batch(items, None)
    cfg = TINY.replace(n_layers=2, d_model=64, n_heads=2, ff_dim=128, pred_hidden=64, joint_hidden=64)
    model = TdtModel(cfg, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = batch_loss(model, x, x_lens, y, y_lens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0]


def test_training_voices_exist_and_leave_the_test_voices_out() -> None:
    import os

    import espeakng_loader

    from demo.synth import HELD_OUT_VARIANTS
    from demo.corpus import TRAIN_VARIANTS, synth_specs

    shipped = set(os.listdir(Path(espeakng_loader.get_data_path()) / "voices" / "!v"))
    assert {v.removeprefix("+") for v in TRAIN_VARIANTS if v} <= shipped  # a renamed variant must fail here
    specs = synth_specs(100, seed=0, n_french=300)
    assert sum(voice.startswith("fr") for _, voice, _, _ in specs) == 300
    voices = {voice for _, voice, _, _ in specs}
    assert not {v for v in voices if v.split("+")[-1] in HELD_OUT_VARIANTS}
    assert len({v.split("+")[-1] for v in voices if "+" in v}) == len(TRAIN_VARIANTS) - 1  # every variant drawn


def test_long_clips_scored_by_sentence_match_the_whole_clip_loss(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import random

    from demo.synth import synthesize
    from demo.text import sentences
    from demo.corpus import Utterance, concatenation, make_batch
    from demo.train import batch_loss, checkpoint_from_onnx, load_checkpoint

    torch.set_num_threads(2)
    model = load_checkpoint(checkpoint_from_onnx(Path("demo/model"), tmp_path / "imported.pt"))
    texts = sentences("en", 4, seed=5) + sentences("fr", 4, seed=5)
    utts = [Utterance(t, np.round(synthesize(t, "en-gb+m1" if i < 4 else "fr+f3") * 32767).astype(np.int16))
            for i, t in enumerate(texts)]
    clips = [concatenation(utts, random.Random(seed), 15.0) for seed in (0, 1)]
    for audio, text, cuts in clips:
        assert len(cuts) >= 3
        assert all(text[c] == " " and audio[s] == 0 for s, c in cuts)  # a space, in a pause
    x, xl, y, yl = make_batch([(audio, text) for audio, text, _ in clips], None)
    losses, grads = [], []
    for cuts in (None, [c for _, _, c in clips]):
        model.zero_grad()
        loss = batch_loss(model, x, xl, y, yl, cuts)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    # the whole-clip alignments hardly ever cross a cut, so both losses and gradients agree
    assert losses[1] == pytest.approx(losses[0], rel=0.05)
    assert float(grads[0] @ grads[1] / (grads[0].norm() * grads[1].norm())) > 0.99
