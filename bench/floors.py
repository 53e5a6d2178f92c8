"""Noise floors under the WER differences: how far a calibrated variant's WER moves for reasons that say
nothing about its recipe.

- perturbation floor: K builds whose calibration statistics (SmoothQuant's activation maxima, the int8
  ranges, the aware scales' activation means, GPTQ's Hessians) carry last-bit noise (relative `--noise`, 1e-6: the size measured between the CPU stand-ins) and
  are used unsnapped, as before the statistics were snapped: how much a change that small moves the WER;
- calibration floor: K seeds of the calibration-window draw (the windows stage's `seed`).

Each build runs smoothquant -> int8 (-> int8_mixed with the committed diagnosis's fp32 MatMuls), or the
nbits stage's w4_mixed (aware scales and GPTQ on the windows), and the evaluation (greedy) in a scratch project
that links this one's data and base model (`--add --variants nbits_w4_mixed` measures one and keeps the
others). Variants with nothing calibrated (fp32, fp16, sharded, int8 dynamic/stock, round-to-nearest
weight-only) have floors of 0 by construction;
int8_blockwise computes int8_smoothquant's outputs bit for bit, so it shares its floors. Writes
metrics/floors.json, which the report puts beside the intervals. About 1.5 min per build and variant here
(demo, 2 cores): `--k 5` for both variants takes about 30 min.

    python -m bench.floors --k 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from requant import gptq, stable
from requant.common import read_json, write_json
from requant.params import load_params
from requant.summary import BASELINE, decoding_view, summarize
from requant.static_int8 import DIAGNOSIS_FILE, build_int8, most_sensitive
from stages import nbits, smoothquant
from requant.evaluation import METRICS_DIR
from stages.evaluate import evaluate
from stages.windows import build_windows

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "metrics" / "floors.json"
VARIANTS = ("int8_smoothquant", "int8_mixed", "nbits_w4_mixed")
SHARED = ("data/audio", "data/reference", "data/corpus", "models/base")


@contextmanager
def unsnapped(noise: float, seed: int) -> Iterator[None]:
    """Statistics used as computed, each with relative noise `noise` (the pre-snapping pipeline on another CPU)."""
    rng = np.random.default_rng(seed)

    def jitter(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return values * (1 + noise * rng.standard_normal(values.shape))

    def jittered_hessians(*args: object) -> dict[str, np.ndarray]:  # GPTQ's statistic is used unsnapped anyway
        return {name: jitter(h) for name, h in hessians(*args).items()}

    saved, hessians = (stable.snap_pow2, stable.snap_mantissa), gptq.stream_hessians
    stable.snap_pow2 = jitter
    stable.snap_mantissa = lambda value, bits=stable.MANTISSA_BITS: float(jitter(np.array(value)))
    gptq.stream_hessians = jittered_hessians
    try:
        yield
    finally:
        (stable.snap_pow2, stable.snap_mantissa), gptq.stream_hessians = saved, hessians


def scratch_project(tmp: Path) -> Path:
    for rel in SHARED:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).symlink_to(ROOT / rel)
    return tmp


def build_and_score(project: Path, windows: Path, variants: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The calibrated variants built from `windows`, evaluated greedily: variant -> set -> WER %."""
    p = load_params(ROOT / "params.yaml")
    smoothed = project / "models/smoothed"
    smoothquant.smooth_encoder(ROOT / smoothquant.SOURCE, smoothed, windows, p.smooth.alpha)
    source = smoothed / smoothquant.SOURCE.name
    keep = {"int8_smoothquant": (), "int8_mixed": most_sensitive(ROOT / DIAGNOSIS_FILE, p.mixed.keep_fp32)}
    eval_params = dataclasses.replace(p.eval, decodings=["greedy"])
    evals = {BASELINE: decoding_view(read_json(ROOT / METRICS_DIR / f"{BASELINE}.json"), "greedy")}
    for variant in variants:
        if variant == "nbits_w4_mixed":  # aware scales and GPTQ, from the same windows
            recipe = variant.removeprefix("nbits_")
            nbits.build_nbits(ROOT / nbits.SOURCE, project / "models/variants" / variant, nbits.file_name(recipe),
                              p.nbits[recipe], windows, p.aware, p.seed, p.gptq)
        else:
            build_int8(source, project / "models/variants" / variant, windows, p.quant.percentile,
                       p.quant.calib_windows, p.fidelity.min_cosine, reduce_range=p.quant.reduce_range,
                       keep_fp32=keep[variant])
        result = evaluate(variant, eval_params, list(p.eval_clips), project, project / "metrics/eval",
                          beam=p.beam, timing_dir=project / "metrics/timing")
        evals[variant] = decoding_view(result, "greedy")
    summary = summarize(evals, 100, p.eval.bootstrap_seed)  # WER only: the draws do not matter here
    return {v: {s: cell["wer_pct"] for s, cell in summary[v].items()} for v in variants}


