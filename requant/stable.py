"""Calibration statistics made robust to the last bits of float kernels, so a model is the same bytes on any CPU.

onnxruntime's MLAS picks its kernels by instruction set, so an activation maximum or a Percentile range
computed on another x86 CPU differs in its last bits (measured here with graph optimizations on against
off: 70 % of the demo's 9280 channel maxima differ, by up to 1.5e-6 relative). Each statistic that shapes
a model is snapped to a fixed grid of exactly representable values before use; the grid's edges are far
from where a few ULPs can reach, except for the rare statistic that lies right on one, which is counted
(`near_edge`) so that a report can say how many could still flip.

- SmoothQuant scales snap to powers of two: the fold is then exact in floating point (x/s and w*s lose no
  bit), so the smoothed fp32 encoder computes the very products of the original.
- Activation ranges snap to 3-bit mantissas (1, 1.125, ..., 1.875 times a power of two): the int8 scale
  moves by at most 6 % from the calibrated one.

The errors that the model-building stages' exactness gates write into git are kept in a form another CPU
reproduces too (`stable_error`), since a fresh clone re-runs those stages.
"""

from __future__ import annotations

import math
import platform
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort

from requant.common import write_json

# a statistic within this relative distance of a grid edge may still flip on another CPU: ten times the
# largest last-bit difference measured between the stand-ins (1.5e-6)
NEAR_EDGE = 1.5e-5
MANTISSA_BITS = 3
FLOAT_ROUNDING_LEVEL = 1e-5  # below this, a relative error between two float runs is rounding, not a model's


def snap_pow2(values: np.ndarray) -> np.ndarray:
    """Each positive value to the nearest power of two in the log domain (edges at 2^(k + 1/2)), exactly."""
    mantissa, exponent = np.frexp(np.asarray(values, dtype=np.float64))  # value = m * 2^e, m in [0.5, 1)
    return np.ldexp(1.0, exponent - (mantissa < np.sqrt(0.5)))


def pow2_edge_distance(values: np.ndarray) -> np.ndarray:
    """Relative distance of each value to the nearest edge of snap_pow2's grid."""
    mantissa, _ = np.frexp(np.asarray(values, dtype=np.float64))
    return np.abs(mantissa / np.sqrt(0.5) - 1.0)


def snap_mantissa(value: float, bits: int = MANTISSA_BITS) -> float:
    """A positive value to the nearest number with a `bits`-bit mantissa (round half up), exactly; 0 stays 0."""
    if value == 0.0:
        return 0.0
    mantissa, exponent = np.frexp(abs(value))  # |value| = m * 2^e, m in [0.5, 1)
    steps = 2 ** (bits + 1)
    snapped = np.ldexp(np.floor(mantissa * steps + 0.5), int(exponent) - bits - 1)
    return float(np.copysign(snapped, value))


def mantissa_edge_distance(value: float, bits: int = MANTISSA_BITS) -> float:
    """Relative distance of a value to the nearest edge of snap_mantissa's grid."""
    if value == 0.0:
        return np.inf
    mantissa, _ = np.frexp(abs(value))
    scaled = mantissa * 2 ** (bits + 1)
    return float(abs(scaled - (np.floor(scaled) + 0.5)) / scaled)


# the cpuid features MLAS (onnxruntime's CPU kernels) dispatches on, as Linux names them
KERNEL_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
PROVENANCE_DIR = Path("data/provenance")


def machine() -> dict[str, object]:
    """The CPU model, the instruction sets onnxruntime's kernels choose from that it has, and onnxruntime's
    version: what decides the last bits of a calibration statistic."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = set((re.search(r"^flags\s*:\s*(.+)$", info, re.M) or [None, ""])[1].split())
    return {"cpu": model[1].strip() if model else platform.processor() or platform.machine(),
            "kernel_isa": [f for f in KERNEL_FLAGS if f in flags], "onnxruntime": ort.__version__,
            "numpy": np.__version__}


def record_machine(stage: str) -> None:
    """data/provenance/<stage>.json: where a calibrated stage ran. Kept out of its outputs and of git, so that
    the outputs stay the same bytes whichever machine made them."""
    write_json(PROVENANCE_DIR / f"{stage}.json", machine())


def stable_error(value: float) -> float:
    """A relative error between two float runs as a figure another CPU's kernels reproduce: one at float32
    rounding level as the power of ten above it (other kernels move it by tens of percent: 4.54e-7 on
    AVX-512, 4.95e-7 on AVX2), a larger one (a quantization's) to three significant digits."""
    if not 0 < value < FLOAT_ROUNDING_LEVEL:
        return float(f"{value:.3g}")  # 0, NaN and real errors
    return float(f"1e{math.ceil(math.log10(value)):d}")
