"""FastConformer-TDT in Parakeet's ONNX layout, built from NumPy weights with onnx.helper (no torch).

Layout (names, dtypes) follows istupakov/parakeet-tdt-0.6b-v3-onnx so that onnx-asr runs it unchanged:
  encoder-model.onnx (+ encoder-model.onnx.data): audio_signal f32 [B,128,T], length i64 [B]
      -> outputs f32 [B,D,T'], encoded_lengths i64 [B]
  decoder_joint-model.onnx: encoder_outputs f32 [B,D,T], targets i32 [B,U], target_length i32 [B],
      input_states_1/2 f32 [L,B,H] -> outputs f32 [B,T,U,V+K], prednet_lengths i32 [B],
      output_states_1/2 f32 [L,B,H]
Every Linear is a MatMul with a constant [in,out] weight (+ Add bias), the form SmoothQuant and
onnxruntime's quantizers work on.

The encoder mirrors NeMo's TorchScript export node for node (../shared/FACTS.md, "The real export"):
exporter names (`/layers.0/self_attn/linear_q/MatMul`, weights `onnx::MatMul_<id>`), bias-free block
linears (cfg.linear_bias), encoded lengths computed in float (Cast, (Add, Div, Add, Floor) x3, Cast),
`Where` masks around the softmax and in the conv module, scores divided by sqrt(d_k), the positional
table sliced from M - T, a Pad before each depthwise conv, and Shape readers of the attention LayerNorm.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


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
    linear_bias: bool = True  # the demo was trained with biases; Parakeet v3's block linears have none
    pos_max_len: int = 5000  # positional table rows 2M-1: one pass holds at most M encoder frames (400 s)
    pos_table: str = "computed"  # "constant": a stored [1,2M-1,D] buffer as upstream; "computed": folded at load
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
    linear_bias=False,
    pos_table="constant",
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
    biases: dict[str, tuple[int, ...]] = {}  # block linears and pointwise convs: only with cfg.linear_bias
    for i in range(cfg.n_layers):
        p = f"layers.{i}"
        for ff in ("ff1", "ff2"):
            shapes |= {f"{p}.{ff}.norm.gamma": (d,), f"{p}.{ff}.norm.beta": (d,),
                       f"{p}.{ff}.linear1.weight": (d, cfg.ff_dim), f"{p}.{ff}.linear2.weight": (cfg.ff_dim, d)}
            biases |= {f"{p}.{ff}.linear1.bias": (cfg.ff_dim,), f"{p}.{ff}.linear2.bias": (d,)}
        shapes |= {f"{p}.att.norm.gamma": (d,), f"{p}.att.norm.beta": (d,)}
        for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
            shapes[f"{p}.att.{name}.weight"] = (d, d)
            biases[f"{p}.att.{name}.bias"] = (d,)
        shapes |= {f"{p}.att.linear_pos.weight": (d, d),
                   f"{p}.att.pos_bias_u": (cfg.n_heads, dk), f"{p}.att.pos_bias_v": (cfg.n_heads, dk),
                   f"{p}.conv.norm.gamma": (d,), f"{p}.conv.norm.beta": (d,),
                   f"{p}.conv.pointwise1.weight": (2 * d, d, 1),
                   f"{p}.conv.depthwise.weight": (d, 1, k), f"{p}.conv.depthwise.bias": (d,),
                   f"{p}.conv.pointwise2.weight": (d, d, 1),
                   f"{p}.norm_out.gamma": (d,), f"{p}.norm_out.beta": (d,)}
        biases |= {f"{p}.conv.pointwise1.bias": (2 * d,), f"{p}.conv.pointwise2.bias": (d,)}
    if cfg.linear_bias:
        shapes |= biases
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
FIRST_EXPORT_ID = {"encoder": 5000, "decoder_joint": 9000}  # exporter-style ids of unnamed weights

# builder key -> NeMo module path (the names torch.onnx.export keeps for named parameters)
_NEMO_NAMES = (("sub.conv0", "pre_encode.conv.0"), ("sub.dw1", "pre_encode.conv.2"), ("sub.pw1", "pre_encode.conv.3"),
               ("sub.dw2", "pre_encode.conv.5"), ("sub.pw2", "pre_encode.conv.6"), ("sub.out", "pre_encode.out"),
               (".ff1.norm.", ".norm_feed_forward1."), (".ff2.norm.", ".norm_feed_forward2."),
               (".att.norm.", ".norm_self_att."), (".conv.norm.", ".norm_conv."), (".ff1.", ".feed_forward1."),
               (".ff2.", ".feed_forward2."), (".att.", ".self_attn."), (".pointwise1.", ".pointwise_conv1."),
               (".pointwise2.", ".pointwise_conv2."), (".depthwise.", ".depthwise_conv."))


def nemo_name(key: str) -> str:
    """'layers.0.att.norm.gamma' -> 'layers.0.norm_self_att.weight' (NeMo's parameter path)."""
    for old, new in _NEMO_NAMES:
        key = key.replace(old, new)
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))


