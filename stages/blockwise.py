"""Stage `blockwise`: the fp32 and SmoothQuant int8 encoders rewritten for long passes, exactly.

requant/attention.py rewrites every relative-position attention of the export into an ONNX Loop over
blocks of `blockwise.block` queries: the same arithmetic, but no [B, H, T, 2T-1] or [B, H, T, T] tensor,
so a pass's activation memory grows linearly with its length. requant/subsampling.py runs the
convolutional subsampling, whose first outputs are at the feature frame rate, over chunks of
`blockwise.subsampling_block` output frames. Exactness gate: the rewritten encoder
must equal its source within blockwise.max_rel_error (relative to the largest output) on every held-out
window and on one pass over the longest calibration speech (up to eval.max_s), and give the same
encoded lengths; else the stage fails and writes nothing. Weights are copied byte for byte.
Outputs: models/variants/fp32_blockwise/encoder-model.onnx and int8_blockwise/encoder-model.int8.onnx.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from requant import attention, subsampling
from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant.audio import read_wav
from requant.common import atomic_path, fail, run_cli, write_json
from requant.params import BlockwiseParams, load_params

log = logging.getLogger("pipeline.blockwise")

SOURCES = {"fp32_blockwise": Path("models/base/encoder-model.onnx"),
           "int8_blockwise": Path("models/variants/int8_smoothquant/encoder-model.int8.onnx")}
OUT_ROOT, WINDOWS, AUDIO = Path("models/variants"), Path("data/windows"), Path("data/audio")


def longest_speech(audio_dir: Path, speeches: list[str], max_s: float) -> np.ndarray:
    """The longest decoded calibration speech, cut to one pass (never an evaluation clip)."""
    paths = [audio_dir / f"{name}.wav" for name in speeches if (audio_dir / f"{name}.wav").is_file()]
    if not paths:
        fail(f"no decoded speech in {audio_dir}: the exactness gate needs one long pass; run `dvc repro decode`")
    return max((read_wav(p) for p in paths), key=len)[: int(max_s * 16000)]


def rewrite_long_pass(model: onnx.ModelProto, block: int, subsampling_block: int,
                      base_dir: Path) -> tuple[onnx.ModelProto, dict]:
    """Both rewrites, and what each took or refused (base_dir: where the model's external weights are)."""
    loops = sum(n.op_type == "Loop" for n in model.graph.node)
    rewritten, refused = attention.rewrite(model, block)
    sites = sum(n.op_type == "Loop" for n in rewritten.graph.node) - loops
    rewritten, subsampling_refused = subsampling.rewrite(rewritten, subsampling_block, base_dir)
    return rewritten, {"sites": sites, "refused": refused, "block": block,
                       "subsampling_chunked": not subsampling_refused, "subsampling_refused": subsampling_refused,
                       "subsampling_block": subsampling_block}


def build_blockwise(src: Path, dst_dir: Path, params: BlockwiseParams, checks: list[np.ndarray]) -> dict:
    """Rewrite src into dst_dir (same file name, atomically) after the exactness gate; return its figures."""
    rewritten, report = rewrite_long_pass(og.load_graph(src), params.block, params.subsampling_block, src.parent)
    if report["sites"] == 0:  # refused, not failed: metrics/blockwise.json says why
        log.warning("%s: no attention matches the export's pattern (%s); left as it is", src,
                    "; ".join(report["refused"][:2]) or "no Softmax")
    if report["subsampling_refused"]:
        log.warning("%s: subsampling left as it is: %s", src, report["subsampling_refused"])
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir(parents=True)
        og.write_model(rewritten, src.parent, tmp / src.name)
        reference, candidate = (_run_all(path, checks) for path in (src, tmp / src.name))  # one session at a time
        worst, lengths_equal = 0.0, True
        for (ref, ref_len), (new, new_len) in zip(reference, candidate, strict=True):
            worst = max(worst, float(np.abs(ref - new).max()) / (float(np.abs(ref).max()) or 1.0))
            lengths_equal &= bool(np.array_equal(ref_len, new_len))
        if not (worst <= params.max_rel_error and lengths_equal):  # NaN fails too
            fail(f"{src}: the blockwise rewrite differs from the original by {worst:.3g} (relative; allowed "
                 f"blockwise.max_rel_error={params.max_rel_error:g}, lengths equal: {lengths_equal}); nothing written")
    log.info("%s: %d attention sites over blocks of %d queries, subsampling %s; max relative difference %.3g", src,
             report["sites"], params.block, "chunked" if report["subsampling_chunked"] else "whole", worst)
    return {**report, "max_rel_error": worst}


def _run_all(path: Path, clips: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    session = runs.open_session(path)
    return [tuple(session.run(["outputs", "encoded_lengths"], runs.encoder_feed(session, clip))) for clip in clips]


def main() -> None:
    p = load_params()
    heldout = [w for w in runs.Windows(WINDOWS, "heldout")]
    checks = [*heldout, longest_speech(AUDIO, list(p.speeches), p.eval.max_s)]
    report = {name: build_blockwise(src, OUT_ROOT / name, p.blockwise, checks)
              for name, src in SOURCES.items()}
    write_json(Path("metrics/blockwise.json"), report)


if __name__ == "__main__":
    run_cli(main)
