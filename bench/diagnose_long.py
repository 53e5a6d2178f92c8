"""The diagnosis past 400 s: per-MatMul error of static and dynamic int8 by pass length, full vs local attention.

    python -m bench.diagnose_long [--lengths 60 390 1200] [--context 32 32]

Stage diagnose stops at 400 s: its graphs carry the export's positional table. Here the fp32 sources
(base and smoothed) and the int8 variants (SmoothQuant static, stock-recipe dynamic) are first rewritten
for any length with the blockwise stage's code, once with full attention and once with local attention
over --context frames, then stage diagnose's own measurement runs on each set: the relative error of
every quantized MatMul against its fp32 source (each fed the fp32 graph's own input) and of the encoder
output, on the calibration speeches joined end to end (never the evaluation audio). Demo model, run from
the repository after `dvc repro`. JSON: metrics/diagnosis_long.json; a table on stdout.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from requant import onnx_graph as og
from requant.variants import VARIANTS
from requant.audio import read_wav
from requant.common import run_cli, write_json
from requant.params import load_params
from requant.long_pass import rewrite_long_pass
from stages.diagnose import AUDIO_DIR, BASE, SMOOTHED, diagnose, summarize

OUT = Path("metrics/diagnosis_long.json")
SOURCES = {"int8_smoothquant": SMOOTHED, "int8_dynamic": BASE}


def any_length(src: Path, dst: Path, context: list[int] | None) -> Path:
    model, report = rewrite_long_pass(og.load_graph(src), load_params().blockwise, src.parent, context,
                                      per_frame=False)  # the probe reads every MatMul in the main graph
    if not report["sites"]:
        raise SystemExit(f"{src}: the rewrite did not take this graph")
    og.write_model(model, src.parent, dst)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=float, nargs="+", default=[60.0, 390.0, 1200.0])
    parser.add_argument("--context", type=int, nargs=2, default=None, help="default: params.yaml local.context")
    args = parser.parse_args()
    p = load_params()
    context = args.context or p.local.context
    audio = np.concatenate([read_wav(AUDIO_DIR / f"{name}.wav") for name in p.speeches])
    clips = {s: audio[: round(s * 16000)] for s in args.lengths if s * 16000 <= len(audio)}
    report = {"audio": "the calibration speeches joined", "lengths_s": sorted(clips), "context": context,
              "break_rel_error": p.diagnose.break_rel_error, "attention": {}}
    with tempfile.TemporaryDirectory(prefix="diagnose-long-") as scratch:
        for attention, ctx in (("full", None), ("local", context)):
            folder = Path(scratch) / attention
            folder.mkdir()
            sources = {path: any_length(path, folder / f"{path.parent.name}.onnx", ctx) for path in {BASE, SMOOTHED}}
            variants = {name: (sources[src], any_length(VARIANTS[name].folder / VARIANTS[name].name,
                                                        folder / f"{name}.onnx", ctx))
                        for name, src in SOURCES.items()}
            results = diagnose(variants, sources[BASE], clips)
            report["attention"][attention] = {name: {**r, **summarize(r, p.diagnose.break_rel_error),
                                                     "source": SOURCES[name].as_posix()}  # not the scratch copy
                                              for name, r in results.items()}
    write_json(OUT, report)
    print(f"{'variant':<18} {'attention':<10} " + " ".join(f"{s:>8g}s" for s in sorted(clips)) + "   broken MatMuls")
    for attention, results in report["attention"].items():
        for name, r in results.items():
            print(f"{name:<18} {attention:<10} " + " ".join(f"{r['output_rel_error'][f'{s:g}']:>9.4f}"
                                                          for s in sorted(clips)) + f"   {r['broken']}")


if __name__ == "__main__":
    run_cli(main)