def node_scope(module: str) -> str:
    """'layers.0.self_attn.linear_q' -> '/layers.0/self_attn/linear_q', as the exporter scopes nodes."""
    parts = re.sub(r"\.(\d+)", r"#\1", module).split(".")
    return "/" + "/".join(p.replace("#", ".") if p.startswith("layers#") else
                          p.replace("#", "/" + p.split("#")[0] + ".") for p in parts)


def _scope(key: str) -> str:
    return node_scope(nemo_name(key + ".")[:-1])


def sinusoid_table(max_len: int, d_model: int) -> np.ndarray:
    """NeMo's RelPositionalEncoding buffer: positions max_len-1 .. -(max_len-1), sin/cos interleaved."""
    pos = np.arange(max_len - 1, -max_len, -1, dtype=np.float32)[:, None]
    inv_freq = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * (-np.log(10000.0) / d_model))
    angles = (pos * inv_freq[None].astype(np.float32)).astype(np.float32)
    return np.stack([np.sin(angles), np.cos(angles)], axis=2).reshape(1, -1, d_model).astype(np.float32)


class _GraphBuilder:
    """Nodes plus initializers written straight into a GraphProto (one copy of the weights), with the
    exporter's naming: nodes `/scope/Op`, `/scope/Op_1`, ..., outputs `<node>_output_0`, linear and
    folded-conv weights `onnx::MatMul_<id>` / `onnx::Conv_<id>`, other parameters by their NeMo path.
    With weights=None only the names are recorded (weight_names() for a 2.4 GB twin costs nothing)."""

    def __init__(self, name: str, weights: Mapping[str, np.ndarray] | None):
        # the graph lives inside its ModelProto from the start: no copy of the weights later
        self.proto = onnx.ModelProto(ir_version=IR_VERSION, producer_name="pytorch")
        self.proto.opset_import.add(domain="", version=OPSET)
        self.graph = self.proto.graph
        self.graph.name = "main_graph"
        self.weights = weights
        self.names: dict[str, str] = {}  # builder key -> initializer name
        self._next_id = FIRST_EXPORT_ID[name]
        self._node_count: dict[str, int] = {}

    def _tensor(self, name: str, array: np.ndarray | None) -> str:
        t = self.graph.initializer.add()
        t.name = name
        if array is not None:
            arr = np.ascontiguousarray(array)
            t.data_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
            t.dims.extend(arr.shape)
            t.raw_data = arr.tobytes()
        return name

    def weight(self, key: str, export_as: str = "") -> str:
        """A learned weight; export_as 'MatMul' or 'Conv' gives it an unnamed exporter id."""
        if export_as:
            name = f"onnx::{export_as}_{self._next_id}"
            self._next_id += 1
        else:
            name = nemo_name(key)
        self.names[key] = name
        return self._tensor(name, None if self.weights is None else self.weights[key])

    def const(self, value: object, dtype: type = np.int64) -> str:
        """A Constant node, as the exporter emits for Python scalars and shape lists."""
        return self.op("Constant", [], "", value=numpy_helper.from_array(np.asarray(value, dtype=dtype)))

    def buffer(self, name: str, make: Callable[[], np.ndarray]) -> str:
        """A constant module buffer (the positional table), computed only when weights are built."""
        return self._tensor(name, None if self.weights is None else make())

    def op(self, op_type: str, inputs: list[str], scope: str, n_out: int = 1, **attrs: object) -> str | list[str]:
        key = f"{scope}/{op_type}"
        count = self._node_count.get(key, 0)
        self._node_count[key] = count + 1
        name = key if count == 0 else f"{key}_{count}"
        outputs = [f"{name}_output_{i}" for i in range(n_out)]
        self.graph.node.append(onnx.helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs if n_out > 1 else outputs[0]

    def linear(self, x: str, key: str, bias: bool = True) -> str:
        scope = _scope(key)
        y = self.op("MatMul", [x, self.weight(f"{key}.weight", "MatMul")], scope)
        return self.op("Add", [y, self.weight(f"{key}.bias")], scope) if bias else y

    def layer_norm(self, x: str, key: str) -> str:
        return self.op("LayerNormalization", [x, self.weight(f"{key}.gamma"), self.weight(f"{key}.beta")],
                       _scope(key), axis=-1, epsilon=1e-5)

    def swish(self, x: str, scope: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x], scope)], scope)

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        self.graph.input.extend(inputs)
        self.graph.output.extend(outputs)
        return self.proto


