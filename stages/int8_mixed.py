"""Stage `int8_mixed`: SmoothQuant int8 with the K most sensitive MatMuls kept in fp32.

The ranking is the diagnosis of the SmoothQuant int8 variant (metrics/diagnosis.json: each quantized
MatMul's output error at the longest pass, fed the fp32 input, on calibration audio, never the
evaluation clip). Everything else is the int8 stage's recipe; K is mixed.keep_fp32.
"""

from __future__ import annotations

import logging
from pathlib import Path

from requant import stable
from requant.common import run_cli
from requant.params import load_params
from requant.static_int8 import DIAGNOSIS_FILE, SMOOTHED, WINDOWS_DIR, build_int8, most_sensitive

log = logging.getLogger(__name__)

OUT_DIR = Path("models/variants/int8_mixed")


def main() -> None:
    params = load_params()
    stable.record_machine("int8_mixed")
    keep = most_sensitive(DIAGNOSIS_FILE, params.mixed.keep_fp32)
    log.info("keeping %d MatMuls in fp32: %s", len(keep), keep)
    build_int8(SMOOTHED, OUT_DIR, WINDOWS_DIR, params.quant.percentile, params.quant.calib_windows,
               params.fidelity.min_cosine, reduce_range=params.quant.reduce_range, keep_fp32=keep)


if __name__ == "__main__":
    run_cli(main)
