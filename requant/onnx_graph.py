"""ONNX graphs and their weights for the transform stages: graphs without weight bytes, MatMul classes,
streamed external data, and models written tensor by tensor (sessions and encoder runs: encoder_runs.py).

Parakeet's fp32 encoder is 2.4 GB, above protobuf's 2 GB limit, so nothing here loads all weights into
one proto: graphs are read without their external data, tensors are read one at a time, and models are
written by streaming each tensor's bytes into fresh data files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from requant.common import copy_file, fail

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1  # bytes: the largest single .onnx file protobuf can write or read
CHUNK = 16 << 20  # bytes per read/write when copying tensor data
# Bytes: smaller models are written as one .onnx file, larger ones keep their weights in a .data file.
# onnxruntime parses a one-file model whole, and glibc keeps the freed parse buffers: the Parakeet-size
# int8 encoder (840 MB) sat at 1.93 GB RSS after loading as one file, 0.71 GB from external data.
SELF_CONTAINED_BELOW = 256 << 20


# --- graphs and tensors -------------------------------------------------------------------------


def load_graph(path: Path) -> onnx.ModelProto:
    """The model proto without external weight bytes (read them with read_tensor), after checking that the
    file exists and that every external-data file holds the bytes its tensors claim: a missing input or a
    truncated copy (a full disk, a killed copy) gets one line here instead of a traceback in onnxruntime."""
    path = Path(path)
    if not path.is_file():
        fail(f"{path} not found; run the stage that produces it first (`dvc repro` runs every stage it needs)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types for a broken file
        fail(f"{path}: not a readable ONNX model ({type(err).__name__}); rerun the stage that produces it")
    claimed: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if is_external(tensor):
            info = external_info(tensor)
            end = int(info.get("offset", 0)) + int(info.get("length", tensor_nbytes(tensor)))
            claimed[info["location"]] = max(claimed.get(info["location"], 0), end)
    for location, end in claimed.items():
        data = path.parent / location
        size = data.stat().st_size if data.is_file() else None
        if size is None or size < end:
            found = "is missing" if size is None else f"holds {size} bytes"
            fail(f"{data}: {found}, but {path.name}'s tensors need {end}: the file is truncated; rerun the stage "
                 "that produces it (or download the model again)")
    return model


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def read_tensor(tensor: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    """One initializer as a (read-only) array, from its external file under base_dir if it has one.

    Read directly rather than through onnx, which refuses data files that have several hard links."""
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    info, size = external_info(tensor), tensor_nbytes(tensor)
    with open(Path(base_dir) / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        raw = f.read(int(info.get("length", size)))
    if len(raw) != size:
        fail(f"{Path(base_dir) / info['location']} holds {len(raw)} of tensor {tensor.name}'s {size} bytes: truncated")
    return np.frombuffer(raw, dtype=helper.tensor_dtype_to_np_dtype(tensor.data_type)).reshape(tuple(tensor.dims))


def onnx_readable(path: Path, scratch: Path) -> Path:
    """path, or where one of its external data files has several hard links, a private copy of the model
    in scratch. onnx (and so onnxruntime's quantizers, which take a path) refuses such data ("possible
    hardlink attack"), and DVC's hardlink cache (.dvc/config) links every output it tracks. The copy shares
    blocks where the filesystem can (copy_file_range) and goes with scratch."""
    path = Path(path)
    files = data_files(load_graph(path), path.parent)  # load_graph: also a clear error if path is missing
    if all(data.stat().st_nlink == 1 for data in files):
        return path
    private = Path(tempfile.mkdtemp(prefix="unlinked-", dir=scratch))
    for source in (path, *files):
        dest = private / source.relative_to(path.parent)
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_file(source, dest)
    log.info("%s: external data with several hard links, read from a private copy", path)
    return private / path.name


def data_files(model: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """The external data files a model refers to, in order of first use."""
    names = dict.fromkeys(external_info(t)["location"] for t in model.graph.initializer if is_external(t))
    return [Path(base_dir) / name for name in names]


def model_size(path: Path) -> int:
    """Bytes of a model file plus its external data."""
    return Path(path).stat().st_size + sum(f.stat().st_size for f in data_files(load_graph(path), Path(path).parent))


def consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """Tensor name -> (node, input index) of every node reading it."""
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                users[name].append((node, index))
    return users


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def upstream(graph: onnx.GraphProto, tensor: str, stop: str = "") -> list[onnx.NodeProto]:
    """The nodes that compute `tensor` (not looking past `stop`, a tensor fed from outside), in graph order."""
    makers = producers(graph)
    needed, pending = set(), [tensor]
    while pending:
        node = makers.get(pending.pop())
        if node is not None and node.name not in needed:
            needed.add(node.name)
            pending.extend(name for name in node.input if name and name != stop)
    return [node for node in graph.node if node.name in needed]


def extract(model: onnx.ModelProto, target: str, source: str = "") -> onnx.ModelProto:
    """`target` and the nodes computing it, from the float input `source` (or from constants alone), as a
    model of its own with the initializers it reads. (onnx's Extractor needs inferred shapes, which the
    encoder's Reshapes lack.)"""
    nodes = upstream(model.graph, target, source)
    read = {name for node in nodes for name in node.input}
    inputs = [helper.make_tensor_value_info(source, onnx.TensorProto.FLOAT, None)] if source else []
    output = helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "extract", inputs, [output], [t for t in model.graph.initializer if t.name in read])
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


class NewNodes:
    """Nodes for a rewrite, kept in order: each output is named prefix + name, so that nodes added to a
    graph, or written into a Loop body, never shadow a name of the graph around them."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes = prefix, []

    def op(self, kind: str, inputs: Sequence[str], name: str, **attrs: object) -> str:
        out = f"{self.prefix}{name}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], name=out, **attrs))
        return out

    def ints(self, name: str, values: int | Sequence[int]) -> str:
        """An int64 Constant (a scalar for an int, a 1-D tensor for a list)."""
        return self.op("Constant", [], name, value=numpy_helper.from_array(np.array(values, np.int64),
                                                                         f"{self.prefix}{name}"))


def stacked_body(new: NewNodes, out: str, rows: str, block: int, axis: int, rank: int, name: str,
                 initializers: Sequence[onnx.TensorProto] = ()) -> onnx.GraphProto:
    """A Loop body (inputs i and cond, `new`'s nodes) whose scan output is `out`, `rows` long on `axis`, padded
    with zeros to `block`: every turn gives the same shape, so onnxruntime stacks the turns once at the Loop's
    end. (A carried output grown by a Concat is copied at every turn: quadratic in the pass length.)"""
    missing = new.op("Sub", [new.ints("full", [block]), rows], "missing")
    pads = new.op("Concat", [new.ints("pads_head", [0] * (rank + axis)), missing,
                             new.ints("pads_tail", [0] * (rank - 1 - axis))], "out_pads", axis=0)
    new.op("Pad", [out, pads], "block_out")
    new.op("Identity", [f"{new.prefix}cond"], "cond_out")
    inputs = [helper.make_tensor_value_info(f"{new.prefix}i", onnx.TensorProto.INT64, []),
              helper.make_tensor_value_info(f"{new.prefix}cond", onnx.TensorProto.BOOL, [])]
    outputs = [helper.make_tensor_value_info(f"{new.prefix}cond_out", onnx.TensorProto.BOOL, []),
               helper.make_tensor_value_info(f"{new.prefix}block_out", onnx.TensorProto.FLOAT, None)]
    return helper.make_graph(new.nodes, name, inputs, outputs, list(initializers))


def stacked_loop(new: NewNodes, body: onnx.GraphProto, length: str, block: int, axis: int, rank: int,
                 out: str) -> None:
    """Add to `new` a Loop of ceil(length / block) turns of `body` (a stacked_body) and the nodes that lay its
    stacked turns [n, ..., block, ...] back along `axis` of a rank-`rank` tensor, cropped to `length` ([1]
    int64): the tensor `out`."""
    count = new.op("Squeeze", [new.op("Div", [new.op("Add", [length, new.ints("up", [block - 1])], "T_up"),
                                              new.ints("per", [block])], "blocks"), new.ints("zero", [0])], "count")
    true = new.op("Constant", [], "true", value=numpy_helper.from_array(np.array(True), f"{new.prefix}true"))
    turns = new.op("Loop", [count, true], "loop", body=body)
    joined = new.op("Transpose", [turns], "joined", perm=[*range(1, axis + 1), 0, *range(axis + 1, rank + 1)])
    tail = new.op("Shape", [turns], "tail", start=axis + 2)
    flat = new.op("Reshape", [joined, new.op("Concat", [new.ints("keep", [0] * axis + [-1]), tail], "flat_shape",
                                             axis=0)], "flat")
    new.nodes.append(helper.make_node("Slice", [flat, new.ints("from", [0]), length, new.ints("axis", [axis])],
                                      [out], name=f"{new.prefix}crop"))


def opset_of(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def reduce_nodes(kind: str, data: str, out: str, axes: Sequence[int], opset: int, keepdims: int) -> list[onnx.NodeProto]:
    """A Reduce* node over `axes`: an attribute up to opset 17, a constant input from 18."""
    if opset >= 18:
        axes_name = f"{out}/axes"
        return [helper.make_node("Constant", [], [axes_name], name=axes_name,
                                 value=helper.make_tensor(axes_name, onnx.TensorProto.INT64, [len(axes)], list(axes))),
                helper.make_node(kind, [data, axes_name], [out], name=out, keepdims=keepdims)]
    return [helper.make_node(kind, [data], [out], name=out, axes=list(axes), keepdims=keepdims)]


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of an initializer or a Constant node's tensor output; None for anything computed."""
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].type == onnx.AttributeProto.TENSOR \
                else None
    return None


def insert_before_first_reader(graph: onnx.GraphProto, tensor: str, nodes: list[onnx.NodeProto]) -> None:
    """Put the nodes computing `tensor` where its first reader is: everything they read comes before."""
    position = min((i for i, n in enumerate(graph.node) if tensor in n.input), default=len(graph.node))
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node reads, Loop and If bodies included (they read outer-scope names too)."""
    return {name for node in graph.node for name in node.input} | {
        name for node in graph.node for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH
        for name in _names_read(attr.g)}


def drop_orphan_constants(graph: onnx.GraphProto) -> None:
    """Remove Constant nodes nothing reads any more (after a rewrite replaced their readers)."""
    read = _names_read(graph) | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in read]:
        graph.node.remove(node)


def drop_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove every node none of whose outputs is read (repeatedly): onnxruntime would still run them, and a
    rewrite that replaced their readers (a [B, 1, T, T] mask) must not keep paying for them."""
    removed = 0
    while True:
        read = _names_read(graph) | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(name in read for name in n.output if name)]
        if not dead:
            return removed
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)