def _subsampling(g: _GraphBuilder, cfg: ModelConfig) -> str:
    x = g.op("Transpose", ["audio_signal"], "/pre_encode", perm=[0, 2, 1])
    x = g.op("Unsqueeze", [x, g.const([1])], "/pre_encode")  # [B,1,T,F]
    c = cfg.subsampling_channels
    for name, group, k in (("conv0", 1, 3), ("dw1", c, 3), ("pw1", 1, 1), ("dw2", c, 3), ("pw2", 1, 1)):
        pad = k // 2
        scope = _scope(f"sub.{name}")
        x = g.op("Conv", [x, g.weight(f"sub.{name}.weight"), g.weight(f"sub.{name}.bias")], scope,
                 kernel_shape=[k, k], strides=[2, 2] if k == 3 else [1, 1], pads=[pad] * 4, group=group)
        if name in ("conv0", "pw1", "pw2"):
            x = g.op("Relu", [x], scope)
    x = g.op("Transpose", [x], "/pre_encode", perm=[0, 2, 1, 3])  # [B,T',C,F']
    x = g.op("Reshape", [x, g.const([0, 0, c * subsampled_freq(cfg)])], "/pre_encode")
    return g.linear(x, "sub.out")  # the one linear with a bias in Parakeet v3


def _lengths(g: _GraphBuilder) -> str:
    """NeMo's calc_length, traced: in float, (L + 2 paddings - kernel 3) / stride 2 + 1, floored, x3."""
    n = g.op("Cast", ["length"], "/pre_encode", to=onnx.TensorProto.FLOAT)
    for _ in range(3):
        n = g.op("Add", [n, g.const(-1.0, np.float32)], "/pre_encode")
        n = g.op("Div", [n, g.const(2.0, np.float32)], "/pre_encode")
        n = g.op("Add", [n, g.const(1.0, np.float32)], "/pre_encode")
        n = g.op("Floor", [n], "/pre_encode")
    return g.op("Cast", [n], "/pre_encode", to=onnx.TensorProto.INT64)


def _positions(g: _GraphBuilder, cfg: ModelConfig, t: str) -> str:
    """pos_enc.pe[:, M-T : M+T-1]: relative positions T-1 .. -(T-1), [1, 2T-1, D]. The table holds
    2M-1 rows (M = pos_max_len), so past M frames the start goes negative and the pass fails, as
    Parakeet's does past 5000 frames (400 s)."""
    m = cfg.pos_max_len
    if cfg.pos_table == "constant":
        table = g.buffer("pos_enc.pe", lambda: sinusoid_table(m, cfg.d_model))
    else:  # the same table computed from constants (onnxruntime folds it at load): no 2M x D bytes on disk
        pos = g.op("Range", [g.const(m - 1.0, np.float32), g.const(-float(m), np.float32),
                             g.const(-1.0, np.float32)], "/pos_enc")
        inv_freq = np.exp(np.arange(0, cfg.d_model, 2, dtype=np.float32) * (-np.log(10000.0) / cfg.d_model))
        angles = g.op("Mul", [g.op("Unsqueeze", [pos, g.const([1])], "/pos_enc"),
                              g.const(inv_freq[None].astype(np.float32), np.float32)], "/pos_enc")
        sin = g.op("Unsqueeze", [g.op("Sin", [angles], "/pos_enc"), g.const([2])], "/pos_enc")
        cos = g.op("Unsqueeze", [g.op("Cos", [angles], "/pos_enc"), g.const([2])], "/pos_enc")
        table = g.op("Reshape", [g.op("Concat", [sin, cos], "/pos_enc", axis=2), g.const([1, -1, cfg.d_model])],
                     "/pos_enc")
    start = g.op("Sub", [g.const([m]), t], "/pos_enc")
    end = g.op("Sub", [g.op("Add", [g.const([m]), t], "/pos_enc"), g.const([1])], "/pos_enc")
    return g.op("Slice", [table, start, end, g.const([1])], "/pos_enc")


