"""FastConformer-TDT in Parakeet's ONNX layout, built from NumPy weights with onnx.helper (no torch).

Layout (names, dtypes) follows istupakov/parakeet-tdt-0.6b-v3-onnx so that onnx-asr runs it unchanged:
  encoder-model.onnx (+ encoder-model.onnx.data): audio_signal f32 [B,128,T], length i64 [B]
      -> outputs f32 [B,D,T'], encoded_lengths i64 [B]
  decoder_joint-model.onnx: encoder_outputs f32 [B,D,T], targets i32 [B,U], target_length i32 [B],
      input_states_1/2 f32 [L,B,H] -> outputs f32 [B,T,U,V+K], prednet_lengths i32 [B],
      output_states_1/2 f32 [L,B,H]
Every Linear is a MatMul with a constant [in,out] weight (+ Add bias), the form SmoothQuant and
onnxruntime's quantizers work on.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the encoder, prediction network and joint."""

    n_mels: int = 128
    vocab_size: int = 44  # tokens including <blk> (the last id): demo.text.ALPHABET + <blk>
    durations: tuple[int, ...] = (0, 1, 2, 3, 4)
    subsampling_channels: int = 32  # dw_striding conv channels (3 stride-2 stages: 8x)
    d_model: int = 144
    n_layers: int = 5
    n_heads: int = 4
    ff_dim: int = 576
    conv_kernel: int = 9
    att_context: int | None = 64  # +-frames of local attention; None = global attention
    pred_hidden: int = 160
    pred_layers: int = 1
    joint_hidden: int = 160

    @property
    def n_durations(self) -> int:
        return len(self.durations)

    def replace(self, **changes: object) -> ModelConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


TINY = ModelConfig()
# Parakeet TDT 0.6B v3's sizes, for a random-weight twin (benchmarks, memory tests).
PARAKEET = ModelConfig(
    vocab_size=8193,
    subsampling_channels=256,
    d_model=1024,
    n_layers=24,
    n_heads=8,
    ff_dim=4096,
    conv_kernel=9,
    att_context=None,
    pred_hidden=640,
    pred_layers=2,
    joint_hidden=640,
)


