"""The demo model in the other upstream layouts, derived from demo/model at run time (no weights in git).

- RNN-T: the TDT decoder_joint without its five duration logits. The joint was trained for TDT, so as an
  RNN-T it is a different decoder of the same encoder, not a trained one: its transcripts are what int8
  is scored against (the fp32 references), and its accuracy against the truth says nothing of RNN-T.
- CTC: one graph, the demo encoder with a head in NeMo's form (1x1 Conv1d, log-softmax). The head is the
  TDT joint with its prediction network held at the start state (enc_proj, ReLU, out), as two 1x1 convs.
  A character model at 12.5 encoder frames a second cannot be a CTC model (speech runs at ~22 characters
  a second), so its output is no transcript; it exercises the split, the encoder transforms around the head
  and the join, and int8 is scored against the fp32 head's own output.
Stock int8 files as upstream makes them: onnxruntime's quantize_dynamic with its defaults, of the whole graph.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import quantize_dynamic

from requant import onnx_graph as og
from requant.layouts import CTC_MODEL, CTC_OUTPUT, DECODER_JOINT, ENCODER, LAYOUTS

JOINT_OUT = "/joint/out/MatMul"  # the demo joint's output layer (demo.fastconformer's export names)
PRED_PROJ = "/joint/pred_proj/Add_output_0"


def write_demo_layout(demo_dir: Path, layout: str, out: Path) -> None:
    """The upstream files of `layout` (config, vocab and model files; no preprocessor) from the TDT demo."""
    for name in ("vocab.txt", *(LAYOUTS["tdt"].upstream if layout == "tdt" else ())):
        shutil.copyfile(demo_dir / name, out / name)
    config = json.loads((demo_dir / "config.json").read_text(encoding="utf-8"))
    (out / "config.json").write_text(json.dumps({**config, "model_type": LAYOUTS[layout].model_type}, indent=4),
                                     encoding="utf-8")
    if layout == "rnnt":
        for name in (f"{ENCODER}.onnx", f"{ENCODER}.onnx.data", f"{ENCODER}.int8.onnx"):
            shutil.copyfile(demo_dir / name, out / name)
        decoder = _without_durations(onnx.load(str(demo_dir / f"{DECODER_JOINT}.onnx")), _vocab_size(demo_dir))
        onnx.save_model(decoder, str(out / f"{DECODER_JOINT}.onnx"))
        quantize_dynamic(str(out / f"{DECODER_JOINT}.onnx"), str(out / f"{DECODER_JOINT}.int8.onnx"))
    elif layout == "ctc":
        _ctc_model(demo_dir, out / f"{CTC_MODEL}.onnx")
        quantize_dynamic(str(out / f"{CTC_MODEL}.onnx"), str(out / f"{CTC_MODEL}.int8.onnx"))


def _vocab_size(demo_dir: Path) -> int:
    return len((demo_dir / "vocab.txt").read_text(encoding="utf-8").splitlines())


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _linear(model: onnx.ModelProto, matmul: str) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    """A joint layer's weight [in, out] and bias [out]: the named MatMul's initializer and its Add's."""
    node = next(n for n in model.graph.node if n.name == matmul)
    add = og.consumers(model.graph)[node.output[0]][0][0]
    inits = _initializers(model)
    return inits[node.input[1]], inits[next(name for name in add.input if name in inits)]


def _out_layer(model: onnx.ModelProto) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    """The joint's output weight [J, V+5] and bias [V+5]."""
    return _linear(model, JOINT_OUT)


def _without_durations(model: onnx.ModelProto, vocab: int) -> onnx.ModelProto:
    for tensor in _out_layer(model):
        values = numpy_helper.to_array(tensor)[..., :vocab]
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(values), tensor.name))
    for value in [*model.graph.output, *model.graph.value_info]:  # declared shapes: V+5 -> V logits
        dims = value.type.tensor_type.shape.dim
        if value.name == "outputs" or (dims and dims[-1].dim_value == vocab + 5):
            dims[-1].dim_value = vocab
    return model


def _start_state_projection(decoder: onnx.ModelProto, blank: int, width: int) -> np.ndarray:
    """The prediction network's projected output after the blank start token from zero states."""
    probe = onnx.ModelProto()
    probe.CopyFrom(decoder)
    probe.graph.output.append(helper.make_tensor_value_info(PRED_PROJ, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = {i.name: i.shape for i in session.get_inputs()}["input_states_1"]
    state = np.zeros((shape[0], 1, shape[2]), np.float32)
    (projected,) = session.run([PRED_PROJ], {
        "encoder_outputs": np.zeros((1, width, 1), np.float32), "targets": np.array([[blank]], np.int32),
        "target_length": np.array([1], np.int32), "input_states_1": state, "input_states_2": state})
    return projected.reshape(-1)


def _ctc_model(demo_dir: Path, dst: Path) -> None:
    encoder = og.load_graph(demo_dir / f"{ENCODER}.onnx")
    decoder = onnx.load(str(demo_dir / f"{DECODER_JOINT}.onnx"))
    vocab = _vocab_size(demo_dir)
    width = encoder.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    w_enc, b_enc = (numpy_helper.to_array(t) for t in _linear(decoder, "/joint/enc_proj/MatMul"))
    w_out, b_out = (numpy_helper.to_array(t)[..., :vocab] for t in _out_layer(decoder))
    b_hidden = b_enc + _start_state_projection(decoder, vocab - 1, width)
    weights = {"decoder_layers.0.weight": w_enc.T[:, :, None], "decoder_layers.0.bias": b_hidden,
               "decoder_layers.2.weight": w_out.T[:, :, None], "decoder_layers.2.bias": b_out}
    head = [helper.make_node("Conv", ["outputs", "decoder_layers.0.weight", "decoder_layers.0.bias"], ["/decoder/h"],
                             name="/decoder/decoder_layers.0/Conv", kernel_shape=[1]),
            helper.make_node("Relu", ["/decoder/h"], ["/decoder/r"], name="/decoder/decoder_layers.1/Relu"),
            helper.make_node("Conv", ["/decoder/r", "decoder_layers.2.weight", "decoder_layers.2.bias"], ["/decoder/c"],
                             name="/decoder/decoder_layers.2/Conv", kernel_shape=[1]),
            helper.make_node("Transpose", ["/decoder/c"], ["/decoder/t"], name="/decoder/Transpose", perm=[0, 2, 1]),
            helper.make_node("LogSoftmax", ["/decoder/t"], [CTC_OUTPUT], name="/decoder/LogSoftmax", axis=-1)]
    graph = encoder.graph
    graph.node.extend(head)
    graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k) for k, v in weights.items())
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(CTC_OUTPUT, onnx.TensorProto.FLOAT, ["batch", "frames", vocab]))
    og.drop_dead_nodes(graph)
    og.write_model(encoder, demo_dir, dst)
