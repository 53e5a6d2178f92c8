"""A small random FastConformer-shaped encoder in Parakeet's ONNX layout, for the transform tests.

conv subsampling (2 strided Conv2d) -> per layer: FFN, attention (one LayerNorm shared by Q, K, V and a
Shape reader; Q·Kᵀ and attn·V as two-activation MatMuls; Div scaling, Where masks), a Conv1d module
(pointwise, GLU, Where mask, Pad, depthwise, pointwise), FFN, LayerNorm -> a tied-weight pair and a
transposed-weight MatMul (patterns SmoothQuant must skip). Encoded lengths are computed in float, as
NeMo's export does.
I/O: audio_signal f32 [B,128,T], length i64 [B] -> outputs f32 [B,D,T'], encoded_lengths i64 [B].
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits[name] = value
        return name

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int, gain: float = 1.0) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * gain / np.sqrt(fan_in)).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: object) -> str | list[str]:
        self.count += 1
        name = f"{op_type.lower()}_{self.count}"
        outs = [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def linear(self, x: str, tag: str, d_in: int, d_out: int) -> str:
        y = self.op("MatMul", [x, self.weight(f"{tag}.weight", (d_in, d_out), d_in)])
        bias = (0.02 * self.rng.standard_normal(d_out)).astype(np.float32)
        return self.op("Add", [y, self.const(f"{tag}.bias", bias)])

    def norm(self, x: str, tag: str, d: int) -> str:
        gamma = (1 + 0.1 * self.rng.standard_normal(d)).astype(np.float32)
        beta = (0.1 * self.rng.standard_normal(d)).astype(np.float32)
        return self.op("LayerNormalization", [x, self.const(f"{tag}.gamma", gamma), self.const(f"{tag}.beta", beta)],
                       axis=-1, epsilon=1e-5)

    def swish(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def ffn(self, h: str, tag: str, d: int) -> str:
        a = self.swish(self.linear(self.norm(h, f"{tag}.norm", d), f"{tag}.linear1", d, 4 * d))
        f = self.linear(a, f"{tag}.linear2", 4 * d, d)
        return self.op("Add", [h, self.op("Mul", [f, self.const(f"{tag}.half", np.array(0.5, np.float32))])])

    def attention(self, h: str, tag: str, d: int, mask: str) -> str:
        """As NeMo exports it: the LayerNorm's shape read for the head reshape, scores divided by
        sqrt(d), Where masks before and after the softmax."""
        x = self.norm(h, f"{tag}.norm", d)
        batch = self.op("Gather", [self.op("Shape", [x]), self.const("zero", np.array(0, np.int64))], axis=0)
        shape = self.op("Concat", [self.op("Unsqueeze", [batch, "axes0"]), "minus1_d"], axis=0)
        q, k, v = (self.op("Reshape", [self.linear(x, f"{tag}.linear_{n}", d, d), shape]) for n in "qkv")
        scores = self.op("MatMul", [q, self.op("Transpose", [k], perm=[0, 2, 1])])
        scores = self.op("Div", [scores, self.const(f"{tag}.scale", np.array(d**0.5, np.float32))])
        scores = self.op("Where", [mask, self.const("fill", np.array(-10000.0, np.float32)), scores])
        attn = self.op("Where", [mask, self.const("zero_f", np.array(0.0, np.float32)),
                                 self.op("Softmax", [scores], axis=-1)])
        context = self.op("MatMul", [attn, v])
        return self.op("Add", [h, self.linear(context, f"{tag}.linear_out", d, d)])

    def conv_module(self, h: str, tag: str, d: int, mask: str, kernel: int = 5) -> str:
        x = self.op("Transpose", [self.norm(h, f"{tag}.norm", d)], perm=[0, 2, 1])
        pw1 = self.weight(f"{tag}.pw1", (2 * d, d, 1), d)
        pw1_bias = self.const(f"{tag}.pw1b", np.zeros(2 * d, np.float32))
        x = self.op("Conv", [x, pw1, pw1_bias])
        a, b = self.op("Split", [x], n_out=2, axis=1)
        x = self.op("Mul", [a, self.op("Sigmoid", [b])])
        x = self.op("Where", [mask, "zero_f", x])
        x = self.op("Pad", [x, self.const(f"{tag}.pads", np.array([0, 0, kernel // 2, 0, 0, kernel // 2], np.int64))])
        x = self.op("Conv", [x, self.weight(f"{tag}.dw", (d, 1, kernel), kernel)], group=d)
        x = self.op("Conv", [self.swish(x), self.weight(f"{tag}.pw2", (d, d, 1), d)])
        return self.op("Add", [h, self.op("Transpose", [x], perm=[0, 2, 1])])


def build_encoder(d_model: int = 64, layers: int = 2, channels: int = 8, seed: int = 0,
                  outlier_scale: float = 1.0, outlier_channels: int = 3) -> onnx.ModelProto:
    """The model proto (weights inline). outlier_scale multiplies a few channels of every LayerNorm
    that feeds MatMuls and divides the matching weight rows: fp32 outputs are unchanged."""
    g, d = _Builder(seed), d_model
    x = g.op("Unsqueeze", ["audio_signal", g.const("axes1", np.array([1], np.int64))])
    x = g.op("Transpose", [x], perm=[0, 1, 3, 2])
    for i, c_in in enumerate((1, channels)):
        kernel = g.weight(f"sub.conv{i}", (channels, c_in, 3, 3), 9 * c_in)
        x = g.op("Conv", [x, kernel, g.const(f"sub.conv{i}b", np.zeros(channels, np.float32))],
                 strides=[2, 2], pads=[1, 1, 1, 1])
        x = g.op("Relu", [x])
    x = g.op("Transpose", [x], perm=[0, 2, 1, 3])
    x = g.op("Reshape", [x, g.const("sub.shape", np.array([0, 0, channels * 32], np.int64))])
    h = g.linear(x, "sub.out", channels * 32, d)
    length = g.op("Cast", ["length"], to=TensorProto.FLOAT)
    for _ in range(2):  # NeMo's calc_length, in float: floor((L + 2 - 3) / 2 + 1) per stride-2 conv
        length = g.op("Add", [length, g.const("minus_one", np.array(-1.0, np.float32))])
        length = g.op("Div", [length, g.const("two", np.array(2.0, np.float32))])
        length = g.op("Floor", [g.op("Add", [length, g.const("one", np.array(1.0, np.float32))])])
    length = g.op("Cast", [length], to=TensorProto.INT64)
    g.const("axes0", np.array([0], np.int64))
    g.const("minus1_d", np.array([-1, d], np.int64))
    frames = g.op("Gather", [g.op("Shape", [h]), g.const("one_i", np.array(1, np.int64))], axis=0)
    steps = g.op("Range", [g.const("zero_i", np.array(0, np.int64)), frames, "one_i"])
    padded = g.op("Not", [g.op("Less", [g.op("Unsqueeze", [steps, "axes0"]),
                                         g.op("Unsqueeze", [length, g.const("axes1b", np.array([1], np.int64))])])])
    mask = g.op("Unsqueeze", [padded, "axes1b"])  # [B,1,T], True on padding
    for layer in range(layers):
        h = g.ffn(h, f"l{layer}.ffn1", d)
        h = g.attention(h, f"l{layer}.att", d, mask)
        h = g.conv_module(h, f"l{layer}.conv", d, mask)
        h = g.ffn(h, f"l{layer}.ffn2", d)
        h = g.norm(h, f"l{layer}.out", d)
    tied = g.weight("tied.weight", (d, d), d, gain=0.3)
    h = g.op("Add", [h, g.op("MatMul", [g.op("MatMul", [h, tied]), tied])])
    transposed = g.op("Transpose", [g.weight("transposed.weight", (d, d), d, gain=0.3)], perm=[1, 0])
    h = g.op("Add", [h, g.op("MatMul", [h, transposed])])
    g.nodes.append(helper.make_node("Transpose", [h], ["outputs"], name="out_transpose", perm=[0, 2, 1]))
    g.nodes.append(helper.make_node("Identity", [length], ["encoded_lengths"], name="lengths_out"))
    if outlier_scale != 1.0:
        _inject_outliers(g, layers, outlier_scale, outlier_channels, d)
    graph = helper.make_graph(
        g.nodes, "tiny_fastconformer",
        [helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, ["B", 128, "T"]),
         helper.make_tensor_value_info("length", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["B", d, "T2"]),
         helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["B"])],
        [numpy_helper.from_array(v, k) for k, v in g.inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)


def _inject_outliers(g: _Builder, layers: int, scale: float, n: int, d: int) -> None:
    for layer in range(layers):
        for block, readers in (("ffn1", ["linear1"]), ("att", ["linear_q", "linear_k", "linear_v"]),
                               ("ffn2", ["linear1"])):
            tag = f"l{layer}.{block}"
            chans = g.rng.choice(d, size=n, replace=False)
            g.inits[f"{tag}.norm.gamma"][chans] *= scale
            g.inits[f"{tag}.norm.beta"][chans] *= scale
            for reader in readers:
                g.inits[f"{tag}.{reader}.weight"][chans, :] /= scale


def save_encoder(model: onnx.ModelProto, folder: Path, name: str = "encoder-model.onnx") -> Path:
    """Save with all weights in one external data file, as upstream's fp32 encoder is."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.data", size_threshold=256)
    return path