def spread(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """variant -> set -> min, max, range and standard deviation of the WER over the runs."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for variant in runs[0]:
        for name in runs[0][variant]:
            values = np.array([r[variant][name] for r in runs], dtype=np.float64)
            out.setdefault(variant, {})[name] = {
                "min": round(float(values.min()), 4), "max": round(float(values.max()), 4),
                "range": round(float(np.ptp(values)), 4), "std": round(float(values.std(ddof=1)), 4)}
    return out


def floors(k: int, noise: float, variants: tuple[str, ...], log: Callable[[str], None] = print) -> dict:
    p = load_params(ROOT / "params.yaml")
    perturbed, reseeded = [], []
    started = time.monotonic()
    for i in range(k):
        with tempfile.TemporaryDirectory(prefix="floors-") as tmp:
            project = scratch_project(Path(tmp))
            with unsnapped(noise, seed=i):
                perturbed.append(build_and_score(project, ROOT / "data/windows", variants))
            log(f"perturbation {i + 1}/{k}: {json.dumps(perturbed[-1])} ({time.monotonic() - started:.0f} s)")
        with tempfile.TemporaryDirectory(prefix="floors-") as tmp:
            project = scratch_project(Path(tmp))
            windows = project / "data/windows-seed"
            speakers = list(p.speeches)
            build_windows(ROOT / "data/audio", speakers, windows, eval_clips=list(p.eval_clips),
                          window_s=p.windows.window_s, count=p.windows.count,
                          heldout_per_speaker=p.windows.heldout_per_speaker, seed=p.seed + 1 + i,
                          sample_rate=p.audio.sample_rate)
            reseeded.append(build_and_score(project, windows, variants))
            log(f"calibration seed {p.seed + 1 + i}: {json.dumps(reseeded[-1])} ({time.monotonic() - started:.0f} s)")
    return {"preset": p.preset, "k": k, "noise": noise, "decoding": "greedy", "seconds": round(time.monotonic() - started),
            "perturbation": spread(perturbed), "calibration": spread(reseeded),
            "shared_with": {"int8_blockwise": "int8_smoothquant"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5, help="builds per floor (at least 2)")
    parser.add_argument("--noise", type=float, default=1e-6, help="relative last-bit noise of the perturbation")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--add", action="store_true", help="keep --out's other variants, measure these (same k and noise)")
    args = parser.parse_args()
    if args.k < 2:
        parser.error("--k must be at least 2 (a spread needs two builds)")
    result = floors(args.k, args.noise, tuple(args.variants))
    if args.add and args.out.is_file():
        kept = read_json(args.out)
        for floor in ("perturbation", "calibration"):
            result[floor] = {**kept[floor], **result[floor]}
        if (kept["k"], kept["noise"], kept["preset"]) != (result["k"], result["noise"], result["preset"]):
            parser.error(f"--add: {args.out} was measured with k={kept['k']}, noise={kept['noise']}, "
                         f"preset {kept['preset']}; use the same")
        result["seconds"] += kept["seconds"]
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
