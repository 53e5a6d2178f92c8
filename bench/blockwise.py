"""The long-pass rewrites at Parakeet scale: one pass before and after, side by side.

    python -m bench.blockwise --twin /tmp/web-check/twin --int8 /tmp/web-check/int8 [--lengths 30 120 390]
                              [--sweep 16 32 64 128 256]

Rewrites the twin's fp32 encoder and its SmoothQuant int8 encoder (graph only: the rewritten graphs point
at the same weight files) twice: the attention alone (`attention`), then the attention and the
subsampling (`both`, what the blockwise stage ships). It runs bench.tasks' `encoder_pass` on the original
and each rewrite in turn, each in its own process, for each pass length, and prints pass time, peak RSS
and the largest difference from the original's outputs (relative to their largest value: the exactness
gate at full scale). `--sweep` then times the int8 `both` form at the longest length for each attention
block size and plots the memory/speed trade to metrics/plots/blockwise_block.png. JSON:
metrics/bench_blockwise.json.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import onnx

from bench.cost import run_task
from requant import attention
from requant.common import run_cli, write_json
from requant.params import BlockwiseParams
from requant.long_pass import rewrite_long_pass

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger("bench.blockwise")
OUT, PLOT = Path("metrics/bench_blockwise.json"), Path("metrics/plots/blockwise_block.png")
FORMS = ("original", "attention", "both")


def rewritten_beside(src: Path, form: str, block: int, subsampling_block: int) -> Path:
    """The rewritten graph saved next to src (so that its external data resolves)."""
    model = onnx.load(src, load_external_data=False)
    if form == "attention":
        new, refused = attention.rewrite(model, block)
    else:
        new, report = rewrite_long_pass(model, BlockwiseParams(block, subsampling_block, 0.0), src.parent)
        refused = report["refused"] + [report["subsampling_refused"]] * bool(report["subsampling_refused"])
    if refused:
        log.warning("%s: left as it was: %s", src, refused[0])
    dst = src.with_name(f"{src.stem}.{form}{block}.onnx")
    onnx.save(new, dst)
    return dst


def one_pass(model: Path, audio: Path, seconds: float, work: Path, label: str) -> tuple[dict, np.ndarray]:
    saved = work / f"{label}.npy"
    r = run_task("encoder_pass", {"model": str(model), "audio": str(audio), "seconds": seconds, "save": str(saved)},
                 work, label)
    outputs = np.load(saved)
    saved.unlink()
    return {"pass_s": round(r["phases"]["pass"]["wall_s"], 3), "peak_rss_gb": round(r["peak_rss_mb"] / 1e3, 2)}, outputs


def compare(encoders: dict[str, Path], lengths: list[float], audio: Path, work: Path, block: int,
            subsampling_block: int) -> list[dict]:
    rows = []
    for name, src in encoders.items():
        files = {form: src if form == "original" else rewritten_beside(src, form, block, subsampling_block)
                 for form in FORMS}
        for seconds in lengths:
            reference = None
            for form, model in files.items():
                figures, outputs = one_pass(model, audio, seconds, work, f"{name}-{form}-{seconds:g}")
                reference = outputs if reference is None else reference
                diff = float(np.abs(outputs - reference).max() / np.abs(reference).max())
                rows.append({"variant": name, "form": form, "audio_s": seconds, **figures, "max_rel_diff": diff})
        for form in FORMS[1:]:
            files[form].unlink()
    return rows


def sweep(src: Path, seconds: float, audio: Path, work: Path, blocks: list[int], subsampling_block: int) -> list[dict]:
    rows = []
    for block in blocks:
        model = rewritten_beside(src, "both", block, subsampling_block)
        figures, _ = one_pass(model, audio, seconds, work, f"sweep-{block}")
        rows.append({"block": block, **figures})
        model.unlink()
    return rows


def plot(rows: list[dict], original: dict, seconds: float, path: Path = PLOT) -> None:
    """Pass time and peak RSS by attention block size, the unrewritten encoder's as a dashed line."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    blocks = [r["block"] for r in rows]
    for ax, key, label in zip(axes, ("pass_s", "peak_rss_gb"), ("pass time (s)", "peak RSS (GB)")):
        ax.plot(blocks, [r[key] for r in rows], "o-", label="blockwise attention + chunked subsampling")
        ax.axhline(original[key], color="grey", linestyle="--", label="original graph")
        ax.set(xscale="log", xlabel="queries per attention block", ylabel=label, ylim=(0, None))
        ax.set_xticks(blocks, [str(b) for b in blocks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[1].legend(loc="center right", fontsize=8)
    fig.suptitle(f"SmoothQuant int8, Parakeet-size twin, one {seconds:g} s pass")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version stamp: same figures, same bytes
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twin", type=Path, required=True, help="python -m bench.twin folder")
    parser.add_argument("--int8", type=Path, required=True, help="folder of the twin's SmoothQuant int8 encoder")
    parser.add_argument("--lengths", type=float, nargs="+", default=[30.0, 120.0, 390.0])
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--subsampling-block", type=int, default=256)
    parser.add_argument("--sweep", type=int, nargs="*", default=[], help="attention block sizes to time at the end")
    args = parser.parse_args()
    from demo.synth import make_speech

    encoders = {"fp32": args.twin / "encoder-model.onnx", "int8_smoothquant": args.int8 / "encoder-model.int8.onnx"}
    longest = max(args.lengths)
    with tempfile.TemporaryDirectory(prefix="bench-blockwise-") as scratch:
        work = Path(scratch)
        audio = work / "speech.npy"
        np.save(audio, make_speech("en", "en-us+m3", longest, 11)[0])
        rows = compare(encoders, args.lengths, audio, work, args.block, args.subsampling_block)
        swept = sweep(encoders["int8_smoothquant"], longest, audio, work, args.sweep, args.subsampling_block)
    write_json(OUT, {"block": args.block, "subsampling_block": args.subsampling_block, "passes": rows,
                     "sweep": {"audio_s": longest, "passes": swept}})
    print(f"{'variant':<17} {'pass':>6} " + " ".join(f"{form + ' s / GB / diff':>26}" for form in FORMS))
    for name in encoders:
        for seconds in args.lengths:
            cells = {r["form"]: r for r in rows if r["variant"] == name and r["audio_s"] == seconds}
            print(f"{name:<17} {seconds:>5g}s " + " ".join(
                f"{cells[f]['pass_s']:>9.1f} / {cells[f]['peak_rss_gb']:5.2f} / {cells[f]['max_rel_diff']:7.1e}"
                for f in FORMS))
    if swept:
        plot(swept, next(r for r in rows if r["variant"] == "int8_smoothquant" and r["form"] == "original"
                         and r["audio_s"] == longest), longest)
        print(f"int8, {longest:g} s, by attention block: " + ", ".join(
            f"{r['block']}: {r['pass_s']:.1f} s / {r['peak_rss_gb']:.2f} GB" for r in swept) + f"  ({PLOT})")


if __name__ == "__main__":
    run_cli(main)
