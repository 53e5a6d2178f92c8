"""The FastConformer-TDT of demo/fastconformer.py in torch, for training; exports NumPy weights
named as the ONNX builder expects (Linear weights transposed to [in,out], BatchNorm folded)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from demo.fastconformer import ModelConfig

NEG_MASK = -10000.0  # additive attention mask value (NeMo's masked_fill value)


def subsampled_length(length: torch.Tensor, stages: int = 3) -> torch.Tensor:
    """NeMo's calc_length for kernel 3, stride 2, padding 1 applied `stages` times."""
    for _ in range(stages):
        length = torch.div(length - 1, 2, rounding_mode="floor") + 1
    return length


def rel_positions(t: int, d_model: int, device: torch.device | None = None) -> torch.Tensor:
    """Sinusoidal table for relative positions t-1 .. -(t-1): [2t-1, d]."""
    pos = torch.arange(t - 1, -t, -1, dtype=torch.float32, device=device)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / d_model))
    angles = pos * inv_freq
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(2 * t - 1, d_model)


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Transformer-XL shift: [B,H,T,2T-1] position scores -> [B,H,T,T] indexed by (query, key)."""
    b, h, t, p = x.shape
    x = F.pad(x, (1, 0)).reshape(b, h, p + 1, t)[:, :, 1:].reshape(b, h, t, p)
    return x[:, :, :, :t]


def attention_bias(lengths: torch.Tensor, t: int, context: int | None) -> torch.Tensor:
    """Additive mask [B,1,T,T]: padded keys and keys beyond +-context frames get NEG_MASK."""
    idx = torch.arange(t, device=lengths.device)
    bad = (idx[None, :] >= lengths[:, None])[:, None, :]  # [B,1,T] keys
    if context is not None:
        band = (idx[:, None] - idx[None, :]).abs() > context  # [T,T]
        bad = bad | band[None]
    return bad[:, None].float() * NEG_MASK


class Subsampling(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.subsampling_channels
        self.conv0 = nn.Conv2d(1, c, 3, 2, 1)
        self.dw1 = nn.Conv2d(c, c, 3, 2, 1, groups=c)
        self.pw1 = nn.Conv2d(c, c, 1)
        self.dw2 = nn.Conv2d(c, c, 3, 2, 1, groups=c)
        self.pw2 = nn.Conv2d(c, c, 1)
        freq = cfg.n_mels
        for _ in range(3):
            freq = (freq - 1) // 2 + 1
        self.out = nn.Linear(c * freq, cfg.d_model)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # [B,F,T] -> [B,T',D]
        x = feats.transpose(1, 2)[:, None]  # [B,1,T,F]
        # conv0 as im2col + matmul: same function, but torch's 1-input-channel Conv2d weight
        # gradient is several times slower on CPU
        b, _, t_in, f_in = x.shape
        cols = F.unfold(x, 3, padding=1, stride=2)  # [B,9,T'*F']
        x = torch.einsum("ck,bkl->bcl", self.conv0.weight.reshape(self.conv0.out_channels, 9), cols)
        x = F.relu(x + self.conv0.bias[None, :, None]).reshape(b, -1, (t_in - 1) // 2 + 1, (f_in - 1) // 2 + 1)
        x = x.contiguous(memory_format=torch.channels_last)  # much faster depthwise convs on CPU
        x = F.relu(self.pw1(self.dw1(x)))
        x = F.relu(self.pw2(self.dw2(x)))
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.linear1 = nn.Linear(cfg.d_model, cfg.ff_dim, bias=cfg.linear_bias)
        self.linear2 = nn.Linear(cfg.ff_dim, cfg.d_model, bias=cfg.linear_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.silu(self.linear1(self.norm(x))))


class RelPosAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.h = cfg.d_model, cfg.n_heads
        self.dk = d // self.h
        self.norm = nn.LayerNorm(d)
        self.linear_q, self.linear_k, self.linear_v, self.linear_out = (nn.Linear(d, d, bias=cfg.linear_bias) for _ in range(4))
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(self.h, self.dk))
        self.pos_bias_v = nn.Parameter(torch.zeros(self.h, self.dk))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        y = self.norm(x)
        q = self.linear_q(y).reshape(b, t, self.h, self.dk)
        k = self.linear_k(y).reshape(b, t, self.h, self.dk).permute(0, 2, 3, 1)  # [B,H,dk,T]
        v = self.linear_v(y).reshape(b, t, self.h, self.dk).transpose(1, 2)  # [B,H,T,dk]
        p = self.linear_pos(pos).reshape(1, -1, self.h, self.dk).permute(0, 2, 3, 1)  # [1,H,dk,2T-1]
        qu = (q + self.pos_bias_u).transpose(1, 2)
        qv = (q + self.pos_bias_v).transpose(1, 2)
        scores = (qu @ k + rel_shift(qv @ p)) * (1.0 / math.sqrt(self.dk)) + bias
        attn = torch.softmax(scores, dim=-1)
        return self.linear_out((attn @ v).transpose(1, 2).reshape(b, t, d))


class ConvModule(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.norm = nn.LayerNorm(d)
        self.pointwise1 = nn.Conv1d(d, 2 * d, 1, bias=cfg.linear_bias)
        self.depthwise = nn.Conv1d(d, d, cfg.conv_kernel, padding=cfg.conv_kernel // 2, groups=d)
        self.batch_norm = nn.BatchNorm1d(d)
        self.pointwise2 = nn.Conv1d(d, d, 1, bias=cfg.linear_bias)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # keep [B,1,T]
        y = F.glu(self.pointwise1(self.norm(x).transpose(1, 2)), dim=1) * keep
        y = F.silu(self.batch_norm(self.depthwise(y)))
        return self.pointwise2(y).transpose(1, 2)


class ConformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float):
        super().__init__()
        self.ff1 = FeedForward(cfg)
        self.att = RelPosAttention(cfg)
        self.conv = ConvModule(cfg)
        self.ff2 = FeedForward(cfg)
        self.norm_out = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, pos, bias, keep):  # type: ignore[no-untyped-def]
        x = x + 0.5 * self.dropout(self.ff1(x))
        x = x + self.dropout(self.att(x, pos, bias))
        x = x + self.dropout(self.conv(x, keep))
        x = x + 0.5 * self.dropout(self.ff2(x))
        return self.norm_out(x)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float = 0.1):
        super().__init__()
        self.cfg = cfg
        self.subsampling = Subsampling(cfg)
        self.layers = nn.ModuleList(ConformerBlock(cfg, dropout) for _ in range(cfg.n_layers))

    def forward(self, feats: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B,128,T], length [B] -> (encodings [B,T',D], lengths [B])."""
        x = self.subsampling(feats)
        lengths = subsampled_length(length)
        t = x.shape[1]
        pos = rel_positions(t, self.cfg.d_model, x.device)
        bias = attention_bias(lengths, t, self.cfg.att_context)
        keep = (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).float()[:, None, :]
        for layer in self.layers:
            x = layer(x, pos, bias, keep)
        return x, lengths


