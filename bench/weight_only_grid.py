"""4-bit weight-only on the demo model, every recipe side by side in one run: round-to-nearest, activation-aware
scales, GPTQ and aware + GPTQ, per block size, with and without zero points; then mixed 4/8-bit (the
MatMuls with the largest 4-bit output error in 8 bits) swept over how many stay 8-bit.

    python -m bench.weight_only_grid [--blocks 32 64 128] [--keep 0 4 8 12 16 24] [--twin DIR]
    python -m bench.weight_only_grid --render      # docs/recipes.md's table from the JSON, nothing run

Each recipe is built from the pipeline's own inputs (models/pointwise, data/windows, params.yaml's aware and
gptq groups) with the nbits stage's code, then scored as the evaluate stage scores a variant (greedy, every
demo set, paired bootstrap intervals against fp32's committed evaluation) in a scratch project; plus the
encoder's output error against fp32 on the held-out windows and its file size at Parakeet's size (the twin
encoder's own weights, packed by the recipe's grid; for a mixed row the same share of each kind of MatMul in
8 bits as on the demo). The sweep runs params.yaml's nbits.w4_mixed with each --keep count and names the
smallest count within +0.5 pt of fp32 on the pooled long passes and the corpus (the report's rule).
Needs `dvc repro` first. JSON: metrics/weight_only_grid.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
import tempfile
import time
from pathlib import Path

from bench.fixtures import prepare_twin
from bench.floors import ROOT, scratch_project
from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant.common import read_json, run_cli, write_json
from requant.evaluation import METRICS_DIR
from requant.params import NbitsRecipe, load_params
from requant.summary import BASELINE, decoding_view, summarize
from requant.weight_only_table import METHODS as LABELS
from requant.weight_only_table import TABLE_DOC, render_into, within
from stages import nbits
from stages.evaluate import evaluate

log = logging.getLogger("bench.weight_only_grid")
OUT = ROOT / "metrics/weight_only_grid.json"
SLOT = "nbits_w4"  # every recipe is evaluated under this variant's name, in its own scratch project
METHODS = dict(zip(LABELS, [(False, False), (True, False), (False, True), (True, True)]))  # label: aware, gptq
TOLERANCE_PT = 0.5


def twin_matmuls(encoder: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """The twin encoder's weights that MatMulNBits takes (constant [K, N] MatMul weights and pointwise convs,
    which the pipeline turns into MatMuls) as node -> (K, N), and the bytes of every other initializer."""
    graph = og.load_graph(encoder).graph
    inits = {t.name: t for t in graph.initializer}
    packed, used = {}, set()
    for node in graph.node:
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None:
            continue
        dims = list(weight.dims)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "MatMul" and len(dims) == 2:
            packed[node.name], _ = (dims[0], dims[1]), used.add(weight.name)
        elif node.op_type == "Conv" and len(dims) == 3 and dims[2] == 1 and group == 1:
            packed[node.name.replace("/Conv", "/MatMul")], _ = (dims[1], dims[0]), used.add(weight.name)
    return packed, sum(og.tensor_nbytes(t) for t in graph.initializer if t.name not in used)


def packed_bytes(k: int, n: int, bits: int, block: int, symmetric: bool) -> int:
    """MatMulNBits' B, scales and (asymmetric) zero points for a [K, N] weight."""
    blocks = math.ceil(k / block)
    return n * blocks * (block * bits // 8 + 4) + (0 if symmetric else n * math.ceil(blocks * bits / 8))


def role(node: str) -> str:
    return re.sub(r"/layers\.\d+/", "/layers.*/", node)


def parakeet_mb(twin: tuple[dict[str, tuple[int, int]], int], recipe: NbitsRecipe, kept_8bit: list[str],
                demo_nodes: list[str]) -> float:
    """The encoder's size at Parakeet's size: the twin's weights on the recipe's grid, each kind of MatMul
    (its name less the layer) with the demo's share of 8-bit ones."""
    matmuls, rest = twin
    total = rest
    for kind in sorted({role(n) for n in matmuls}):
        nodes = sorted(n for n in matmuls if role(n) == kind)
        share = sum(role(n) == kind for n in kept_8bit) / max(sum(role(n) == kind for n in demo_nodes), 1)
        eight = round(share * len(nodes))
        for i, node in enumerate(nodes):
            total += packed_bytes(*matmuls[node], 8 if i < eight else recipe.bits, recipe.block_size, recipe.symmetric)
    return round(total / 1e6, 1)


def score(project: Path, encoder: Path, heldout: runs.Windows, reference: list) -> dict:
    p = load_params(ROOT / "params.yaml")
    result = evaluate(SLOT, dataclasses.replace(p.eval, decodings=["greedy"]), list(p.eval_clips), project,
                      project / "metrics/eval", beam=p.beam, timing_dir=project / "metrics/timing")
    evals = {BASELINE: decoding_view(read_json(ROOT / METRICS_DIR / f"{BASELINE}.json"), "greedy"),
             SLOT: decoding_view(result, "greedy")}
    summary = summarize(evals, p.eval.bootstrap_resamples, p.eval.bootstrap_seed)[SLOT]
    files = og.data_files(og.load_graph(encoder), encoder.parent)
    return {"demo_mb": round((encoder.stat().st_size + sum(f.stat().st_size for f in files)) / 1e6, 2),
            "heldout_rel_error": runs.compare(reference, runs.encoder_outputs(encoder, heldout, "heldout"))["rel_error_mean"],
            "sets": {name: {k: cell.get(k) for k in ("wer_pct", "delta_pct", "ci_low_pct", "ci_high_pct")}
                     for name, cell in summary.items()}}


def run_recipe(label: str, recipe: NbitsRecipe, twin: tuple, heldout: runs.Windows, reference: list) -> dict:
    p = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="weight-only-grid-") as tmp:
        project = scratch_project(Path(tmp))
        folder = project / "models/variants" / SLOT
        encoder = folder / nbits.file_name("w4")
        started = time.perf_counter()
        built = nbits.build_nbits(ROOT / nbits.SOURCE, folder, encoder.name, recipe, ROOT / nbits.WINDOWS, p.aware,
                                  p.seed, p.gptq)
        build_s = round(time.perf_counter() - started, 1)
        packing = built["gptq"] or {}
        row = {"recipe": dataclasses.asdict(recipe), "build_s": build_s, **score(project, encoder, heldout, reference),
               "kept_8bit": len(packing.get("kept_8bit", [])), "calib_rel_error": packing.get("rel_error_mean")}
        demo_nodes = [n.name for n in og.load_graph(ROOT / nbits.SOURCE).graph.node if n.op_type == "MatMul"]
        row["parakeet_mb"] = parakeet_mb(twin, recipe, packing.get("kept_8bit", []), demo_nodes)
    log.info("%s: %s", label, row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--keep", type=int, nargs="+", default=[0, 4, 8, 12, 16, 24], help="8-bit MatMuls swept")
    parser.add_argument("--twin", type=Path, default=Path("/tmp/web-check"), help="holds (or gets) the twin")
    parser.add_argument("--render", action="store_true", help="only write docs/recipes.md's table from the JSON")
    parser.add_argument("--sweep-only", action="store_true", help="keep the JSON's recipe rows, run the sweep again")
    args = parser.parse_args()
    if args.render:
        render_into(ROOT / TABLE_DOC, read_json(OUT))
        return
    p = load_params(ROOT / "params.yaml")
    twin_dir = args.twin / "twin"
    if not (twin_dir / "encoder-model.onnx.data").is_file():
        prepare_twin(args.twin, 0)
    twin = twin_matmuls(twin_dir / "encoder-model.onnx")
    windows = ROOT / nbits.WINDOWS
    heldout = runs.Windows(windows, "heldout")
    reference = runs.encoder_outputs(ROOT / "models/base/encoder-model.onnx", heldout, "fp32 heldout")
    rows = read_json(OUT)["rows"] if args.sweep_only else {}
    for block in [] if args.sweep_only else args.blocks:
        for symmetric in (True, False):
            for method in args.methods:
                aware, gptq = METHODS[method]
                label = f"{method} b{block} {'sym' if symmetric else 'asym'}"
                rows[label] = run_recipe(label, NbitsRecipe(4, block, symmetric, 4, aware, gptq), twin, heldout, reference)
    base = p.nbits["w4_mixed"]
    sweep = {str(k): run_recipe(f"mixed {k}", dataclasses.replace(base, keep_8bit=k), twin, heldout, reference)
             for k in args.keep}
    pick = next((int(k) for k, row in sweep.items() if within(row, TOLERANCE_PT)), None)
    result = {"bits": 4, "accuracy_level": 4, "calibration_windows": len(runs.Windows(windows, "calib")),
              "tolerance_pt": TOLERANCE_PT, "rows": rows, "mixed": {"recipe": dataclasses.asdict(base), "sweep": sweep,
                                                                    "smallest_within": pick}}
    write_json(OUT, result)
    render_into(ROOT / TABLE_DOC, result)
    print(f"smallest keep_8bit within {TOLERANCE_PT} pt: {pick} (params.yaml nbits.w4_mixed has {base.keep_8bit})")


if __name__ == "__main__":
    run_cli(main)