def name_nodes(graph: onnx.GraphProto) -> int:
    """Give every unnamed node a unique, deterministic name (quantizers exclude nodes by name)."""
    taken = {node.name for node in graph.node if node.name}
    named = 0
    for index, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)
            named += 1
    return named


def classify_matmuls(graph: onnx.GraphProto) -> dict[str, str]:
    """MatMul name -> 'weighted' (a private constant 2-D float32 weight, smoothable) or why not."""
    inits = {t.name: t for t in graph.initializer}
    users, makers = consumers(graph), producers(graph)
    outputs = {o.name for o in graph.output}

    def kind(activation: str, weight: str) -> str:
        if activation in inits:
            return "constant_input"
        if weight not in inits:
            maker = makers.get(weight)
            if maker is not None and maker.op_type == "Transpose" and maker.input[0] in inits:
                return "transposed_weight"
            return "two_activations"
        if len(users[weight]) > 1 or weight in outputs:
            return "tied_weight"
        if len(inits[weight].dims) != 2:
            return "weight_not_2d"
        if inits[weight].data_type != onnx.TensorProto.FLOAT:
            return "weight_not_float32"
        return "weighted"

    return {n.name: kind(n.input[0], n.input[1]) for n in graph.node if n.op_type == "MatMul"}


def activation_matmuls(graph: onnx.GraphProto) -> list[str]:
    """Names of MatMuls whose second input is computed (Q·Kᵀ, attn·V, transposed weights)."""
    inits = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in inits]