class DecoderJoint(nn.Module):
    """LSTM prediction network (start symbol = <blk>) and the TDT joint."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.pred_hidden)
        self.lstm = nn.LSTM(cfg.pred_hidden, cfg.pred_hidden, cfg.pred_layers, batch_first=True)
        self.enc_proj = nn.Linear(cfg.d_model, cfg.joint_hidden)
        self.pred_proj = nn.Linear(cfg.pred_hidden, cfg.joint_hidden)
        self.out = nn.Linear(cfg.joint_hidden, cfg.vocab_size + cfg.n_durations)

    def predict(self, targets: torch.Tensor, state=None):  # type: ignore[no-untyped-def]
        """targets [B,U] (ids; already prefixed with <blk> when training) -> ([B,U,H], (h, c))."""
        return self.lstm(self.embedding(targets), state)

    def joint_hidden(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """enc [B,T,D], pred [B,U,H] -> relu(enc_proj + pred_proj) [B,T,U,J]."""
        return F.relu(self.enc_proj(enc)[:, :, None] + self.pred_proj(pred)[:, None])

    def forward(self, enc, targets, state=None):  # type: ignore[no-untyped-def]
        pred, state = self.predict(targets, state)
        return self.out(self.joint_hidden(enc, pred)), state


class TdtModel(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float = 0.1):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, dropout)
        self.decoder = DecoderJoint(cfg)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def export_weights(model: TdtModel) -> dict[str, np.ndarray]:
    """NumPy weights in the builder's naming (see demo.fastconformer.weight_names)."""
    w: dict[str, np.ndarray] = {}
    enc, dec = model.encoder, model.decoder
    s = enc.subsampling
    for name in ("conv0", "dw1", "pw1", "dw2", "pw2"):
        conv = getattr(s, name)
        w[f"sub.{name}.weight"], w[f"sub.{name}.bias"] = _np(conv.weight), _np(conv.bias)
    w["sub.out.weight"], w["sub.out.bias"] = _np(s.out.weight).T, _np(s.out.bias)

    def linear(prefix: str, lin: nn.Linear) -> None:
        w[f"{prefix}.weight"] = np.ascontiguousarray(_np(lin.weight).T)
        if lin.bias is not None:
            w[f"{prefix}.bias"] = _np(lin.bias)

    def norm(prefix: str, ln: nn.LayerNorm) -> None:
        w[f"{prefix}.gamma"], w[f"{prefix}.beta"] = _np(ln.weight), _np(ln.bias)

    for i, layer in enumerate(enc.layers):
        p = f"layers.{i}"
        for ff in ("ff1", "ff2"):
            mod = getattr(layer, ff)
            norm(f"{p}.{ff}.norm", mod.norm)
            linear(f"{p}.{ff}.linear1", mod.linear1)
            linear(f"{p}.{ff}.linear2", mod.linear2)
        att = layer.att
        norm(f"{p}.att.norm", att.norm)
        for name in ("linear_q", "linear_k", "linear_v", "linear_out", "linear_pos"):
            linear(f"{p}.att.{name}", getattr(att, name))
        w[f"{p}.att.pos_bias_u"], w[f"{p}.att.pos_bias_v"] = _np(att.pos_bias_u), _np(att.pos_bias_v)
        conv = layer.conv
        norm(f"{p}.conv.norm", conv.norm)
        for name in ("pointwise1", "pointwise2"):
            pw = getattr(conv, name)
            w[f"{p}.conv.{name}.weight"] = _np(pw.weight)
            if pw.bias is not None:
                w[f"{p}.conv.{name}.bias"] = _np(pw.bias)
        bn = conv.batch_norm
        scale = _np(bn.weight) / np.sqrt(_np(bn.running_var) + bn.eps)
        w[f"{p}.conv.depthwise.weight"] = _np(conv.depthwise.weight) * scale[:, None, None]
        w[f"{p}.conv.depthwise.bias"] = (_np(conv.depthwise.bias) - _np(bn.running_mean)) * scale + _np(bn.bias)
        norm(f"{p}.norm_out", layer.norm_out)

    w["dec.embedding"] = _np(dec.embedding.weight)
    for layer in range(model.cfg.pred_layers):
        # torch gate order i,f,g,o -> ONNX i,o,f,c
        def gates(t: torch.Tensor) -> np.ndarray:
            i, f, g, o = np.split(_np(t), 4, axis=0)
            return np.concatenate([i, o, f, g], axis=0)

        w[f"dec.lstm.{layer}.W"] = gates(getattr(dec.lstm, f"weight_ih_l{layer}"))[None]
        w[f"dec.lstm.{layer}.R"] = gates(getattr(dec.lstm, f"weight_hh_l{layer}"))[None]
        w[f"dec.lstm.{layer}.B"] = np.concatenate(
            [gates(getattr(dec.lstm, f"bias_ih_l{layer}")), gates(getattr(dec.lstm, f"bias_hh_l{layer}"))]
        )[None]
    linear("joint.enc_proj", dec.enc_proj)
    linear("joint.pred_proj", dec.pred_proj)
    linear("joint.out", dec.out)
    return w


class FrozenBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm that always uses its running statistics: an imported model's BatchNorm is folded into
    the depthwise conv, so batch statistics would change the function it starts from."""

    def train(self, mode: bool = True) -> "FrozenBatchNorm1d":
        return super().train(False)


def import_weights(w: dict[str, np.ndarray], cfg: ModelConfig) -> TdtModel:
    """The inverse of export_weights: a TdtModel from the builder's NumPy weights. BatchNorm comes
    back as identity (folded into the depthwise conv) and frozen."""
    model = TdtModel(cfg)
    enc, dec = model.encoder, model.decoder

    def put(param: torch.Tensor, value: np.ndarray) -> None:
        if tuple(param.shape) != value.shape:
            raise ValueError(f"shape {value.shape} does not fit {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))

    def linear(prefix: str, lin: nn.Linear) -> None:
        put(lin.weight, w[f"{prefix}.weight"].T)
        if lin.bias is not None:
            put(lin.bias, w[f"{prefix}.bias"])

    def norm(prefix: str, ln: nn.LayerNorm) -> None:
        put(ln.weight, w[f"{prefix}.gamma"])
        put(ln.bias, w[f"{prefix}.beta"])

    s = enc.subsampling
    for name in ("conv0", "dw1", "pw1", "dw2", "pw2"):
        put(getattr(s, name).weight, w[f"sub.{name}.weight"])
        put(getattr(s, name).bias, w[f"sub.{name}.bias"])
    linear("sub.out", s.out)
    for i, layer in enumerate(enc.layers):
        p = f"layers.{i}"
        for ff in ("ff1", "ff2"):
            norm(f"{p}.{ff}.norm", getattr(layer, ff).norm)
            linear(f"{p}.{ff}.linear1", getattr(layer, ff).linear1)
            linear(f"{p}.{ff}.linear2", getattr(layer, ff).linear2)
        att = layer.att
        norm(f"{p}.att.norm", att.norm)
        for name in ("linear_q", "linear_k", "linear_v", "linear_out", "linear_pos"):
            linear(f"{p}.att.{name}", getattr(att, name))
        put(att.pos_bias_u, w[f"{p}.att.pos_bias_u"])
        put(att.pos_bias_v, w[f"{p}.att.pos_bias_v"])
        conv = layer.conv
        norm(f"{p}.conv.norm", conv.norm)
        for name in ("pointwise1", "pointwise2", "depthwise"):
            put(getattr(conv, name).weight, w[f"{p}.conv.{name}.weight"])
            if getattr(conv, name).bias is not None:
                put(getattr(conv, name).bias, w[f"{p}.conv.{name}.bias"])
        bn = conv.batch_norm
        with torch.no_grad():  # identity: weight / sqrt(var + eps) == 1, no shift
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_(float(np.sqrt(1.0 + bn.eps)))
            bn.bias.zero_()
        norm(f"{p}.norm_out", layer.norm_out)
    put(dec.embedding.weight, w["dec.embedding"])
    for layer in range(cfg.pred_layers):
        def gates(t: np.ndarray) -> np.ndarray:  # ONNX i,o,f,c -> torch i,f,g,o
            i, o, f, g = np.split(t, 4, axis=0)
            return np.concatenate([i, f, g, o], axis=0)

        put(getattr(dec.lstm, f"weight_ih_l{layer}"), gates(w[f"dec.lstm.{layer}.W"][0]))
        put(getattr(dec.lstm, f"weight_hh_l{layer}"), gates(w[f"dec.lstm.{layer}.R"][0]))
        bias_ih, bias_hh = np.split(w[f"dec.lstm.{layer}.B"][0], 2)
        put(getattr(dec.lstm, f"bias_ih_l{layer}"), gates(bias_ih))
        put(getattr(dec.lstm, f"bias_hh_l{layer}"), gates(bias_hh))
    linear("joint.enc_proj", dec.enc_proj)
    linear("joint.pred_proj", dec.pred_proj)
    linear("joint.out", dec.out)
    freeze_batch_norms(model)
    return model


def freeze_batch_norms(model: TdtModel) -> None:
    for layer in model.encoder.layers:
        layer.conv.batch_norm.__class__ = FrozenBatchNorm1d
