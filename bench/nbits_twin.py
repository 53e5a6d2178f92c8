"""4-bit at Parakeet's size: what building `w4_mixed` costs, and how fast the MatMulNBits encoders run against fp32.

    python -m bench.nbits_twin [--work /tmp/web-check] [--windows 4] [--seconds 30] [--rounds 2]

On the random-weight twin (bench.twin), with the stages' own functions, each step in its own process
(bench.tasks): the pointwise rewrite, then round-to-nearest w4 at blocks 32/64/128 with `accuracy_level` 4
(int8 activations in the kernel) and at block 32 with level 0 (fp32 compute), and params.yaml's
nbits.w4_mixed under the parakeet preset (aware scales, GPTQ, its keep_8bit in 8 bits: build time, peak RSS
and the time of each phase). Round-to-nearest, aware and GPTQ at one grid run the same kernels, so the
round-to-nearest rows time them all. Then one --seconds pass per encoder in a fresh process, the encoders
interleaved, --rounds times (min and max). The twin's weights are random: costs only, no accuracy.
JSON: metrics/bench_nbits_twin.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from bench.cost import pipeline_params, run_task
from bench.fixtures import prepare_twin, speech
from bench.meter import machine
from bench.quantize_more import mb
from requant.common import run_cli, write_json
from requant.params import NbitsRecipe

log = logging.getLogger("bench.nbits_twin")
OUT = Path(__file__).resolve().parents[1] / "metrics/bench_nbits_twin.json"
KERNELS = {"w4 b32": NbitsRecipe(4, 32, True, 4), "w4 b32 level 0": NbitsRecipe(4, 32, True, 0),
           "w4 b64": NbitsRecipe(4, 64, True, 4), "w4 b128": NbitsRecipe(4, 128, True, 4)}


def build(twin: Path, work: Path, windows: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    """Every encoder's file and each build's record; a build already done (its result JSON) is reused."""
    params = pipeline_params()
    records: dict[str, dict] = {}

    def step(label: str, task: str, args: dict) -> None:
        name = label.replace(" ", "_")  # its log and result files
        done = work / "results" / f"{name}.json"
        records[label] = (json.loads(done.read_text()) if Path(args["dst_dir"]).is_dir() and done.is_file()
                          else run_task(task, args, work, name))

    step("pointwise", "pointwise", {"src": str(twin / "encoder-model.onnx"), "dst_dir": str(work / "pointwise"),
                                    "windows_dir": str(windows)})
    source = work / "pointwise/encoder-model.onnx"
    files = {"fp32": twin / "encoder-model.onnx"}
    recipes = {**KERNELS, "w4_mixed": params.nbits["w4_mixed"]}
    for label, recipe in recipes.items():
        folder = work / label.replace(" ", "_")
        step(label, "nbits", {"src": str(source), "dst_dir": str(folder), "name": "encoder.onnx",
                              "recipe": dataclasses.asdict(recipe), "windows_dir": str(windows),
                              "aware": dataclasses.asdict(params.aware), "gptq": dataclasses.asdict(params.gptq)})
        files[label] = folder / "encoder.onnx"
    return files, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/web-check"), help="holds (or gets) the twin")
    parser.add_argument("--windows", type=int, default=4, help="calibration windows (30 s each)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    twin = prepare_twin(args.work, args.windows)
    work = args.work / "nbits-twin"
    files, records = build(twin, work, args.work / "windows")
    audio = work / "speech.npy"
    np.save(audio, speech(args.seconds, 21))
    times: dict[str, list[float]] = {name: [] for name in files}
    rss: dict[str, float] = {}
    for round_ in range(args.rounds):
        for name, encoder in files.items():
            record = run_task("encoder_pass", {"model": str(encoder), "audio": str(audio), "seconds": args.seconds},
                              work, f"pass-{name.replace(' ', '_')}-{round_}")
            times[name].append(round(record["phases"]["pass"]["wall_s"], 2))
            rss[name] = max(rss.get(name, 0.0), round(record["peak_rss_mb"], 1))
    fp32 = min(times["fp32"])
    rows = {name: {"encoder_mb": mb(path), "pass_s_min": min(times[name]), "pass_s_max": max(times[name]),
                   "x_fp32": round(fp32 / min(times[name]), 2), "peak_rss_mb": rss[name]} for name, path in files.items()}
    builds = {label: {"wall_s": round(r["wall_s"], 1), "peak_rss_gb": round(r["peak_rss_mb"] / 1e3, 2),
                      "phases_s": {k: round(v["wall_s"], 1) for k, v in r.get("phases", {}).items()},
                      **({"gptq": r["gptq"]} if r.get("gptq") else {})} for label, r in records.items()}
    write_json(OUT, {"machine": machine(), "windows": args.windows, "seconds": args.seconds, "rounds": args.rounds,
                     "encoders": rows, "builds": builds})
    m = machine()
    print(f"CPU: {m['cpu_model']} ({m['cpus']} cores; {', '.join(m['isa'][-4:])}); one {args.seconds:g} s pass")
    print(f"{'encoder':<16} {'MB':>6} {'pass s':>14} {'x fp32':>7} {'peak MB':>8}")
    for name, row in rows.items():
        print(f"{name:<16} {row['encoder_mb']:>6.0f} {row['pass_s_min']:>6.2f}-{row['pass_s_max']:<6.2f} "
              f"{row['x_fp32']:>7.2f} {row['peak_rss_mb']:>8.0f}")
    for label, row in builds.items():
        print(f"build {label}: {row['wall_s']:.0f} s, peak {row['peak_rss_gb']:.2f} GB, phases {row['phases_s']}")


if __name__ == "__main__":
    run_cli(main)
