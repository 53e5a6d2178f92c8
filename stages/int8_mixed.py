"""Stage `int8_mixed`: SmoothQuant int8 with the K most sensitive MatMuls kept in fp32.

The ranking is the diagnosis of the SmoothQuant int8 variant (metrics/diagnosis.json: each quantized
MatMul's output error at the longest pass, fed the fp32 input, on calibration audio, never the
evaluation clip). Everything else is the int8 stage's recipe; K is mixed.keep_fp32.
"""

from __future__ import annotations

import logging
from pathlib import Path

from requant import stable
from requant.common import fail, read_json, run_cli
from requant.static_int8 import build_int8
from requant.params import load_params

log = logging.getLogger(__name__)

SOURCE = Path("models/smoothed/encoder-model.onnx")
WINDOWS = Path("data/windows")
DIAGNOSIS = Path("metrics/diagnosis.json")
OUT_DIR = Path("models/variants/int8_mixed")
RANKED = "int8_smoothquant"


def most_sensitive(diagnosis_path: Path, k: int) -> list[str]:
    """The K MatMuls the diagnosis ranks worst for SmoothQuant int8."""
    if not diagnosis_path.is_file():
        fail(f"{diagnosis_path} not found; run `dvc repro diagnose` first")
    ranking = read_json(diagnosis_path).get("variants", {}).get(RANKED, {}).get("ranking")
    if ranking is None:
        fail(f"{diagnosis_path} has no ranking for {RANKED}; rerun `dvc repro diagnose`")
    if k > len(ranking):
        fail(f"mixed.keep_fp32={k} but only {len(ranking)} MatMuls are quantized; lower it")
    return ranking[:k]


def main() -> None:
    params = load_params()
    stable.record_machine("int8_mixed")
    keep = most_sensitive(DIAGNOSIS, params.mixed.keep_fp32)
    log.info("keeping %d MatMuls in fp32: %s", len(keep), keep)
    build_int8(SOURCE, OUT_DIR, WINDOWS, params.quant.percentile, params.quant.calib_windows,
               params.fidelity.min_cosine, reduce_range=params.quant.reduce_range, keep_fp32=keep)


if __name__ == "__main__":
    run_cli(main)