def hard_linked_copy(model: Path, folder: Path) -> Path:
    """model's folder copied, then hard-linked file by file into folder, as DVC's hardlink cache leaves an
    output (every data file has two links); model's own files keep one. Returns model's path in folder."""
    copy = folder.with_name(f"{folder.name}-copy")
    shutil.copytree(model.parent, copy)
    folder.mkdir()
    for f in copy.iterdir():
        os.link(f, folder / f.name)
    return folder / model.name


def speechlike(seconds: float, seed: int, rate: int = 16_000) -> np.ndarray:
    """Harmonic tones with syllable-rate amplitude bursts, plus noise (a stand-in for speech)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)), 0, None) ** 2
    audio = rng.uniform(0.05, 0.5) * voice * envelope + rng.uniform(0.001, 0.02) * rng.standard_normal(t.size)
    return audio.astype(np.float32)


def write_windows(folder: Path, calib: int = 6, heldout: int = 2, seconds: float = 4.0, seed: int = 0) -> Path:
    """windows.npy + index.json in the windows stage's layout."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = ["calib"] * calib + ["heldout"] * heldout
    audio = np.stack([speechlike(seconds, seed * 1000 + i) for i in range(len(splits))])
    np.save(folder / "windows.npy", audio)
    index = [{"speaker": f"s{i % 3}", "start_s": 0.0, "split": split} for i, split in enumerate(splits)]
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def outlier_encoder_with_windows(root: Path) -> tuple[Path, Path]:
    """root/base: an encoder whose LayerNorms feed MatMuls through 30x outlier channels (as after Parakeet's),
    and root/windows: calibration and held-out windows for it; what the weight-only tests quantize."""
    return save_encoder(build_encoder(outlier_scale=30.0, seed=3), root / "base"), write_windows(root / "windows")