def _masks(g: _GraphBuilder, cfg: ModelConfig, t: str, lengths: str) -> tuple[str, str]:
    """(attention mask [B,1,T,T], padding mask [B,1,T]), both True where masked (NeMo's _create_masks:
    Less -> Tile -> And with its transpose [-> And with the context band] -> Not)."""
    idx = g.op("Range", [g.const(0), g.op("Squeeze", [t, g.const([0])], "/mask"), g.const(1)], "/mask")
    valid = g.op("Less", [g.op("Unsqueeze", [idx, g.const([0])], "/mask"),
                          g.op("Unsqueeze", [lengths, g.const([1])], "/mask")], "/mask")  # [B,T]
    tiled = g.op("Tile", [g.op("Unsqueeze", [valid, g.const([1])], "/mask"),
                          g.op("Concat", [g.const([1]), t, g.const([1])], "/mask", axis=0)], "/mask")  # [B,T,T]
    att_ok = g.op("And", [tiled, g.op("Transpose", [tiled], "/mask", perm=[0, 2, 1])], "/mask")
    if cfg.att_context is not None:
        dist = g.op("Abs", [g.op("Sub", [g.op("Unsqueeze", [idx, g.const([1])], "/mask"),
                                         g.op("Unsqueeze", [idx, g.const([0])], "/mask")], "/mask")], "/mask")
        band = g.op("Not", [g.op("Greater", [dist, g.const(cfg.att_context)], "/mask")], "/mask")  # [T,T]
        att_ok = g.op("And", [att_ok, band], "/mask")
    att_mask = g.op("Unsqueeze", [g.op("Not", [att_ok], "/mask"), g.const([1])], "/mask")
    pad_mask = g.op("Unsqueeze", [g.op("Not", [valid], "/mask"), g.const([1])], "/mask")
    return att_mask, pad_mask


def _attention(g: _GraphBuilder, cfg: ModelConfig, x: str, key: str, pos: str, mask: str, t: str) -> str:
    h, dk = cfg.n_heads, cfg.d_model // cfg.n_heads
    scope = _scope(key)
    y = g.layer_norm(x, f"{key}.norm")
    # n_batch = query.size(0): the exporter reads the LayerNorm output's shape for every head reshape
    batch = g.op("Gather", [g.op("Shape", [y], scope), g.const(0)], scope, axis=0)
    heads = g.op("Concat", [g.op("Unsqueeze", [batch, g.const([0])], scope), g.const([-1, h, dk])], scope, axis=0)
    bias = cfg.linear_bias
    q = g.op("Reshape", [g.linear(y, f"{key}.linear_q", bias), heads], scope)
    k = g.op("Transpose", [g.op("Reshape", [g.linear(y, f"{key}.linear_k", bias), heads], scope)], scope,
             perm=[0, 2, 3, 1])  # [B,H,dk,T]
    v = g.op("Transpose", [g.op("Reshape", [g.linear(y, f"{key}.linear_v", bias), heads], scope)], scope,
             perm=[0, 2, 1, 3])  # [B,H,T,dk]
    pe = g.op("Reshape", [g.linear(pos, f"{key}.linear_pos", bias=False), g.const([1, -1, h, dk])], scope)
    pe = g.op("Transpose", [pe], scope, perm=[0, 2, 3, 1])  # [1,H,dk,2T-1]
    qu = g.op("Transpose", [g.op("Add", [q, g.weight(f"{key}.pos_bias_u")], scope)], scope, perm=[0, 2, 1, 3])
    qv = g.op("Transpose", [g.op("Add", [q, g.weight(f"{key}.pos_bias_v")], scope)], scope, perm=[0, 2, 1, 3])
    ac = g.op("MatMul", [qu, k], scope)
    bd = g.op("MatMul", [qv, pe], scope)  # [B,H,T,2T-1]
    # Transformer-XL relative shift: pad one column left, fold, drop the first row, unfold, crop
    bd = g.op("Pad", [bd, g.const([0, 0, 0, 1, 0, 0, 0, 0])], scope)
    bd = g.op("Reshape", [bd, g.op("Concat", [g.const([0, 0, -1]), t], scope, axis=0)], scope)
    bd = g.op("Slice", [bd, g.const([1]), g.const([2**62]), g.const([2])], scope)
    bd = g.op("Reshape", [bd, g.op("Concat", [g.const([0, 0]), t, g.const([-1])], scope, axis=0)], scope)
    bd = g.op("Slice", [bd, g.const([0]), t, g.const([3])], scope)
    scores = g.op("Div", [g.op("Add", [ac, bd], scope), g.const(np.sqrt(dk), np.float32)], scope)
    scores = g.op("Where", [mask, g.const(NEG_MASK, np.float32), scores], scope)
    attn = g.op("Where", [mask, g.const(0.0, np.float32), g.op("Softmax", [scores], scope, axis=-1)], scope)
    ctx = g.op("Transpose", [g.op("MatMul", [attn, v], scope)], scope, perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.op("Concat", [g.op("Unsqueeze", [batch, g.const([0])], scope),
                                                 g.const([-1, cfg.d_model])], scope, axis=0)], scope)
    return g.linear(ctx, f"{key}.linear_out", bias)


