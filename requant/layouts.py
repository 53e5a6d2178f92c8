"""The model layouts the pipeline takes: TDT and RNN-T (an encoder file beside a decoder_joint file) and CTC
(one graph: the encoder with its head).

Every transform works on an encoder file with Parakeet's encoder I/O. A CTC model is therefore split where
its encoder ends (the Transpose after the last LayerNormalization, NeMo's [B, D, T] encoder output): the
encoder part goes where a transducer's encoder goes and is quantized like one, the head (Conv1d 1x1 and
log-softmax) is kept in the decoder's place, `ctc_head-model*.onnx`, and never quantized. Joined again, it
is the single `model*.onnx` that onnx-asr loads (join_ctc).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from requant import onnx_graph as og
from requant.common import fail, read_json

ENCODER, DECODER_JOINT, CTC_HEAD, CTC_MODEL = "encoder-model", "decoder_joint-model", "ctc_head-model", "model"
HEAD_INPUT, CTC_OUTPUT = "encoder_outputs", "logprobs"


@dataclass(frozen=True)
class Layout:
    model_type: str  # config.json's, which onnx-asr reads to pick its model class
    upstream: tuple[str, ...]  # the repository's model files (config, vocab and preprocessor apart)
    decoder: str  # the file stem of what follows the encoder, in models/base (requant.params.BEAM_SEARCH: which
    # layouts the beam search takes)


LAYOUTS = {
    "tdt": Layout("nemo-conformer-tdt", (f"{ENCODER}.onnx", f"{ENCODER}.onnx.data", f"{ENCODER}.int8.onnx",
                                         f"{DECODER_JOINT}.onnx", f"{DECODER_JOINT}.int8.onnx"), DECODER_JOINT),
    "rnnt": Layout("nemo-conformer-rnnt", (f"{ENCODER}.onnx", f"{ENCODER}.onnx.data", f"{ENCODER}.int8.onnx",
                                           f"{DECODER_JOINT}.onnx", f"{DECODER_JOINT}.int8.onnx"), DECODER_JOINT),
    "ctc": Layout("nemo-conformer-ctc", (f"{CTC_MODEL}.onnx", f"{CTC_MODEL}.onnx.data", f"{CTC_MODEL}.int8.onnx"),
                  CTC_HEAD),
}
BY_MODEL_TYPE = {layout.model_type: name for name, layout in LAYOUTS.items()}


def layout_of(model_dir: Path) -> str:
    """The layout of a model folder, from its config.json (as onnx-asr decides)."""
    config = model_dir / "config.json"
    if not config.is_file():
        fail(f"{config} is missing; run `dvc repro base_model` first")
    try:
        model_type = read_json(config).get("model_type")
    except (ValueError, AttributeError):
        model_type = None
    if model_type not in BY_MODEL_TYPE:
        fail(f"{config}: model_type {model_type!r} is not one the pipeline takes ({', '.join(BY_MODEL_TYPE)})")
    return BY_MODEL_TYPE[model_type]


def decoder_name(name: str, layout: str) -> str:
    """A decoder file's name in a layout: `decoder_joint-model.int8.onnx` is `ctc_head-model.int8.onnx` for CTC."""
    return name.replace(DECODER_JOINT, LAYOUTS[layout].decoder, 1)


def preprocessor_name(model_dir: Path) -> str:
    """onnx-asr's preprocessor for the model's features_size: nemo128 (TDT v2, v3) or nemo80 (RNN-T, CTC 0.6B)."""
    return f"nemo{read_json(model_dir / 'config.json').get('features_size', 80)}"


# --- CTC: split at the encoder's end, and joined again ------------------------------------------


def ctc_boundary(graph: onnx.GraphProto) -> str:
    """The encoder's [B, D, T] output inside a CTC graph: the Transpose that reads the last LayerNormalization."""
    norms = [node for node in graph.node if node.op_type == "LayerNormalization"]
    readers = og.consumers(graph)[norms[-1].output[0]] if norms else []
    ends = [node for node, _ in readers if node.op_type == "Transpose"]
    if len(ends) != 1:
        fail("the CTC graph has no Transpose after its last LayerNormalization: cannot find where its encoder "
             "ends (NeMo's export puts the [B, D, T] encoder output there); `python -m tools.census` shows the graph")
    return ends[0].output[0]


def _lengths(graph: onnx.GraphProto) -> str:
    """The encoder's frame count per item: NeMo's calc_length ends in a Cast to int64 of a Floor chain on `length`."""
    for node in graph.node:
        if node.op_type == "Cast" and helper.get_attribute_value(node.attribute[0]) == onnx.TensorProto.INT64:
            chain = og.upstream(graph, node.output[0])
            if any(n.op_type == "Floor" for n in chain) and any("length" in n.input for n in chain):
                return node.output[0]
    fail("the CTC graph computes no encoder length (a Cast to int64 after Floor, from `length`): not a NeMo export")
    raise AssertionError  # fail() raised


