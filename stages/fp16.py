"""A naive fp16 cast of the encoder and the decoder/joint, keeping float32 inputs and outputs.

onnxruntime's float16 converter runs on the graph alone (its weights stay on disk) and each weight is then
cast and set one at a time, so the fp32 model is never whole in memory. onnx-asr feeds float32 features and int64 lengths, so the I/O types must not change.
Arithmetic on lengths and positions stays fp32 (requant.patterns.fp32_islands): NeMo's export computes
encoded lengths in float, and fp16 cannot count past 2048 frames exactly. The CPU EP hides that fault
(it runs those ops in fp32); WebGPU and CUDA, with fp16 kernels, return wrong lengths.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import helper
from onnxruntime.transformers import float16
from onnxruntime.transformers.float16 import convert_float_to_float16
from tqdm import tqdm

from requant import onnx_graph as og
from requant import patterns
from requant.common import atomic_path, fail, run_cli
from requant.layouts import decoder_name, layout_of

log = logging.getLogger(__name__)

BASE_DIR = Path("models/base")
OUT_DIR = Path("models/variants/fp16")
MODELS = {"encoder-model.onnx": "encoder-model.fp16.onnx", "decoder_joint-model.onnx": "decoder_joint-model.fp16.onnx"}


def to_fp16(src: Path, dst: Path) -> list[Path]:
    """Cast src to fp16 at dst (one file if small, else with dst.data); return the files written."""
    weightless = og.load_graph(src)  # also a clear error if the input is missing (weights: og.read_tensor)
    keep_fp32 = patterns.fp32_islands(weightless)
    if any(not name for name in keep_fp32):
        fail(f"{src}: an unnamed node computes lengths or positions in float and cannot be kept in fp32")
    log.info("%s: %d nodes of length/position arithmetic kept in fp32", src.name, len(keep_fp32))
    model = convert_weightless(weightless, src.parent, keep_fp32)
    log.info("%s: %d fp16 round trips between fp32 nodes removed", src.name, drop_round_trips(model, set(keep_fp32)))
    # the weights' bytes from their dims: ByteSize() serializes the whole model (2.5 GB more at Parakeet size)
    if sum(og.tensor_nbytes(t) for t in model.graph.initializer) < og.SELF_CONTAINED_BELOW:
        dst.write_bytes(model.SerializeToString())
        return [dst]
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data")  # dst's folder is fresh: no stale .data to append to
    return [dst, dst.with_name(f"{dst.name}.data")]


def convert_weightless(model: onnx.ModelProto, base_dir: Path, keep_fp32: list[str]) -> onnx.ModelProto:
    """onnxruntime's converter on the graph with its external weights left on disk, then each weight read,
    cast with the converter's own convert_np_to_float16 and set in place one at a time: the fp32 model is
    never whole in memory (at Parakeet size 6.5 GB peak before, the fp16 weights' 1.2 GB after). The result
    is the model convert_float_to_float16(path) returns, the same bytes once saved."""
    originals = {t.name: (t.data_type, dict(og.external_info(t))) for t in model.graph.initializer if og.is_external(t)}
    # the shapes the converter infers from the path, inferred here on the graph (weights need only their dims)
    model = onnx.shape_inference.infer_shapes(model)
    with _shapes_from_dims():
        model = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep_fp32,
                                         disable_shape_infer=True)
    for tensor in tqdm([t for t in model.graph.initializer if t.name in originals], desc="fp16 weights",
                       unit="tensor"):
        source = onnx.TensorProto()
        source.CopyFrom(tensor)
        source.data_type = originals[tensor.name][0]
        values = og.read_tensor(source, base_dir)
        if tensor.data_type == onnx.TensorProto.FLOAT16 and source.data_type == onnx.TensorProto.FLOAT:
            values = float16.convert_np_to_float16(values)  # the converter's clamping, as it casts raw data
        tensor.raw_data = values.tobytes()
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return model


@contextlib.contextmanager
def _shapes_from_dims() -> Iterator[None]:
    """The converter describes each cast initializer by numpy_helper.to_array(t).shape, which would load an
    external weight from the working directory; its dims say the same without reading a byte."""
    original = float16.make_value_info_from_tensor
    float16.make_value_info_from_tensor = lambda t: helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
    try:
        yield
    finally:
        float16.make_value_info_from_tensor = original


def drop_round_trips(model: onnx.ModelProto, kept: set[str]) -> int:
    """Connect kept fp32 nodes directly. The converter casts every float output of a blocked node to fp16
    and back to fp32 before the next blocked node reads it: one fp16 rounding per step of the length
    chain, the very fault the block list is there to prevent. Returns the Casts removed."""
    graph = model.graph
    makers, users = og.producers(graph), og.consumers(graph)
    outputs = {o.name for o in graph.output}
    dropped: set[str] = set()
    for cast in graph.node:
        maker = makers.get(cast.input[0]) if cast.op_type == "Cast" else None
        if maker is None or maker.name not in kept or _cast_to(cast) != onnx.TensorProto.FLOAT16:
            continue
        readers = users[cast.output[0]]
        for back, _ in readers:
            if back.op_type == "Cast" and _cast_to(back) == onnx.TensorProto.FLOAT and back.output[0] not in outputs:
                for reader, index in users[back.output[0]]:
                    reader.input[index] = cast.input[0]
                dropped.add(back.name)
        if all(back.name in dropped for back, _ in readers) and cast.output[0] not in outputs:
            dropped.add(cast.name)
    kept_nodes = [node for node in graph.node if node.name not in dropped]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    return len(dropped)


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def build_fp16(base_dir: Path, dst_dir: Path) -> list[Path]:
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir()
        # a CTC model's head (requant/layouts.py) is cast where a transducer's decoder_joint is
        layout = layout_of(base_dir) if (base_dir / "config.json").is_file() else "tdt"
        written = [f for src, dst in MODELS.items()
                   for f in to_fp16(base_dir / decoder_name(src, layout), tmp / decoder_name(dst, layout))]
        names = [f.name for f in written]
    log.info("fp16 models: %s", names)
    return [dst_dir / name for name in names]


def main() -> None:
    build_fp16(BASE_DIR, OUT_DIR)


if __name__ == "__main__":
    run_cli(main)
