"""4-bit weight-only on the demo model: round-to-nearest against activation-aware scales, per block size and
with or without zero points, and GPTQ through onnxruntime; side by side in one run.

    python -m bench.weight_only_grid [--blocks 32 64 128]

Each recipe is built from the pipeline's own inputs (models/pointwise, data/windows, params.yaml's aware
group) with the nbits stage's code, then scored as the evaluate stage scores a variant (greedy, every
demo set) in a scratch project, beside fp32's committed evaluation; plus the encoder's size and its
output error against fp32 on the held-out windows. GPTQ runs onnxruntime's MatMulNBitsQuantizer with
GPTQWeightOnlyQuantConfig where it can (its code imports torch, and it serializes the model in memory,
so it cannot take a model over 2 GB); where it cannot, the row says why. Needs `dvc repro` first.
JSON: metrics/weight_only_grid.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path

import onnx

from bench.floors import ROOT, scratch_project
from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant import patterns
from requant.common import read_json, run_cli, write_json
from requant.params import NbitsRecipe, load_params
from requant.summary import BASELINE, decoding_view, summarize
from stages import nbits
from requant.evaluation import METRICS_DIR
from stages.evaluate import evaluate
from requant.static_int8 import WindowReader

log = logging.getLogger("bench.weight_only_grid")
OUT = ROOT / "metrics/weight_only_grid.json"
SLOT = "nbits_w4"  # every recipe is evaluated under this variant's name, in its own scratch project


class _Calibration(WindowReader):
    """The calibration windows as the iterable onnxruntime's GPTQ copies and walks."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.position = 0
        while (feed := self.get_next()) is not None:
            yield feed


def build_gptq(src: Path, dst: Path, windows: Path, block: int) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = GPTQWeightOnlyQuantConfig(calibration_data_reader=_Calibration(runs.Windows(windows, "calib")))
    keep = patterns.fp32_matmuls(og.load_graph(src).graph)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=block, is_symmetric=True,
                                     nodes_to_exclude=keep, accuracy_level=4, algo_config=config)
    quantizer.process()
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=True)


def score(project: Path, encoder: Path, heldout: runs.Windows, reference: list) -> dict:
    p = load_params(ROOT / "params.yaml")
    result = evaluate(SLOT, dataclasses.replace(p.eval, decodings=["greedy"]), list(p.eval_clips), project,
                      project / "metrics/eval", beam=p.beam, timing_dir=project / "metrics/timing")
    evals = {BASELINE: decoding_view(read_json(ROOT / METRICS_DIR / f"{BASELINE}.json"), "greedy"),
             SLOT: decoding_view(result, "greedy")}
    summary = summarize(evals, 200, p.eval.bootstrap_seed)[SLOT]
    files = og.data_files(og.load_graph(encoder), encoder.parent)
    return {"encoder_mb": round((encoder.stat().st_size + sum(f.stat().st_size for f in files)) / 1e6, 2),
            "heldout_rel_error": runs.compare(reference, runs.encoder_outputs(encoder, heldout, "heldout"))["rel_error_mean"],
            "wer_pct": {name: cell["wer_pct"] for name, cell in summary.items()},
            "delta_pct": {name: cell.get("delta_pct") for name, cell in summary.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    args = parser.parse_args()
    p = load_params(ROOT / "params.yaml")
    src, windows = ROOT / nbits.SOURCE, ROOT / nbits.WINDOWS
    heldout = runs.Windows(windows, "heldout")
    reference = runs.encoder_outputs(ROOT / "models/base/encoder-model.onnx", heldout, "fp32 heldout")
    plan = [(f"{'aware' if aware else 'rtn'} b{block} {'sym' if sym else 'asym'}", NbitsRecipe(4, block, sym, 4, aware))
            for block in args.blocks for sym in (True, False) for aware in (False, True)]
    rows = {}
    for label, recipe in [*plan, ("gptq b32 sym", None)]:
        with tempfile.TemporaryDirectory(prefix="weight-only-grid-") as tmp:
            project = scratch_project(Path(tmp))
            folder = project / "models/variants" / SLOT
            encoder = folder / nbits.file_name("w4")
            try:
                if recipe is None:
                    build_gptq(src, encoder, windows, 32)
                else:
                    nbits.build_nbits(src, folder, encoder.name, recipe, windows, p.aware, p.seed)
            except (ImportError, RuntimeError, ValueError, OSError) as err:  # GPTQ's own limits, recorded
                rows[label] = {"failed": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
                log.warning("%s: %s", label, rows[label]["failed"])
                continue
            rows[label] = score(project, encoder, heldout, reference)
            log.info("%s: %s", label, rows[label])
    write_json(OUT, {"bits": 4, "accuracy_level": 4, "calibration_windows": len(runs.Windows(windows, "calib")),
                     "rows": rows})
    sets = list(next(r for r in rows.values() if "wer_pct" in r)["wer_pct"])
    print(f"{'recipe':<18} {'MB':>6} {'out err':>8} " + " ".join(f"{s[:14]:>14}" for s in sets))
    for label, row in rows.items():
        if "failed" in row:
            print(f"{label:<18} failed: {row['failed']}")
            continue
        cells = [f"{row['wer_pct'][s]:.2f} ({row['delta_pct'][s]:+.2f})" for s in sets]
        print(f"{label:<18} {row['encoder_mb']:>6.2f} {row['heldout_rel_error']:>8.4f} " + " ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    run_cli(main)
