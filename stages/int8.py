"""Stage `int8`: static int8 of the smoothed encoder (requant/static_int8.py: QDQ, per-channel int8 MatMul
weights in a 7-bit range, Percentile uint8 activations snapped to a grid, the pointwise convs included), gated
on fidelity against the fp32 encoder on held-out windows.
"""

from __future__ import annotations

from pathlib import Path

from requant import stable
from requant.common import run_cli, write_json
from requant.params import load_params
from requant.static_int8 import SMOOTHED, WINDOWS_DIR, build_int8

OUT_DIR = Path("models/variants/int8_smoothquant")
METRICS = Path("metrics/int8.json")  # how many ranges were snapped, how many lie near a grid edge


def main() -> None:
    params = load_params()
    stable.record_machine("int8")
    result = build_int8(SMOOTHED, OUT_DIR, WINDOWS_DIR, params.quant.percentile, params.quant.calib_windows,
                        params.fidelity.min_cosine, reduce_range=params.quant.reduce_range)
    write_json(METRICS, {k: result[k] for k in ("ranges", "ranges_near_grid_edge", "linear_pos_range")})


if __name__ == "__main__":
    run_cli(main)
