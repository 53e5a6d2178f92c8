"""Stage `nbits@<recipe>`: weight-only quantization with onnxruntime's MatMulNBitsQuantizer.

Each weighted MatMul's [K, N] weight (the pointwise convs are MatMuls since stage pointwise) is stored in
`bits` bits per block of `block_size` input rows (one scale per block and output column) and runs as one
MatMulNBits kernel. Activations stay float, and `accuracy_level` 4 quantizes them to int8 at run time
inside the kernel (0 leaves the kernel's choice: fp32 compute on dequantized weights). Two-activation,
tied and transposed MatMuls stay fp32, as in every other recipe here (requant.patterns.fp32_matmuls).
Round-to-nearest needs no calibration; an `aware` recipe first scales each MatMul's input channels
(requant/aware.py, searched on the calibration windows), checks that the scaled fp32 encoder equals the
source, and quantizes that. A `gptq` recipe quantizes each weight with GPTQ's error feedback on its input's
calibration Hessian (requant/gptq.py), after the aware scaling when both are set; `keep_8bit` stores the
MatMuls with the largest 4-bit output error on those Hessians in 8 bits (mixed 4/8-bit).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

from requant import aware, gptq, patterns, stable
from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant.common import atomic_path, fail, run_cli, write_json
from requant.gated import write_gated
from requant.params import AwareParams, GptqParams, NbitsRecipe, load_params

log = logging.getLogger(__name__)

SOURCE = Path("models/pointwise/encoder-model.onnx")  # the base encoder, pointwise convs as MatMuls
WINDOWS = Path("data/windows")
OUT_ROOT = Path("models/variants")
MAX_REL_ERROR = 1e-5  # power-of-two scales: the scaled fp32 encoder equals its source (measured: 0)


def out_dir(recipe: str) -> Path:
    return OUT_ROOT / f"nbits_{recipe}"


def file_name(recipe: str) -> str:
    return f"encoder-model.{recipe}.onnx"


def metrics_path(recipe: str) -> Path:
    return Path("metrics/nbits") / f"{recipe}.json"


def scale_aware(src: Path, dst: Path, windows_dir: Path, recipe: NbitsRecipe, settings: AwareParams,
                seed: int) -> dict:
    """Write the activation-aware scaled fp32 encoder to dst after checking it equals src; its summary."""
    model = og.load_graph(src)
    grid = aware.Grid(recipe.bits, recipe.block_size, recipe.symmetric)
    replace, summary = aware.scale_for_grid(model, src.parent, runs.Windows(windows_dir, "calib"), grid,
                                            settings.alphas, settings.rows, seed)
    gate = write_gated(model, src, dst.parent, dst.name, replace, runs.Windows(windows_dir, "heldout"), MAX_REL_ERROR,
                       "activation-aware scaled")
    log.info("aware scaling: %s", summary)
    return {**summary, "heldout_rel_error_max": gate["heldout_rel_error_max"]}


def build_nbits(src: Path, dst_dir: Path, name: str, recipe: NbitsRecipe, windows_dir: Path = WINDOWS,
                settings: AwareParams | None = None, seed: int = 0, gptq_settings: GptqParams | None = None) -> dict:
    """Write dst_dir/name atomically; return the op counts that tell how it was quantized ("ops"), for an
    aware recipe the scaling's summary ("aware", else None), and for a gptq or keep_8bit recipe the packing's
    summary ("gptq", else None)."""
    graph = og.load_graph(src).graph
    keep = patterns.fp32_matmuls(graph)
    if any(not node for node in keep):
        fail(f"{src}: a MatMul without a name cannot be kept in fp32")
    config = DefaultWeightOnlyQuantConfig(block_size=recipe.block_size, is_symmetric=recipe.symmetric,
                                          accuracy_level=recipe.accuracy_level or None, bits=recipe.bits)
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir()
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=tmp))
        scaled, quantized_from = None, src
        if recipe.aware:
            if settings is None:
                fail("an aware nbits recipe needs the aware params group")
            quantized_from = work / "scaled" / "scaled.onnx"
            scaled = scale_aware(src, quantized_from, windows_dir, recipe, settings, seed)
        planned, packing = None, None
        if recipe.gptq or recipe.keep_8bit:
            if gptq_settings is None:
                fail("a gptq or keep_8bit nbits recipe needs the gptq params group")
            planned, packing = gptq.prepare(quantized_from, work / "packed", keep, aware.Grid(
                recipe.bits, recipe.block_size, recipe.symmetric), recipe.accuracy_level, recipe.gptq, recipe.keep_8bit,
                runs.Windows(windows_dir, "calib"), gptq_settings.damp, gptq_settings.hessian_mb)
        readable = og.onnx_readable(quantized_from, work)  # onnxruntime's quantizer loads it through onnx
        with og.quantizer_scratch(work):
            quantizer = MatMulNBitsQuantizer(str(readable), bits=recipe.bits, block_size=recipe.block_size,
                                             is_symmetric=recipe.symmetric, nodes_to_exclude=keep,
                                             accuracy_level=recipe.accuracy_level or None, algo_config=config)
            if planned is not None:
                quantizer.node_quantizer = planned  # onnxruntime writes the nodes; the weights are packed already
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
    if packing is not None and packed != packing["matmuls"]:
        fail(f"{src}: {packed} MatMulNBits written for {packing['matmuls']} weights packed beforehand")
    return {"ops": counts, "aware": scaled, "gptq": packing}


def main() -> None:
    params = load_params()
    recipe = sys.argv[1] if len(sys.argv) == 2 else ""
    if recipe not in params.nbits:
        fail(f"usage: python -m stages.nbits <recipe>, recipe one of {', '.join(params.nbits)} (params.yaml nbits)")
    chosen = params.nbits[recipe]
    if chosen.aware or chosen.gptq or chosen.keep_8bit:
        stable.record_machine(f"nbits@{recipe}")
    result = build_nbits(SOURCE, out_dir(recipe), file_name(recipe), chosen, WINDOWS, params.aware, params.seed,
                         params.gptq)
    write_json(metrics_path(recipe), {"packed_matmuls": result["ops"]["MatMulNBits"],
                                      "fp32_matmuls": result["ops"].get("MatMul", 0), "aware": result["aware"],
                                      "gptq": result["gptq"]})


if __name__ == "__main__":
    run_cli(main)
