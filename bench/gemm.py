"""What this CPU's GEMMs can do, fp32 against int8, in a bare MatMul: the ceiling an int8 encoder's speed-up
is measured against. Recorded by bench.cost beside its encoder figures; alone:

    python -m bench.gemm [--threads 2]

One onnxruntime session per kind over the shapes of Parakeet's feed-forward at 30 s (375 frames x 1024 ->
4096): MatMul in fp32, and MatMulInteger (uint8 activations x int8 weights, as the int8 encoders' kernels
take them). Best of several runs; GFLOP/s counts a multiply-add as two.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench.meter import machine


def _graph(kind: str, k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    if kind == "fp32":
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a, y = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a, y = TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("a", a, ["m", k])],
                              [helper.make_tensor_value_info("y", y, ["m", n])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gemm_rates(m: int = 375, k: int = 1024, n: int = 4096, threads: int = 2, runs: int = 15) -> dict[str, float]:
    """GFLOP/s of fp32 MatMul and int8 MatMulInteger on this CPU, and their ratio."""
    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    feeds = {"fp32": rng.standard_normal((m, k)).astype(np.float32),
             "int8": rng.integers(0, 256, (m, k), dtype=np.uint8)}
    rates = {}
    for kind, a in feeds.items():
        session = ort.InferenceSession(_graph(kind, k, n, rng).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        session.run(None, {"a": a})  # warm-up: packing, thread pool
        best = float("inf")
        for _ in range(runs):
            started = time.perf_counter()
            session.run(None, {"a": a})
            best = min(best, time.perf_counter() - started)
        rates[f"{kind}_gflops"] = round(2 * m * k * n / best / 1e9, 1)
    rates["int8_vs_fp32"] = round(rates["int8_gflops"] / rates["fp32_gflops"], 2)
    return {"shape": [m, k, n], "threads": threads, **rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rates = gemm_rates(threads=args.threads)
    print(f"ISA: {', '.join(machine()['isa']) or 'none of note'}")
    print(f"{'kind':>6} {'GFLOP/s':>9}\n{'fp32':>6} {rates['fp32_gflops']:>9}\n{'int8':>6} {rates['int8_gflops']:>9}")
    print(f"int8 / fp32: {rates['int8_vs_fp32']}x ({rates['shape']}, {rates['threads']} threads)")


if __name__ == "__main__":
    main()