def _conv_module(g: _GraphBuilder, cfg: ModelConfig, x: str, key: str, pad_mask: str) -> str:
    scope = _scope(key)
    y = g.op("Transpose", [g.layer_norm(x, f"{key}.norm")], scope, perm=[0, 2, 1])
    pw1 = [g.weight(f"{key}.pointwise1.weight")] + ([g.weight(f"{key}.pointwise1.bias")] if cfg.linear_bias else [])
    y = g.op("Conv", [y, *pw1], _scope(f"{key}.pointwise1"), kernel_shape=[1])
    a, b = g.op("Split", [y, g.const([cfg.d_model, cfg.d_model])], scope, n_out=2, axis=1)
    y = g.op("Mul", [a, g.op("Sigmoid", [b], scope)], scope)  # GLU
    y = g.op("Where", [pad_mask, g.const(0.0, np.float32), y], scope)
    k = cfg.conv_kernel
    y = g.op("Pad", [y, g.const([0, 0, k // 2, 0, 0, k // 2])], scope)
    dw_scope = _scope(f"{key}.depthwise")
    y = g.op("Conv", [y, g.weight(f"{key}.depthwise.weight", "Conv"), g.weight(f"{key}.depthwise.bias", "Conv")],
             dw_scope, kernel_shape=[k], group=cfg.d_model)  # BatchNorm folded in, hence the unnamed weights
    y = g.swish(y, scope)
    pw2 = [g.weight(f"{key}.pointwise2.weight")] + ([g.weight(f"{key}.pointwise2.bias")] if cfg.linear_bias else [])
    y = g.op("Conv", [y, *pw2], _scope(f"{key}.pointwise2"), kernel_shape=[1])
    return g.op("Transpose", [y], scope, perm=[0, 2, 1])


def _feed_forward(g: _GraphBuilder, cfg: ModelConfig, x: str, key: str) -> str:
    scope = _scope(key)
    hidden = g.swish(g.linear(g.layer_norm(x, f"{key}.norm"), f"{key}.linear1", cfg.linear_bias), scope)
    return g.op("Mul", [g.linear(hidden, f"{key}.linear2", cfg.linear_bias), g.const(0.5, np.float32)], scope)


def _encoder(weights: Mapping[str, np.ndarray] | None, cfg: ModelConfig) -> _GraphBuilder:
    g = _GraphBuilder("encoder", weights)
    x = _subsampling(g, cfg)
    lengths = _lengths(g)
    t = g.op("Slice", [g.op("Shape", [x], "/pos_enc"), g.const([1]), g.const([2])], "/pos_enc")  # [1] int64
    pos = _positions(g, cfg, t)
    att_mask, pad_mask = _masks(g, cfg, t, lengths)
    for i in range(cfg.n_layers):
        key, scope = f"layers.{i}", f"/layers.{i}"
        x = g.op("Add", [x, _feed_forward(g, cfg, x, f"{key}.ff1")], scope)
        x = g.op("Add", [x, _attention(g, cfg, x, f"{key}.att", pos, att_mask, t)], scope)
        x = g.op("Add", [x, _conv_module(g, cfg, x, f"{key}.conv", pad_mask)], scope)
        x = g.op("Add", [x, _feed_forward(g, cfg, x, f"{key}.ff2")], scope)
        x = g.layer_norm(x, f"{key}.norm_out")
    g.graph.node.append(onnx.helper.make_node("Transpose", [x], ["outputs"], name="/Transpose", perm=[0, 2, 1]))
    g.graph.node.append(onnx.helper.make_node("Identity", [lengths], ["encoded_lengths"], name="/Identity"))
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    g.model(
        [onnx.helper.make_tensor_value_info("audio_signal", f32, ["batch", cfg.n_mels, "time"]),
         onnx.helper.make_tensor_value_info("length", i64, ["batch"])],
        [onnx.helper.make_tensor_value_info("outputs", f32, ["batch", cfg.d_model, "frames"]),
         onnx.helper.make_tensor_value_info("encoded_lengths", i64, ["batch"])],
    )
    return g


def build_encoder(weights: Mapping[str, np.ndarray], cfg: ModelConfig) -> onnx.ModelProto:
    """audio_signal [B,n_mels,T], length [B] -> outputs [B,D,T'], encoded_lengths [B]."""
    return _encoder(weights, cfg).proto


def _decoder_joint(weights: Mapping[str, np.ndarray] | None, cfg: ModelConfig) -> _GraphBuilder:
    g = _GraphBuilder("decoder_joint", weights)
    h, n_layers = cfg.pred_hidden, cfg.pred_layers
    emb = g.op("Gather", [g.weight("dec.embedding"), "targets"], "/decoder/prediction/embed", axis=0)  # [B,U,H]
    x = g.op("Transpose", [emb], "/decoder", perm=[1, 0, 2])  # [U,B,H]
    finals_h, finals_c = [], []
    for layer in range(n_layers):
        scope = f"/decoder/prediction/dec_rnn/lstm.{layer}"
        sl = [g.const([layer]), g.const([layer + 1]), g.const([0])]
        h0 = g.op("Slice", ["input_states_1", *sl], scope)
        c0 = g.op("Slice", ["input_states_2", *sl], scope)
        y, yh, yc = g.op("LSTM", [x, g.weight(f"dec.lstm.{layer}.W"), g.weight(f"dec.lstm.{layer}.R"),
                                  g.weight(f"dec.lstm.{layer}.B"), "", h0, c0], scope, n_out=3, hidden_size=h)
        x = g.op("Squeeze", [y, g.const([1])], scope)
        finals_h.append(yh)
        finals_c.append(yc)
    pred = g.op("Transpose", [x], "/decoder", perm=[1, 0, 2])  # [B,U,H]
    enc = g.op("Transpose", ["encoder_outputs"], "/joint", perm=[0, 2, 1])  # [B,T,D]
    enc = g.op("Unsqueeze", [g.linear(enc, "joint.enc_proj"), g.const([2])], "/joint")
    pred = g.op("Unsqueeze", [g.linear(pred, "joint.pred_proj"), g.const([1])], "/joint")
    hidden = g.op("Relu", [g.op("Add", [enc, pred], "/joint")], "/joint")
    logits = g.linear(hidden, "joint.out")
    g.graph.node.append(onnx.helper.make_node("Identity", [logits], ["outputs"], name="/joint/Identity"))
    g.graph.node.append(onnx.helper.make_node("Identity", ["target_length"], ["prednet_lengths"],
                                              name="/decoder/Identity"))
    for name, finals in (("output_states_1", finals_h), ("output_states_2", finals_c)):
        g.graph.node.append(onnx.helper.make_node("Concat", finals, [name], name=f"/decoder/Concat_{name}", axis=0))
    f32, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    n_out = cfg.vocab_size + cfg.n_durations
    g.model(
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
    return g


def build_decoder_joint(weights: Mapping[str, np.ndarray], cfg: ModelConfig) -> onnx.ModelProto:
    """LSTM prediction network on `targets` plus the joint over every (frame, target) pair."""
    return _decoder_joint(weights, cfg).proto


def weight_names(cfg: ModelConfig) -> dict[str, dict[str, str]]:
    """File -> {builder key: initializer name} (the exporter's names are not the builder's keys)."""
    return {ENCODER_FILE: _encoder(None, cfg).names, DECODER_FILE: _decoder_joint(None, cfg).names}


def read_weights(model_dir: Path, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The builder's weights back from a model directory it wrote (the inverse of write_model_dir)."""
    weights: dict[str, np.ndarray] = {}
    for file, names in weight_names(cfg).items():
        model = onnx.load(str(Path(model_dir) / file))
        stored = {t.name: t for t in model.graph.initializer}
        weights |= {key: numpy_helper.to_array(stored[name]).copy() for key, name in names.items()}
    return weights


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
