"""Stand-ins for a second kind of CPU: onnxruntime sessions whose float results differ in the last bits.

MLAS picks its kernels by instruction set, so calibration statistics computed on another x86 CPU differ in
their last bits. With one CPU kind at hand, the same kind of difference comes from running every session
(ours and onnxruntime's calibrators) with all graph optimizations or none, and with 1 or 2 intra-op
threads. `python -m bench.standins` rebuilds the calibrated encoders under each and compares their bytes
with the ones dvc.lock records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

from requant.stable import machine

ROOT = Path(__file__).resolve().parents[1]
# (graph optimization level, intra-op threads); None keeps what the code asks for
KINDS = {
    "optimizations-all": (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, None),
    "optimizations-none": (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, None),
    "threads-1": (None, 1),
    "threads-2": (None, 2),
}
# the stages whose outputs rest on calibration statistics, in pipeline order, and their outputs; diagnose
# (6 min on the demo) only with --with-diagnose: int8_mixed reads the committed diagnosis otherwise
CALIBRATED = {"smoothquant": "models/smoothed", "int8": "models/variants/int8_smoothquant",
              "diagnose": "metrics/diagnosis.json", "int8_mixed": "models/variants/int8_mixed"}


def apply(kind: str) -> None:
    """From now on, every onnxruntime session of this process runs as the stand-in `kind` does, whatever
    its code sets (onnxruntime's calibrators switch optimizations off themselves)."""
    level, threads = KINDS[kind]
    base = ort.SessionOptions

    class StandIn(base):  # type: ignore[misc, valid-type]
        def __setattr__(self, name: str, value: object) -> None:
            if name == "graph_optimization_level" and level is not None:
                value = level
            if name == "intra_op_num_threads" and threads is not None:
                value = threads
            super().__setattr__(name, value)

        def __init__(self) -> None:
            super().__init__()
            if level is not None:
                self.graph_optimization_level = level
            if threads is not None:
                self.intra_op_num_threads = threads

    ort.SessionOptions = StandIn


def tree_md5(path: Path) -> str:
    """The hash DVC records for a file, or for a folder (the md5 of its sorted listing, ending '.dir')."""
    if path.is_file():
        return hashlib.md5(path.read_bytes()).hexdigest()
    listing = [{"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(path).as_posix()}
               for f in sorted(path.rglob("*")) if f.is_file()]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def locked_md5(stage: str, out: str) -> str:
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == out)


def run_stage(project: Path, stage: str, kind: str) -> None:
    code = f"from bench.standins import apply; apply({kind!r}); import runpy; " \
           f"runpy.run_module('stages.{stage}', run_name='__main__')"
    env = {**os.environ, "PYTHONPATH": str(project)}
    subprocess.run([sys.executable, "-c", code], cwd=project, env=env, check=True, timeout=3600)


def flip_nearest_range(windows: Path = ROOT / "data/windows") -> dict[str, float]:
    """What a flip costs: the int8 activation range nearest a grid edge snapped the other way (what another
    CPU could do to it), the encoder rebuilt, and its outputs on the held-out windows compared with the
    committed int8 encoder's."""
    from requant import encoder_runs as runs
    from requant import stable
    from requant import static_int8
    from stages import int8

    seen: list[tuple[float, float]] = []
    snap = stable.snap_mantissa

    def record(value: float, bits: int = stable.MANTISSA_BITS) -> float:
        seen.append((stable.mantissa_edge_distance(value, bits), value))
        return snap(value, bits)

    def flip(value: float, bits: int = stable.MANTISSA_BITS) -> float:
        """The target to the grid neighbour on the other side of its edge; every other value as usual."""
        if value != target:
            return snap(value, bits)
        mantissa, exponent = np.frexp(abs(value))
        steps = 2 ** (bits + 1)
        low, high = (np.ldexp(k, int(exponent) - bits - 1) for k in (np.floor(mantissa * steps),
                                                                      np.floor(mantissa * steps) + 1))
        return float(np.copysign(low if snap(value, bits) == np.copysign(high, value) else high, value))

    source, committed = ROOT / static_int8.SMOOTHED, ROOT / int8.OUT_DIR / static_int8.NAME
    with tempfile.TemporaryDirectory(prefix="flip-") as tmp:
        stable.snap_mantissa = record
        static_int8.build_int8(source, Path(tmp) / "again", windows, 99.999, 0, min_cosine=0.9)
        distance, target = min(seen)
        stable.snap_mantissa = flip
        try:
            static_int8.build_int8(source, Path(tmp) / "flipped", windows, 99.999, 0, min_cosine=0.9)
        finally:
            stable.snap_mantissa = snap
        heldout = runs.Windows(windows, "heldout")
        before = runs.encoder_outputs(committed, heldout, "committed int8")
        after = runs.encoder_outputs(Path(tmp) / "flipped" / static_int8.NAME, heldout, "flipped int8")
    return {"edge_distance": distance, "range_end": target, **runs.compare(before, after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--with-diagnose", action="store_true", help="rebuild the diagnosis too (6 min each)")
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "standins.json")
    parser.add_argument("--flip", action="store_true", help="only measure what flipping one range does")
    args = parser.parse_args()
    if args.flip:
        print(json.dumps(flip_nearest_range(), indent=2))
        return
    stages = {s: o for s, o in CALIBRATED.items() if s != "diagnose" or args.with_diagnose}
    results = {}
    for kind in args.kinds:
        with tempfile.TemporaryDirectory(prefix="standin-") as tmp:
            project = Path(tmp) / "repo"
            shutil.copytree(ROOT, project, symlinks=True,
                            ignore=shutil.ignore_patterns(".venv", ".git", ".dvc", "node_modules", "__pycache__"))
            for out in stages.values():
                if (project / out).is_dir():
                    shutil.rmtree(project / out)
            row = {}
            for stage, out in stages.items():
                run_stage(project, stage, kind)
                row[stage] = tree_md5(project / out) == locked_md5(stage, out)
            results[kind] = row
            print(f"{kind:20s} " + "  ".join(f"{s}: {'same bytes' if ok else 'DIFFERENT'}" for s, ok in row.items()),
                  flush=True)
    args.out.write_text(json.dumps({"machine": machine(), "same_bytes_as_dvc_lock": results}, indent=2,
                                   sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