def split_ctc(src: Path, dst_dir: Path, suffix: str = "", boundary: str | None = None) -> str:
    """src (model*.onnx) -> dst_dir/encoder-model{suffix}.onnx + ctc_head-model{suffix}.onnx, weights streamed.

    Returns the boundary tensor, so that the stock int8 file is cut where the fp32 one was."""
    model = og.load_graph(src)
    graph = model.graph
    og.name_nodes(graph)  # quantize_dynamic leaves nodes unnamed, and the parts are told apart by node name
    if [o.name for o in graph.output] != [CTC_OUTPUT]:
        fail(f"{src}: outputs are {[o.name for o in graph.output]}; a NeMo CTC export has '{CTC_OUTPUT}' only")
    boundary = boundary or ctc_boundary(graph)
    if boundary not in og.producers(graph):
        fail(f"{src}: no tensor '{boundary}' (where the fp32 model's encoder ends); is it the same model?")
    lengths = _lengths(graph)
    encoder_nodes = {n.name for n in og.upstream(graph, boundary) + og.upstream(graph, lengths)}
    head_nodes = og.upstream(graph, CTC_OUTPUT, stop=boundary)
    if any(n.name in encoder_nodes for n in head_nodes):
        fail(f"{src}: its head shares nodes with the encoder; the pipeline splits only NeMo's Conv1d + log-softmax head")
    ends = {"outputs": boundary, "encoded_lengths": lengths}
    encoder = [n for n in graph.node if n.name in encoder_nodes] + [
        helper.make_node("Identity", [source], [name], name=f"/split/{name}")
        for name, source in ends.items() if source != name]
    float_out = [helper.make_tensor_value_info("outputs", onnx.TensorProto.FLOAT, ["batch", "dim", "frames"]),
                 helper.make_tensor_value_info("encoded_lengths", onnx.TensorProto.INT64, ["batch"])]
    _write_part(model, encoder, list(graph.input), float_out, src.parent, dst_dir / f"{ENCODER}{suffix}.onnx")
    head = [_renamed(node, boundary, HEAD_INPUT) for node in head_nodes]
    head_in = [helper.make_tensor_value_info(HEAD_INPUT, onnx.TensorProto.FLOAT, ["batch", "dim", "frames"])]
    _write_part(model, head, head_in, list(graph.output), src.parent, dst_dir / f"{CTC_HEAD}{suffix}.onnx",
                inline=True)
    return boundary


def _renamed(node: onnx.NodeProto, old: str, new: str) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.input[:] = [new if name == old else name for name in node.input]
    return copy


def _write_part(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list, outputs: list,
                src_dir: Path, dst: Path, inline: bool = False) -> None:
    """One part of the graph at dst; inline: its weights inside the file (a head of a few MB, so that a joined
    graph in any folder finds them), else streamed into dst.data."""
    read = {name for node in nodes for name in node.input}
    known = {i.name for i in inputs} | {o for n in nodes for o in n.output}
    inits = [t for t in model.graph.initializer if t.name in read]
    loose = sorted(read - known - {t.name for t in inits} - {""})
    if loose:
        fail(f"{dst.name}: its nodes read {loose[:3]} from the other part of the CTC graph; cannot split it there")
    graph = helper.make_graph(nodes, dst.stem, inputs, outputs, inits)
    part = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    part.graph.value_info.extend(v for v in model.graph.value_info if v.name in known)
    if inline:
        for tensor in part.graph.initializer:
            if og.is_external(tensor):
                tensor.CopyFrom(numpy_helper.from_array(og.read_tensor(tensor, src_dir), tensor.name))
        dst.write_bytes(part.SerializeToString())
    else:
        og.write_model(part, src_dir, dst)


def _rename_clashes(graph: onnx.GraphProto, taken: set[str]) -> None:
    """Give the head's node, tensor and weight names that the encoder also uses a prefix of their own (two fp16
    casts both name their I/O casts `graph_input_cast0`); its input and output keep their names."""
    kept = {HEAD_INPUT, *(o.name for o in graph.output)}
    clash = (taken & ({t.name for t in graph.initializer} | {o for n in graph.node for o in n.output})) - kept

    def new(name: str) -> str:
        return f"/ctc_head/{name}" if name in clash else name

    for tensor in graph.initializer:
        tensor.name = new(tensor.name)
    for node in graph.node:
        node.input[:] = [new(name) for name in node.input]
        node.output[:] = [new(name) for name in node.output]
        node.name = f"/ctc_head/{node.name}" if node.name in taken else node.name
    for info in graph.value_info:
        info.name = new(info.name)


def join_ctc(encoder: Path, head: Path, dst: Path) -> None:
    """encoder + head -> one CTC graph at dst, in the folder that holds (links to) both parts' external data:
    the graph names its data files, so none is copied."""
    enc, top = og.load_graph(encoder), og.load_graph(head)
    _rename_clashes(top.graph, {n.name for n in enc.graph.node} | {t.name for t in enc.graph.initializer}
                    | {o for n in enc.graph.node for o in n.output})
    # the head reads the tensor the encoder's output is an Identity of (split's), as in the graph it was cut from:
    # onnxruntime fuses across the cut only then, and the stock int8 file joined again gives its own bits
    end = og.producers(enc.graph)["outputs"]
    source = end.input[0] if end.op_type == "Identity" else "outputs"
    nodes = [*enc.graph.node, *(_renamed(node, HEAD_INPUT, source) for node in top.graph.node)]
    graph = helper.make_graph(nodes, "ctc", list(enc.graph.input), list(top.graph.output),
                              [*enc.graph.initializer, *top.graph.initializer])
    opsets = {o.domain: o.version for o in [*top.opset_import, *enc.opset_import]}
    joined = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                               ir_version=max(enc.ir_version, top.ir_version))
    # shapes known in the parts: onnxruntime fuses Add + LayerNormalization only where it knows them
    joined.graph.value_info.extend([*enc.graph.value_info, *top.graph.value_info])
    og.drop_dead_nodes(joined.graph)  # the encoder's length output: onnx-asr computes lengths itself for CTC
    dst.write_bytes(joined.SerializeToString())
