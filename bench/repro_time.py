"""What a forced `dvc repro` of the demo costs, stage by stage: `python -m bench.repro_time`.

A fresh clone of this repository's HEAD in a temporary folder (this venv, its own DVC cache), then
`dvc repro --force`: every stage runs, as after a change at the top of the pipeline. Each stage's time is
read off DVC's own "Running stage" lines (one stage's start to the next one's). `--compare` turns on the
heaviest comparisons first (params.yaml compare: what `make compare` runs). Writes metrics/repro_time.json
(or metrics/repro_time_compare.json) and prints the stages that took longest; the report renders the file
into docs/costs.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from bench.meter import machine
from requant.variants import COMPARISON_ROWS, VARIANTS
from requant.common import fail, run_cli, write_json

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 3 * 3600  # a forced demo run takes 15-40 min on 2 cores; three hours means it hangs
STAGE = re.compile(r"^Running stage '([^']+)':")


def turn_on_comparisons(params_file: Path) -> None:
    params = yaml.safe_load(params_file.read_text())
    params["compare"] = {"longform": ["all"], "builds": ["all"],
                         "rows": {v: str(VARIANTS[v].folder) for v in COMPARISON_ROWS}}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def forced_run(repo: Path) -> dict[str, float]:
    """Seconds per stage of `dvc repro --force` in repo, in the order DVC ran them."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo)}
    started, stages, current, tail = time.perf_counter(), {}, None, ""
    with subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force"], cwd=repo, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as run:
        watchdog = threading.Timer(TIMEOUT_S, run.kill)  # a stage that hangs without a word is stopped too
        watchdog.start()
        for line in run.stdout:
            if match := STAGE.match(line):
                now = time.perf_counter() - started
                if current:
                    stages[current] = round(now - stages[current], 1)
                current, stages[match[1]] = match[1], now
            tail = line.strip() or tail
        watchdog.cancel()
    if run.returncode != 0:
        fail(f"dvc repro --force in {repo} failed or ran past {TIMEOUT_S} s: {tail}")
    if current:
        stages[current] = round(time.perf_counter() - started - stages[current], 1)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.repro_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", action="store_true", help="with the heaviest comparisons on (make compare)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or ROOT / "metrics" / ("repro_time_compare.json" if args.compare else "repro_time.json")
    with tempfile.TemporaryDirectory(prefix="repro-time-") as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True, timeout=600)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True, timeout=60).stdout.strip()
        if args.compare:
            turn_on_comparisons(repo / "params.yaml")
        stages = forced_run(repo)
    total = round(sum(stages.values()), 1)
    write_json(out, {"commit": commit, "compare": args.compare, "machine": machine(), "total_s": total,
                     "stages": stages})
    print(f"forced dvc repro at {commit} ({'comparisons on' if args.compare else 'default'}): {total / 60:.1f} min")
    for name, seconds in sorted(stages.items(), key=lambda item: -item[1])[:12]:
        print(f"  {name:<32} {seconds:7.1f} s")


if __name__ == "__main__":
    run_cli(main)
