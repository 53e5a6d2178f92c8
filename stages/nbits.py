"""Stage `nbits@<recipe>`: weight-only quantization with onnxruntime's MatMulNBitsQuantizer.

Each weighted MatMul's [K, N] weight is stored in `bits` bits per block of `block_size` input rows
(one scale per block and output column) and runs as one MatMulNBits kernel. There is no calibration:
activations stay float, and `accuracy_level` 4 quantizes them to int8 at run time inside the kernel
(0 leaves the kernel's choice: fp32 compute on dequantized weights). Two-activation, tied and
transposed MatMuls stay fp32, as in every other recipe here (requant.patterns.fp32_matmuls).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

from requant import onnx_graph as og
from requant import patterns
from requant.common import atomic_path, fail, run_cli
from requant.params import NbitsRecipe, load_params

log = logging.getLogger(__name__)

SOURCE = Path("models/base/encoder-model.onnx")
OUT_ROOT = Path("models/variants")


def out_dir(recipe: str) -> Path:
    return OUT_ROOT / f"nbits_{recipe}"


def file_name(recipe: str) -> str:
    return f"encoder-model.{recipe}.onnx"


def build_nbits(src: Path, dst_dir: Path, name: str, recipe: NbitsRecipe) -> dict[str, int]:
    """Write dst_dir/name atomically; return the op counts that tell how it was quantized."""
    og.require_single_links(src)
    graph = og.load_graph(src).graph
    keep = patterns.fp32_matmuls(graph)
    if any(not node for node in keep):
        fail(f"{src}: a MatMul without a name cannot be kept in fp32")
    config = DefaultWeightOnlyQuantConfig(block_size=recipe.block_size, is_symmetric=recipe.symmetric,
                                          accuracy_level=recipe.accuracy_level or None, bits=recipe.bits)
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir()
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=tmp))
        with og.quantizer_scratch(work):
            quantizer = MatMulNBitsQuantizer(str(src), bits=recipe.bits, block_size=recipe.block_size,
                                             is_symmetric=recipe.symmetric, nodes_to_exclude=keep,
                                             accuracy_level=recipe.accuracy_level or None, algo_config=config)
            quantizer.process()
            quantizer.model.save_model_to_file(str(work / name), use_external_data_format=True)
        del quantizer
        og.save_self_contained_if_small(work / name, tmp / name)
        shutil.rmtree(work)
        counts = og.op_counts(og.load_graph(tmp / name).graph)
    packed = counts.get("MatMulNBits", 0)
    if packed == 0:
        fail(f"{src}: MatMulNBitsQuantizer packed no MatMul; the encoder has no constant [K, N] weights to quantize")
    log.info("nbits %d-bit block %d: %d MatMulNBits, %d MatMuls left fp32", recipe.bits, recipe.block_size, packed,
             counts.get("MatMul", 0))
    return counts


def main() -> None:
    params = load_params()
    recipe = sys.argv[1] if len(sys.argv) == 2 else ""
    if recipe not in params.nbits:
        fail(f"usage: python -m stages.nbits <recipe>, recipe one of {', '.join(params.nbits)} (params.yaml nbits)")
    build_nbits(SOURCE, out_dir(recipe), file_name(recipe), params.nbits[recipe])


if __name__ == "__main__":
    run_cli(main)