# ----------------------------------------------------------------------------------------- weights
def subsampled_freq(cfg: ModelConfig) -> int:
    freq = cfg.n_mels
    for _ in range(3):
        freq = (freq - 1) // 2 + 1
    return freq


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the builder reads: name -> shape. Linear weights are [in, out]."""
    c, d, k = cfg.subsampling_channels, cfg.d_model, cfg.conv_kernel
    dk = d // cfg.n_heads
    shapes: dict[str, tuple[int, ...]] = {
        "sub.conv0.weight": (c, 1, 3, 3), "sub.conv0.bias": (c,),
        "sub.dw1.weight": (c, 1, 3, 3), "sub.dw1.bias": (c,),
        "sub.pw1.weight": (c, c, 1, 1), "sub.pw1.bias": (c,),
        "sub.dw2.weight": (c, 1, 3, 3), "sub.dw2.bias": (c,),
        "sub.pw2.weight": (c, c, 1, 1), "sub.pw2.bias": (c,),
        "sub.out.weight": (c * subsampled_freq(cfg), d), "sub.out.bias": (d,),
    }
    for i in range(cfg.n_layers):
        p = f"layers.{i}"
        for ff in ("ff1", "ff2"):
            shapes |= {f"{p}.{ff}.norm.gamma": (d,), f"{p}.{ff}.norm.beta": (d,),
                       f"{p}.{ff}.linear1.weight": (d, cfg.ff_dim), f"{p}.{ff}.linear1.bias": (cfg.ff_dim,),
                       f"{p}.{ff}.linear2.weight": (cfg.ff_dim, d), f"{p}.{ff}.linear2.bias": (d,)}
        shapes |= {f"{p}.att.norm.gamma": (d,), f"{p}.att.norm.beta": (d,)}
        for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
            shapes |= {f"{p}.att.{name}.weight": (d, d), f"{p}.att.{name}.bias": (d,)}
        shapes |= {f"{p}.att.linear_pos.weight": (d, d),
                   f"{p}.att.pos_bias_u": (cfg.n_heads, dk), f"{p}.att.pos_bias_v": (cfg.n_heads, dk),
                   f"{p}.conv.norm.gamma": (d,), f"{p}.conv.norm.beta": (d,),
                   f"{p}.conv.pointwise1.weight": (2 * d, d, 1), f"{p}.conv.pointwise1.bias": (2 * d,),
                   f"{p}.conv.depthwise.weight": (d, 1, k), f"{p}.conv.depthwise.bias": (d,),
                   f"{p}.conv.pointwise2.weight": (d, d, 1), f"{p}.conv.pointwise2.bias": (d,),
                   f"{p}.norm_out.gamma": (d,), f"{p}.norm_out.beta": (d,)}
    h = cfg.pred_hidden
    shapes["dec.embedding"] = (cfg.vocab_size, h)
    for layer in range(cfg.pred_layers):
        shapes |= {f"dec.lstm.{layer}.W": (1, 4 * h, h), f"dec.lstm.{layer}.R": (1, 4 * h, h),
                   f"dec.lstm.{layer}.B": (1, 8 * h)}
    j = cfg.joint_hidden
    shapes |= {"joint.enc_proj.weight": (d, j), "joint.enc_proj.bias": (j,),
               "joint.pred_proj.weight": (h, j), "joint.pred_proj.bias": (j,),
               "joint.out.weight": (j, cfg.vocab_size + cfg.n_durations),
               "joint.out.bias": (cfg.vocab_size + cfg.n_durations,)}
    return shapes


class RandomWeights(Mapping[str, np.ndarray]):
    """Deterministic random weights, generated on access (so a 2.4 GB twin is never held twice)."""

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        self.cfg, self.seed, self.shapes = cfg, seed, weight_shapes(cfg)

    def __getitem__(self, name: str) -> np.ndarray:
        shape = self.shapes[name]
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        if name.endswith(".gamma"):
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if name.endswith((".bias", ".beta", ".B")):
            return (0.02 * rng.standard_normal(shape)).astype(np.float32)
        if name.endswith((".W", ".R")) or len(shape) > 2:  # LSTM [1,4H,in], conv [out,in/g,k...]
            fan_in = int(np.prod(shape[2:] if name.endswith((".W", ".R")) else shape[1:]))
        else:  # Linear [in,out], embedding, position biases
            fan_in = shape[0]
        scale = 1.0 / np.sqrt(max(1, fan_in))
        return (scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32, copy=False)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


# ----------------------------------------------------------------------------------------- graphs
OPSET = 17
IR_VERSION = 9
NEG_MASK = -10000.0


class _GraphBuilder:
    """Nodes plus initializers written straight into a GraphProto (one copy of the weights)."""

    def __init__(self, name: str, weights: Mapping[str, np.ndarray]):
        # the graph lives inside its ModelProto from the start: no copy of the weights later
        self.proto = onnx.ModelProto(ir_version=IR_VERSION, producer_name="parakeet-requant-demo")
        self.proto.opset_import.add(domain="", version=OPSET)
        self.graph = self.proto.graph
        self.graph.name = name
        self.weights = weights
        self._count = 0

    def weight(self, name: str, array: np.ndarray | None = None) -> str:
        arr = np.ascontiguousarray(self.weights[name] if array is None else array)
        t = self.graph.initializer.add()
        t.name = name
        t.data_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        t.raw_data = arr.tobytes()
        return name

    def const(self, value: object, dtype: type = np.int64) -> str:
        self._count += 1
        return self.weight(f"const_{self._count}", np.asarray(value, dtype=dtype))

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, **attrs: object) -> str | list[str]:
        outputs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.graph.node.append(onnx.helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs if n_out > 1 else outputs[0]

    def linear(self, x: str, prefix: str, bias: bool = True) -> str:
        y = self.op("MatMul", [x, self.weight(f"{prefix}.weight")], f"{prefix}/MatMul")
        return self.op("Add", [y, self.weight(f"{prefix}.bias")], f"{prefix}/Add") if bias else y

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op("LayerNormalization", [x, self.weight(f"{prefix}.gamma"), self.weight(f"{prefix}.beta")],
                       f"{prefix}/LayerNormalization", axis=-1, epsilon=1e-5)

    def swish(self, x: str, name: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x], f"{name}/Sigmoid")], f"{name}/Mul")

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        self.graph.input.extend(inputs)
        self.graph.output.extend(outputs)
        return self.proto


def _subsampling(g: _GraphBuilder, cfg: ModelConfig) -> str:
    x = g.op("Transpose", ["audio_signal"], "sub/Transpose", perm=[0, 2, 1])
    x = g.op("Unsqueeze", [x, g.const([1])], "sub/Unsqueeze")  # [B,1,T,F]
    c = cfg.subsampling_channels
    for name, group, k in (("conv0", 1, 3), ("dw1", c, 3), ("pw1", 1, 1), ("dw2", c, 3), ("pw2", 1, 1)):
        pad = k // 2
        x = g.op("Conv", [x, g.weight(f"sub.{name}.weight"), g.weight(f"sub.{name}.bias")], f"sub.{name}/Conv",
                 kernel_shape=[k, k], strides=[2, 2] if k == 3 else [1, 1], pads=[pad] * 4, group=group)
        if name in ("conv0", "pw1", "pw2"):
            x = g.op("Relu", [x], f"sub.{name}/Relu")
    x = g.op("Transpose", [x], "sub/Transpose_1", perm=[0, 2, 1, 3])  # [B,T',C,F']
    x = g.op("Reshape", [x, g.const([0, 0, c * subsampled_freq(cfg)])], "sub/Reshape")
    return g.linear(x, "sub.out")


def _lengths(g: _GraphBuilder) -> str:
    n = "length"
    for i in range(3):
        n = g.op("Add", [g.op("Div", [g.op("Sub", [n, g.const(1)], f"len/Sub_{i}"), g.const(2)], f"len/Div_{i}"),
                         g.const(1)], f"len/Add_{i}")
    return g.op("Identity", [n], "len/Identity")


def _positions(g: _GraphBuilder, cfg: ModelConfig, t: str) -> str:
    """Sinusoidal table for relative positions T-1 .. -(T-1): [2T-1, D] (computed, no size cap)."""
    t_f = g.op("Cast", [t], "pos/Cast", to=onnx.TensorProto.FLOAT)
    start = g.op("Sub", [t_f, g.const(1.0, np.float32)], "pos/Sub")
    limit = g.op("Neg", [t_f], "pos/Neg")
    pos = g.op("Range", [start, limit, g.const(-1.0, np.float32)], "pos/Range")
    pos = g.op("Unsqueeze", [pos, g.const([1])], "pos/Unsqueeze")
    inv_freq = np.exp(np.arange(0, cfg.d_model, 2, dtype=np.float32) * (-np.log(10000.0) / cfg.d_model))
    angles = g.op("Mul", [pos, g.const(inv_freq[None].astype(np.float32), np.float32)], "pos/Mul")
    sin = g.op("Unsqueeze", [g.op("Sin", [angles], "pos/Sin"), g.const([2])], "pos/Unsqueeze_sin")
    cos = g.op("Unsqueeze", [g.op("Cos", [angles], "pos/Cos"), g.const([2])], "pos/Unsqueeze_cos")
    table = g.op("Concat", [sin, cos], "pos/Concat", axis=2)
    return g.op("Reshape", [table, g.const([-1, cfg.d_model])], "pos/Reshape")


def _masks(g: _GraphBuilder, cfg: ModelConfig, t: str, lengths: str) -> tuple[str, str]:
    """(additive attention bias [B,1,T,T], keep [B,1,T] float) from the encoded lengths."""
    idx = g.op("Range", [g.const(0), t, g.const(1)], "mask/Range")
    valid = g.op("Less", [g.op("Unsqueeze", [idx, g.const([0])], "mask/Unsqueeze_idx"),
                          g.op("Unsqueeze", [lengths, g.const([1])], "mask/Unsqueeze_len")], "mask/Less")  # [B,T]
    keep = g.op("Unsqueeze", [g.op("Cast", [valid], "mask/Cast_keep", to=onnx.TensorProto.FLOAT), g.const([1])],
                "mask/keep")
    bad = g.op("Not", [g.op("Unsqueeze", [valid, g.const([1, 2])], "mask/Unsqueeze_keys")], "mask/Not")  # [B,1,1,T]
    if cfg.att_context is not None:
        rows = g.op("Unsqueeze", [idx, g.const([1])], "mask/Unsqueeze_rows")
        cols = g.op("Unsqueeze", [idx, g.const([0])], "mask/Unsqueeze_cols")
        dist = g.op("Abs", [g.op("Sub", [rows, cols], "mask/Sub")], "mask/Abs")
        band = g.op("Greater", [dist, g.const(cfg.att_context)], "mask/Greater")  # [T,T]
        bad = g.op("Or", [bad, band], "mask/Or")  # [B,1,T,T]
    bias = g.op("Mul", [g.op("Cast", [bad], "mask/Cast_bias", to=onnx.TensorProto.FLOAT),
                        g.const(NEG_MASK, np.float32)], "mask/bias")
    return bias, keep


def _attention(g: _GraphBuilder, cfg: ModelConfig, x: str, p: str, pos: str, bias: str, t: str) -> str:
    h, dk = cfg.n_heads, cfg.d_model // cfg.n_heads
    y = g.layer_norm(x, f"{p}.norm")
    heads = g.const([0, 0, h, dk])
    q = g.op("Reshape", [g.linear(y, f"{p}.linear_q"), heads], f"{p}/Reshape_q")
    k = g.op("Transpose", [g.op("Reshape", [g.linear(y, f"{p}.linear_k"), heads], f"{p}/Reshape_k")],
             f"{p}/Transpose_k", perm=[0, 2, 3, 1])  # [B,H,dk,T]
    v = g.op("Transpose", [g.op("Reshape", [g.linear(y, f"{p}.linear_v"), heads], f"{p}/Reshape_v")],
             f"{p}/Transpose_v", perm=[0, 2, 1, 3])  # [B,H,T,dk]
    pe = g.op("Reshape", [g.linear(pos, f"{p}.linear_pos", bias=False), g.const([1, -1, h, dk])], f"{p}/Reshape_p")
    pe = g.op("Transpose", [pe], f"{p}/Transpose_p", perm=[0, 2, 3, 1])  # [1,H,dk,2T-1]
    qu = g.op("Transpose", [g.op("Add", [q, g.weight(f"{p}.pos_bias_u")], f"{p}/Add_u")], f"{p}/Transpose_u",
              perm=[0, 2, 1, 3])
    qv = g.op("Transpose", [g.op("Add", [q, g.weight(f"{p}.pos_bias_v")], f"{p}/Add_v")], f"{p}/Transpose_v2",
              perm=[0, 2, 1, 3])
    ac = g.op("MatMul", [qu, k], f"{p}/MatMul_qk")
    bd = g.op("MatMul", [qv, pe], f"{p}/MatMul_qp")  # [B,H,T,2T-1]
    # Transformer-XL relative shift: pad one column left, fold, drop the first row, unfold, crop
    bd = g.op("Pad", [bd, g.const([0, 0, 0, 1, 0, 0, 0, 0])], f"{p}/Pad")
    bd = g.op("Reshape", [bd, g.op("Concat", [g.const([0, 0, -1]), t], f"{p}/Concat_fold", axis=0)], f"{p}/Fold")
    bd = g.op("Slice", [bd, g.const([1]), g.const([2**62]), g.const([2])], f"{p}/Slice_row")
    bd = g.op("Reshape", [bd, g.op("Concat", [g.const([0, 0]), t, g.const([-1])], f"{p}/Concat_unfold", axis=0)],
              f"{p}/Unfold")
    bd = g.op("Slice", [bd, g.const([0]), t, g.const([3])], f"{p}/Slice_col")
    scores = g.op("Add", [ac, bd], f"{p}/Add_scores")
    scores = g.op("Mul", [scores, g.const(1.0 / np.sqrt(dk), np.float32)], f"{p}/Mul_scale")
    attn = g.op("Softmax", [g.op("Add", [scores, bias], f"{p}/Add_mask")], f"{p}/Softmax", axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [attn, v], f"{p}/MatMul_av")], f"{p}/Transpose_ctx", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const([0, 0, cfg.d_model])], f"{p}/Reshape_ctx")
    return g.linear(ctx, f"{p}.linear_out")


def _conv_module(g: _GraphBuilder, cfg: ModelConfig, x: str, p: str, keep: str) -> str:
    y = g.op("Transpose", [g.layer_norm(x, f"{p}.norm")], f"{p}/Transpose_in", perm=[0, 2, 1])
    y = g.op("Conv", [y, g.weight(f"{p}.pointwise1.weight"), g.weight(f"{p}.pointwise1.bias")],
             f"{p}.pointwise1/Conv", kernel_shape=[1])
    a, b = g.op("Split", [y, g.const([cfg.d_model, cfg.d_model])], f"{p}/Split", n_out=2, axis=1)
    y = g.op("Mul", [a, g.op("Sigmoid", [b], f"{p}/GLU_Sigmoid")], f"{p}/GLU")
    y = g.op("Mul", [y, keep], f"{p}/Mul_keep")
    k = cfg.conv_kernel
    y = g.op("Conv", [y, g.weight(f"{p}.depthwise.weight"), g.weight(f"{p}.depthwise.bias")], f"{p}.depthwise/Conv",
             kernel_shape=[k], pads=[k // 2, k // 2], group=cfg.d_model)  # BatchNorm folded in
    y = g.swish(y, f"{p}/Swish")
    y = g.op("Conv", [y, g.weight(f"{p}.pointwise2.weight"), g.weight(f"{p}.pointwise2.bias")],
             f"{p}.pointwise2/Conv", kernel_shape=[1])
    return g.op("Transpose", [y], f"{p}/Transpose_out", perm=[0, 2, 1])


def _feed_forward(g: _GraphBuilder, x: str, p: str) -> str:
    y = g.linear(g.swish(g.linear(g.layer_norm(x, f"{p}.norm"), f"{p}.linear1"), f"{p}/Swish"), f"{p}.linear2")
    return g.op("Mul", [y, g.const(0.5, np.float32)], f"{p}/Mul_half")


def build_encoder(weights: Mapping[str, np.ndarray], cfg: ModelConfig) -> onnx.ModelProto:
    """audio_signal [B,n_mels,T], length [B] -> outputs [B,D,T'], encoded_lengths [B]."""
    g = _GraphBuilder("encoder", weights)
    x = _subsampling(g, cfg)
    lengths = _lengths(g)
    t = g.op("Slice", [g.op("Shape", [x], "enc/Shape"), g.const([1]), g.const([2])], "enc/T")  # [1] int64
    pos = _positions(g, cfg, t)
    bias, keep = _masks(g, cfg, t, lengths)
    for i in range(cfg.n_layers):
        p = f"layers.{i}"
        x = g.op("Add", [x, _feed_forward(g, x, f"{p}.ff1")], f"{p}/Add_ff1")
        x = g.op("Add", [x, _attention(g, cfg, x, f"{p}.att", pos, bias, t)], f"{p}/Add_att")
        x = g.op("Add", [x, _conv_module(g, cfg, x, f"{p}.conv", keep)], f"{p}/Add_conv")
        x = g.op("Add", [x, _feed_forward(g, x, f"{p}.ff2")], f"{p}/Add_ff2")
        x = g.layer_norm(x, f"{p}.norm_out")
    g.graph.node.append(onnx.helper.make_node("Transpose", [x], ["outputs"], name="enc/Transpose_out", perm=[0, 2, 1]))
    g.graph.node.append(onnx.helper.make_node("Identity", [lengths], ["encoded_lengths"], name="enc/lengths"))
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    return g.model(
        [onnx.helper.make_tensor_value_info("audio_signal", f32, ["batch", cfg.n_mels, "time"]),
         onnx.helper.make_tensor_value_info("length", i64, ["batch"])],
        [onnx.helper.make_tensor_value_info("outputs", f32, ["batch", cfg.d_model, "frames"]),
         onnx.helper.make_tensor_value_info("encoded_lengths", i64, ["batch"])],
    )


def build_decoder_joint(weights: Mapping[str, np.ndarray], cfg: ModelConfig) -> onnx.ModelProto:
    """LSTM prediction network on `targets` plus the joint over every (frame, target) pair."""
    g = _GraphBuilder("decoder_joint", weights)
    h, n_layers = cfg.pred_hidden, cfg.pred_layers
    emb = g.op("Gather", [g.weight("dec.embedding"), "targets"], "dec.embedding/Gather", axis=0)  # [B,U,H]
    x = g.op("Transpose", [emb], "dec/Transpose_in", perm=[1, 0, 2])  # [U,B,H]
    finals_h, finals_c = [], []
    for layer in range(n_layers):
        sl = [g.const([layer]), g.const([layer + 1]), g.const([0])]
        h0 = g.op("Slice", ["input_states_1", *sl], f"dec.lstm.{layer}/Slice_h")
        c0 = g.op("Slice", ["input_states_2", *sl], f"dec.lstm.{layer}/Slice_c")
        y, yh, yc = g.op("LSTM", [x, g.weight(f"dec.lstm.{layer}.W"), g.weight(f"dec.lstm.{layer}.R"),
                                  g.weight(f"dec.lstm.{layer}.B"), "", h0, c0],
                         f"dec.lstm.{layer}/LSTM", n_out=3, hidden_size=h)
        x = g.op("Squeeze", [y, g.const([1])], f"dec.lstm.{layer}/Squeeze")
        finals_h.append(yh)
        finals_c.append(yc)
    pred = g.op("Transpose", [x], "dec/Transpose_out", perm=[1, 0, 2])  # [B,U,H]
    enc = g.op("Transpose", ["encoder_outputs"], "joint/Transpose_enc", perm=[0, 2, 1])  # [B,T,D]
    enc = g.op("Unsqueeze", [g.linear(enc, "joint.enc_proj"), g.const([2])], "joint/Unsqueeze_enc")
    pred = g.op("Unsqueeze", [g.linear(pred, "joint.pred_proj"), g.const([1])], "joint/Unsqueeze_pred")
    hidden = g.op("Relu", [g.op("Add", [enc, pred], "joint/Add")], "joint/Relu")
    logits = g.linear(hidden, "joint.out")
    g.graph.node.append(onnx.helper.make_node("Identity", [logits], ["outputs"], name="joint/outputs"))
    g.graph.node.append(onnx.helper.make_node("Identity", ["target_length"], ["prednet_lengths"], name="dec/lengths"))
    for name, finals in (("output_states_1", finals_h), ("output_states_2", finals_c)):
        g.graph.node.append(onnx.helper.make_node("Concat", finals, [name], name=f"dec/{name}", axis=0))
    f32, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    n_out = cfg.vocab_size + cfg.n_durations
    return g.model(
        [onnx.helper.make_tensor_value_info("encoder_outputs", f32, ["batch", cfg.d_model, "frames"]),
         onnx.helper.make_tensor_value_info("targets", i32, ["batch", "targets_len"]),
         onnx.helper.make_tensor_value_info("target_length", i32, ["batch"]),
         onnx.helper.make_tensor_value_info("input_states_1", f32, [n_layers, "batch", h]),
         onnx.helper.make_tensor_value_info("input_states_2", f32, [n_layers, "batch", h])],
        [onnx.helper.make_tensor_value_info("outputs", f32, ["batch", "frames", "targets_len", n_out]),
         onnx.helper.make_tensor_value_info("prednet_lengths", i32, ["batch"]),
         onnx.helper.make_tensor_value_info("output_states_1", f32, [n_layers, "batch", h]),
         onnx.helper.make_tensor_value_info("output_states_2", f32, [n_layers, "batch", h])],
    )


# ----------------------------------------------------------------------------------------- files
ENCODER_FILE = "encoder-model.onnx"
ENCODER_DATA = "encoder-model.onnx.data"
DECODER_FILE = "decoder_joint-model.onnx"
CONFIG = {"model_type": "nemo-conformer-tdt", "features_size": 128, "subsampling_factor": 8}


def save_encoder(model: onnx.ModelProto, path: Path) -> None:
    """Write with every weight in one external file `<name>.data` beside it (as upstream)."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    data.chmod(0o644)  # onnx creates it owner-only


def write_vocab(path: Path, tokens: list[str]) -> None:
    if tokens[-1] != "<blk>":
        raise ValueError("the last vocabulary token must be <blk>")
    path.write_text("".join(f"{tok} {i}\n" for i, tok in enumerate(tokens)), encoding="utf-8")


def write_model_dir(out_dir: Path, weights: Mapping[str, np.ndarray], cfg: ModelConfig, tokens: list[str]) -> None:
    """config.json, vocab.txt, encoder-model.onnx(+.data), decoder_joint-model.onnx into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(tokens) != cfg.vocab_size:
        raise ValueError(f"{len(tokens)} tokens for a model with vocab_size {cfg.vocab_size}")
    (out_dir / "config.json").write_text(json.dumps(CONFIG, indent=4) + "\n")
    write_vocab(out_dir / "vocab.txt", tokens)
    save_encoder(build_encoder(weights, cfg), out_dir / ENCODER_FILE)
    onnx.save_model(build_decoder_joint(weights, cfg), str(out_dir / DECODER_FILE))


def default_tokens(cfg: ModelConfig) -> list[str]:
    """demo.text.ALPHABET as characters ('▁' for space), padded with <unkN>, then <blk>."""
    from demo.text import ALPHABET

    chars = [("▁" if ch == " " else ch) for ch in ALPHABET][: cfg.vocab_size - 1]
    chars += [f"<unk{i}>" for i in range(cfg.vocab_size - 1 - len(chars))]
    return [*chars, "<blk>"]


def build_random_model(out_dir: Path, config: ModelConfig = TINY, seed: int = 0) -> Path:
    """A randomly initialised model directory in the demo layout (unit tests, benchmarks)."""
    write_model_dir(Path(out_dir), RandomWeights(config, seed), config, default_tokens(config))
    return Path(out_dir)