def op_counts(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for node in graph.node:
        counts[node.op_type] += 1
    return dict(sorted(counts.items()))


# --- writing ------------------------------------------------------------------------------------


def _copy_source_bytes(tensor: onnx.TensorProto, base_dir: Path, handles: dict[str, object], sink: BinaryIO) -> None:
    """Append a tensor's bytes from its source data file to sink, in the kernel (copy_file_range: no
    trip through Python, and shared blocks where the filesystem can) or by reads where it cannot."""
    info = external_info(tensor)
    length, offset = int(info.get("length", tensor_nbytes(tensor))), int(info.get("offset", 0))
    if info["location"] not in handles:
        handles[info["location"]] = open(Path(base_dir) / info["location"], "rb")  # noqa: SIM115
    source: BinaryIO = handles[info["location"]]  # type: ignore[assignment]
    sink.flush()
    position = sink.tell()
    while length > 0:
        try:
            copied = os.copy_file_range(source.fileno(), sink.fileno(), min(length, 1 << 30), offset, position)
        except OSError:  # e.g. a kernel or filesystem without it: plain reads
            source.seek(offset)
            copied = len(block := source.read(min(CHUNK, length)))
            os.pwrite(sink.fileno(), block, position)
        if copied == 0:
            fail(f"{base_dir / info['location']} ends before tensor {tensor.name}; the model data is truncated")
        offset, position, length = offset + copied, position + copied, length - copied
    sink.seek(position)


def write_model(
    model: onnx.ModelProto,
    src_dir: Path,
    dst: Path,
    replace: Mapping[str, Callable[[], np.ndarray]] | None = None,
    shard_budget: int | None = None,
) -> list[Path]:
    """Write `model` to dst, streaming every external tensor into fresh data files; return them.

    Bytes come from `replace[name]()` when given (same shape and dtype), else from the source file
    under src_dir. Inline tensors stay inline. With shard_budget (bytes) the data goes to
    dst.data.000, .001, ..., each within the budget (a larger tensor gets a file of its own);
    else to a single dst.data. Stale data files of those names are deleted first.
    """
    replace = replace or {}
    dst = Path(dst)
    for stale in dst.parent.glob(f"{dst.name}.data*"):
        stale.unlink()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensors = [t for t in out.graph.initializer if is_external(t)]
    sizes = [tensor_nbytes(t) for t in tensors]
    shards = _plan_shards(tensors, sizes, shard_budget) if shard_budget else [0] * len(tensors)
    width = max(3, len(str(max(shards, default=0))))

    def location(shard: int) -> str:
        return f"{dst.name}.data.{shard:0{width}d}" if shard_budget else f"{dst.name}.data"

    handles: dict[str, object] = {}
    written: dict[str, object] = {}
    try:
        for tensor, size, shard in tqdm(list(zip(tensors, sizes, shards)), desc=f"write {dst.name}", unit="tensor"):
            name = location(shard)
            if name not in written:
                written[name] = open(dst.parent / name, "wb")  # noqa: SIM115
            sink = written[name]
            offset = sink.tell()  # type: ignore[attr-defined]
            if tensor.name in replace:
                array = np.ascontiguousarray(replace[tensor.name]())
                expected = helper.tensor_dtype_to_np_dtype(tensor.data_type)
                if array.dtype != expected or list(array.shape) != list(tensor.dims):
                    raise ValueError(f"replacement for {tensor.name} is {array.dtype}{array.shape}")
                sink.write(array.tobytes())  # type: ignore[attr-defined]
            else:
                _copy_source_bytes(tensor, src_dir, handles, sink)  # type: ignore[arg-type]
            del tensor.external_data[:]
            for key, value in (("location", name), ("offset", str(offset)), ("length", str(size))):
                tensor.external_data.add(key=key, value=value)
    finally:
        for handle in [*handles.values(), *written.values()]:
            handle.close()  # type: ignore[attr-defined]
    if out.ByteSize() > PROTOBUF_LIMIT:
        fail(f"{dst}: the graph alone is over 2 GB even with external weights; cannot save it")
    dst.write_bytes(out.SerializeToString())
    return [dst.parent / name for name in written]


def _plan_shards(tensors: Sequence[onnx.TensorProto], sizes: Sequence[int], budget: int) -> list[int]:
    """Shard index per tensor, in order, starting a new shard when the next tensor would overflow."""
    shard, used, plan = 0, 0, []
    for tensor, size in zip(tensors, sizes):
        if used and used + size > budget:
            shard, used = shard + 1, 0
        if size > budget:
            log.warning("tensor %s (%d bytes) exceeds the shard budget (%d): it gets a file of its own",
                        tensor.name, size, budget)
        plan.append(shard)
        used += size
    return plan


def save_self_contained_if_small(src: Path, dst: Path) -> list[Path]:
    """Copy a model (with its external data) to dst as one file when under SELF_CONTAINED_BELOW, else
    with a fresh dst.data beside it. Returns the written files."""
    if model_size(src) < SELF_CONTAINED_BELOW:
        model = onnx.load(str(src))  # weights and all: small
        for tensor in model.graph.initializer:  # loading leaves an explicit DEFAULT marker: drop it so
            tensor.ClearField("data_location")  # both routes (in-memory or external) give the same bytes
        dst.write_bytes(model.SerializeToString())
        return [dst]
    return [dst, *write_model(load_graph(src), src.parent, dst)]


@contextlib.contextmanager
def quantizer_scratch(folder: Path) -> Iterator[None]:
    """Send onnxruntime's temporary models (full weight copies at Parakeet size) to folder, and keep
    its per-tensor INFO chatter out of the log."""
    previous_dir, tempfile.tempdir = tempfile.tempdir, str(folder)
    root = logging.getLogger()
    previous_level = root.level
    root.setLevel(max(previous_level, logging.WARNING))
    try:
        yield
    finally:
        tempfile.tempdir = previous_dir
        root.setLevel(previous_level)
