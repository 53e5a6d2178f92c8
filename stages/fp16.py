"""A naive fp16 cast of the encoder and the decoder/joint, keeping float32 inputs and outputs.

onnxruntime's float16 converter works from the model path (shape inference without the 2 GB proto
limit). onnx-asr feeds float32 features and int64 lengths, so the I/O types must not change.
Arithmetic on lengths and positions stays fp32 (requant.patterns.fp32_islands): NeMo's export computes
encoded lengths in float, and fp16 cannot count past 2048 frames exactly. The CPU EP hides that fault
(it runs those ops in fp32); WebGPU and CUDA, with fp16 kernels, return wrong lengths.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

from requant import onnx_graph as og
from requant import patterns
from requant.common import atomic_path, fail, run_cli

log = logging.getLogger(__name__)

BASE_DIR = Path("models/base")
OUT_DIR = Path("models/variants/fp16")
MODELS = {"encoder-model.onnx": "encoder-model.fp16.onnx", "decoder_joint-model.onnx": "decoder_joint-model.fp16.onnx"}


def to_fp16(src: Path, dst: Path) -> list[Path]:
    """Cast src to fp16 at dst (one file if small, else with dst.data); return the files written."""
    og.require_single_links(src)  # also a clear error if the input is missing
    keep_fp32 = patterns.fp32_islands(og.load_graph(src))
    if any(not name for name in keep_fp32):
        fail(f"{src}: an unnamed node computes lengths or positions in float and cannot be kept in fp32")
    log.info("%s: %d nodes of length/position arithmetic kept in fp32", src.name, len(keep_fp32))
    model = convert_float_to_float16(str(src), keep_io_types=True, node_block_list=keep_fp32)
    log.info("%s: %d fp16 round trips between fp32 nodes removed", src.name, drop_round_trips(model, set(keep_fp32)))
    if model.ByteSize() < og.SELF_CONTAINED_BELOW:
        dst.write_bytes(model.SerializeToString())
        return [dst]
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data")  # dst's folder is fresh: no stale .data to append to
    return [dst, dst.with_name(f"{dst.name}.data")]


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
        written = [f for src, dst in MODELS.items() for f in to_fp16(base_dir / src, tmp / dst)]
        names = [f.name for f in written]
    log.info("fp16 models: %s", names)
    return [dst_dir / name for name in names]


def main() -> None:
    build_fp16(BASE_DIR, OUT_DIR)


if __name__ == "__main__":
    run_cli(main)
