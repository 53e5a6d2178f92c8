"""Local attention's context, swept: WER of one 20 min pass by context width (demo model).

    python -m bench.local_sweep [--contexts 8 16 32 64 128] [--variants fp32 int8_smoothquant] [--clip long_en]

Runs the longform stage's own `local` cell (requant/recordings.py) on one long-form recording for each
symmetric context, after `dvc repro longform_data`. The demo model was trained with a ±64-frame band:
contexts of 64 and more must give its full-attention result, narrower ones show what cutting costs.
JSON: metrics/local_sweep.json; a table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from requant.common import run_cli, write_json
from requant.params import load_params
from requant.recordings import run_cell

OUT = Path("metrics/local_sweep.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--variants", nargs="+", default=["fp32", "int8_smoothquant"])
    parser.add_argument("--clip", default="long_en")
    args = parser.parse_args()
    p = load_params()
    rows = []
    for variant in args.variants:
        full = run_cell(variant, "full", [args.clip], p, Path("."), {})[args.clip]
        rows.append({"variant": variant, "context": None, "wer_pct": full["wer_pct"], "encode_s": full["encode_s"]})
        for width in args.contexts:
            local = dataclasses.replace(p, local=dataclasses.replace(p.local, context=[width, width]))
            cell = run_cell(variant, "local", [args.clip], local, Path("."), {})[args.clip]
            rows.append({"variant": variant, "context": width, "wer_pct": cell["wer_pct"], "encode_s": cell["encode_s"]})
    write_json(OUT, {"clip": args.clip, "rows": rows})
    print(f"{'variant':<18} {'context':>9} {'WER %':>7} {'encoder s':>10}")
    for r in rows:
        context = "full" if r["context"] is None else f"±{r['context']}"
        print(f"{r['variant']:<18} {context:>9} {r['wer_pct']:>7.2f} {r['encode_s']:>10.1f}")


if __name__ == "__main__":
    run_cli(main)
