"""What the pipeline will do to an encoder, read from its graph in seconds (no weights loaded).

    python -m tools.census models/base/encoder-model.onnx

Prints op counts, the MatMuls by class (quantized or left fp32), the LayerNorms SmoothQuant folds
into and the Muls it would insert, the longest pass the positional table allows, the dtype of the
length path before and after the fp16 cast, and op types the pipeline has never been tested on.
Findings (patterns the pipeline does not recognise) are printed one per line and exit 1; the
base_model stage stops on the same findings, so `dvc repro` fails early with the same words.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import onnx

from requant import onnx_graph as og
from requant import frames, pointwise, positions, subsampling
from requant.attention import find_sites
from requant import patterns
from requant.common import run_cli

def census(model: onnx.ModelProto) -> dict:
    """Everything the report prints, as data."""
    graph = model.graph
    groups, kinds = patterns.smoothing_plan(graph)
    shape_read = {n.input[0] for n in graph.node if n.op_type == "Shape"}
    folds, muls, folds_beside_shape = [], [], 0
    for tensor, readers in groups.items():
        norm = patterns.foldable_norm(graph, tensor, readers, _width(graph, readers[0]))
        if norm is None:
            muls.append((tensor, len(readers)))
        else:
            folds.append((norm.name, len(readers)))
            folds_beside_shape += tensor in shape_read
    types = patterns.tensor_types(model)
    path = [n for n in patterns.length_path(graph) if n.op_type != "Constant"]
    islands = set(patterns.fp32_islands(model))
    float_on_path = [n for n in path if any(types.get(t) in patterns.FLOATS for t in n.output)]
    limit = patterns.positional_limit(model)
    sites, refused = find_sites(graph)
    return {
        "nodes": len(graph.node),
        "ops": og.op_counts(graph),
        "matmuls": dict(sorted(Counter(kinds.values()).items())),
        "folds": folds,
        "folds_with_shape_readers": folds_beside_shape,
        "muls": muls,
        "max_frames": limit,
        "positions_extended": any(n.name.startswith(positions.PREFIX) for n in graph.node),
        "max_seconds": None if limit is None else round(limit * patterns.FRAME_SECONDS, 2),
        "length_path": [n.op_type for n in path],
        "length_path_float": len(float_on_path),
        "length_path_kept_fp32": sum(n.name in islands for n in float_on_path),
        "fp32_islands": len(islands),
        "findings": patterns.findings(model),
        "attention": {"blockwise_ready": len(sites), "refused": refused,
                      "loops": sum(n.op_type == "Loop" and not n.name.startswith((subsampling.PREFIX, frames.PREFIX))
                                   for n in graph.node)},
        "subsampling": _subsampling(graph),
        "per_frame": _per_frame(model),
        "pointwise": _pointwise(graph),
    }


def _pointwise(graph: onnx.GraphProto) -> dict:
    taken, refused = pointwise.plan(graph)
    return {"convs": len(taken) + sum(refused.values()), "takes": len(taken)}


def _per_frame(model: onnx.ModelProto) -> dict:
    modules, refused = frames.find_modules(model)
    return {"blockable": len(modules), "refused": dict(sorted(refused.items())),
            "blocked": sum(n.op_type == "Loop" and n.name.startswith(frames.PREFIX) for n in model.graph.node)}


def _subsampling(graph: onnx.GraphProto) -> dict:
    chunked = any(n.op_type == "Loop" and n.name.startswith(subsampling.PREFIX) for n in graph.node)
    stack, reason = subsampling.find_stack(graph)
    return {"chunkable": stack is not None, "chunked": chunked, "stride": stack and stack.stride,
            "convs": stack and len(stack.time_strides), "refused": "" if chunked else reason}


def _width(graph: onnx.GraphProto, matmul: onnx.NodeProto) -> int:
    return int(next(t.dims[0] for t in graph.initializer if t.name == matmul.input[1]))


def report(path: Path, data: dict) -> str:
    matmuls = data["matmuls"]
    weighted = matmuls.get("weighted", 0)
    others = ", ".join(f"{n} {kind}" for kind, n in matmuls.items() if kind != "weighted") or "none"
    folded = sum(n for _, n in data["folds"])
    lines = [
        f"{path}: {data['nodes']} nodes",
        "ops: " + ", ".join(f"{op} {n}" for op, n in data["ops"].items()),
        f"MatMuls: {weighted} weighted (smoothed, then quantized by int8), left in fp32: {others}",
        f"SmoothQuant: {len(data['folds'])} LayerNorm folds ({folded} MatMuls; "
        f"{data['folds_with_shape_readers']} of them also read by Shape), {len(data['muls'])} Muls inserted "
        f"({sum(n for _, n in data['muls'])} MatMuls)",
    ]
    lines += [f"  Mul before the {n} MatMul(s) reading {tensor}" for tensor, n in data["muls"]]
    convs = data["pointwise"]
    lines.append(f"pointwise convs: {convs['takes']} of {convs['convs']} Convs are 1x1 Conv1d: stage pointwise makes "
                 "them MatMuls (then smoothed and quantized); the others stay fp32 convolutions")
    if data["positions_extended"]:
        lines.append("positional table: extended past its stored rows (stage blockwise), no cap")
    elif data["max_frames"] is None:
        lines.append("positional table: computed from the pass length, no cap")
    else:
        lines.append(f"positional table: at most {data['max_frames']} encoder frames per pass "
                     f"({data['max_seconds']:g} s of audio)")
    chain = " -> ".join(data["length_path"]) or "none"
    naive = "float16 (wrong past 2048 frames on fp16 kernels)" if data["length_path_float"] else "no float"
    kept = (f"float32 ({data['length_path_kept_fp32']} of {data['length_path_float']} float nodes kept)"
            if data["length_path_float"] else "no float")
    lines += [f"length path: {chain}",
              f"  dtype: float32 in this model; a naive fp16 cast: {naive}; the fp16 stage: {kept}",
              f"fp16 stage keeps {data['fp32_islands']} nodes of length/position arithmetic in fp32"]
    attention = data["attention"]
    lines.append(f"attention: {attention['blockwise_ready']} sites match the export's relative-position pattern "
                 f"(the blockwise rewrite takes them), {attention['loops']} already run as Loops")
    lines += [f"  left as it is: {reason}" for reason in attention["refused"]]
    sub = data["subsampling"]
    if sub["chunked"]:
        lines.append("subsampling: already runs in chunks (a Loop)")
    elif sub["chunkable"]:
        lines.append(f"subsampling: {sub['convs']} Convs, stride {sub['stride']} in time: the chunked rewrite takes it")
    else:
        lines.append(f"subsampling: left as it is: {sub['refused']}")
    per_frame = data["per_frame"]
    lines.append(f"feed-forward and conv modules: {per_frame['blockable']} per-frame residual branches (the frame-block "
                 f"rewrite takes them), {per_frame['blocked']} already run over blocks of frames")
    lines += [f"  branches left as they are: {n} x {reason}" for reason, n in per_frame["refused"].items()]
    lines += [f"finding: {line}" for line in data["findings"]] or ["findings: none; the pipeline knows every pattern"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="What the pipeline will do to an encoder (graph only).")
    parser.add_argument("encoder", type=Path, help="an encoder .onnx file (its .data file is not read)")
    args = parser.parse_args()
    data = census(og.load_graph(args.encoder))
    print(report(args.encoder, data))
    if data["findings"]:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