def build_decoder(d_model: int = 64, hidden: int = 32, vocab: int = 16, seed: int = 1) -> onnx.ModelProto:
    """A minimal decoder_joint with Parakeet's I/O names and types (int32 targets and lengths)."""
    g = _Builder(seed)
    emb = g.op("Gather", [g.weight("embed", (vocab, hidden), 1), "targets"])  # [B,U,H]
    frames = g.op("Transpose", ["encoder_outputs"], perm=[0, 2, 1])
    enc = g.op("MatMul", [frames, g.weight("enc", (d_model, hidden), d_model)])
    axes = {a: g.const(f"axis{a}", np.array([a], np.int64)) for a in (1, 2)}
    joint = g.op("Relu", [g.op("Add", [g.op("Unsqueeze", [enc, axes[2]]), g.op("Unsqueeze", [emb, axes[1]])])])
    out = g.weight("out", (hidden, vocab), hidden)
    g.nodes.append(helper.make_node("MatMul", [joint, out], ["outputs"], name="joint_out"))
    g.nodes.append(helper.make_node("Identity", ["target_length"], ["prednet_lengths"], name="lengths"))
    for i in (1, 2):
        g.nodes.append(helper.make_node("Tanh", [f"input_states_{i}"], [f"output_states_{i}"], name=f"state{i}"))
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    graph = helper.make_graph(
        g.nodes, "tiny_decoder_joint",
        [helper.make_tensor_value_info("encoder_outputs", f32, ["B", d_model, "T"]),
         helper.make_tensor_value_info("targets", i32, ["B", "U"]),
         helper.make_tensor_value_info("target_length", i32, ["B"]),
         *(helper.make_tensor_value_info(f"input_states_{i}", f32, [1, "B", hidden]) for i in (1, 2))],
        [helper.make_tensor_value_info("outputs", f32, ["B", "T", "U", vocab]),
         helper.make_tensor_value_info("prednet_lengths", i32, ["B"]),
         *(helper.make_tensor_value_info(f"output_states_{i}", f32, [1, "B", hidden]) for i in (1, 2))],
        [numpy_helper.from_array(v, k) for k, v in g.inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
