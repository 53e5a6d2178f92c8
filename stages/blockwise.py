"""Stage `blockwise`: the fp32 and SmoothQuant int8 encoders rewritten for passes of any length.

requant/positions.py lets the positional table take any pass length (stored rows bit for bit, NeMo's
formula past them). requant/attention.py rewrites every relative-position attention of the export into
an ONNX Loop over blocks of `blockwise.block` queries: the same arithmetic, but no [B, H, T, 2T-1] or
[B, H, T, T] tensor, so a pass's activation memory grows linearly with its length; with `local.context`
each block only meets the keys in its band (NeMo's rel_pos_local_attn), so time is linear too.
requant/subsampling.py runs the convolutional subsampling over chunks of `blockwise.subsampling_block`
output frames. Exactness gate: each rewritten encoder must equal its reference (the source; for local
attention the source with the band added to its mask) within blockwise.max_rel_error (relative to the
largest output) on every held-out window and on one pass over the longest calibration speech (up to
eval.max_s), with the same encoded lengths; else the stage fails and writes nothing. Weights are copied
byte for byte. Outputs: models/variants/{fp32,int8}_{blockwise,local}/encoder-model[.int8].onnx.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from requant import attention, patterns, positions, subsampling
from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant.audio import read_wav
from requant.common import atomic_path, fail, run_cli, write_json
from requant.params import BlockwiseParams, load_params

log = logging.getLogger("pipeline.blockwise")

FP32, INT8 = Path("models/base/encoder-model.onnx"), Path("models/variants/int8_smoothquant/encoder-model.int8.onnx")
SOURCES = {"fp32_blockwise": (FP32, False), "int8_blockwise": (INT8, False),  # variant: source, local attention
           "fp32_local": (FP32, True), "int8_local": (INT8, True)}
OUT_ROOT, WINDOWS, AUDIO = Path("models/variants"), Path("data/windows"), Path("data/audio")


def longest_speech(audio_dir: Path, speeches: list[str], max_s: float) -> np.ndarray:
    """The longest decoded calibration speech, cut to one pass (never an evaluation clip)."""
    paths = [audio_dir / f"{name}.wav" for name in speeches if (audio_dir / f"{name}.wav").is_file()]
    if not paths:
        fail(f"no decoded speech in {audio_dir}: the exactness gate needs one long pass; run `dvc repro decode`")
    return max((read_wav(p) for p in paths), key=len)[: int(max_s * 16000)]


def rewrite_long_pass(model: onnx.ModelProto, params: BlockwiseParams, base_dir: Path,
                      context: list[int] | None = None) -> tuple[onnx.ModelProto, dict]:
    """The positions extended, then both rewrites; and what each took or refused (base_dir: where the
    model's external weights are). Raises ValueError if the stored table is not NeMo's formula."""
    report: dict = {"context": context}
    if patterns.positional_slice(model) is not None:
        model, report["positions"] = positions.extend(model, patterns.positional_table(model, base_dir),
                                                      params.pos_tolerance)
    else:
        report["positions"] = {"extended": False, "refused": "no stored table: no cap"}
    loops = sum(n.op_type == "Loop" for n in model.graph.node)
    rewritten, refused = attention.rewrite(model, params.block, tuple(context) if context else None)
    sites = sum(n.op_type == "Loop" for n in rewritten.graph.node) - loops
    masks = sum(n.op_type == "Tile" for n in model.graph.node) - sum(n.op_type == "Tile" for n in rewritten.graph.node)
    rewritten, subsampling_refused = subsampling.rewrite(rewritten, params.subsampling_block, base_dir)
    return rewritten, {**report, "sites": sites, "refused": refused, "block": params.block,
                       "mask_computed_per_block": masks > 0,
                       "subsampling_chunked": not subsampling_refused, "subsampling_refused": subsampling_refused,
                       "subsampling_block": params.subsampling_block}


def build_blockwise(src: Path, dst_dir: Path, params: BlockwiseParams, checks: list[np.ndarray],
                    context: list[int] | None = None) -> dict:
    """Rewrite src into dst_dir (same file name, atomically) after the exactness gate; return its figures."""
    source = og.load_graph(src)
    try:
        rewritten, report = rewrite_long_pass(source, params, src.parent, context)
    except ValueError as err:
        fail(f"{src}: {err}; nothing written (if the table is right, raise blockwise.pos_tolerance)")
    if report["sites"] == 0:  # refused, not failed: metrics/blockwise.json says why
        if context:
            fail(f"{src}: local attention needs every attention to be the export's pattern; none is "
                 f"({'; '.join(report['refused'][:2]) or 'no Softmax'}); nothing written")
        log.warning("%s: no attention matches the export's pattern (%s); left as it is", src,
                    "; ".join(report["refused"][:2]) or "no Softmax")
    if report["subsampling_refused"]:
        log.warning("%s: subsampling left as it is: %s", src, report["subsampling_refused"])
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir(parents=True)
        og.write_model(rewritten, src.parent, tmp / src.name)
        if context:
            reference_model = tmp / f"reference-{src.name}"
            og.write_model(attention.band_masked(source, tuple(context)), src.parent, reference_model)
        else:
            reference_model = src
        reference, candidate = (_run_all(path, checks) for path in (reference_model, tmp / src.name))
        if context:
            for stale in tmp.glob("reference-*"):
                stale.unlink()
        worst, lengths_equal = 0.0, True
        for (ref, ref_len), (new, new_len) in zip(reference, candidate, strict=True):
            worst = max(worst, float(np.abs(ref - new).max()) / (float(np.abs(ref).max()) or 1.0))
            lengths_equal &= bool(np.array_equal(ref_len, new_len))
        what = f"the band-masked original (context {context})" if context else "the original"
        if not (worst <= params.max_rel_error and lengths_equal):  # NaN fails too
            fail(f"{src}: the rewrite differs from {what} by {worst:.3g} (relative; allowed "
                 f"blockwise.max_rel_error={params.max_rel_error:g}, lengths equal: {lengths_equal}); nothing written")
    log.info("%s -> %s: %d attention sites over blocks of %d queries (%s), subsampling %s; max relative "
             "difference from %s %.3g", src, dst_dir.name, report["sites"], params.block,
             f"keys within {context}" if context else "all keys",
             "chunked" if report["subsampling_chunked"] else "whole", what, worst)
    return {**report, "max_rel_error": worst}


def _run_all(path: Path, clips: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    session = runs.open_session(path)
    return [tuple(session.run(["outputs", "encoded_lengths"], runs.encoder_feed(session, clip))) for clip in clips]


def main() -> None:
    p = load_params()
    heldout = [w for w in runs.Windows(WINDOWS, "heldout")]
    checks = [*heldout, longest_speech(AUDIO, list(p.speeches), p.eval.max_s)]
    report = {name: build_blockwise(src, OUT_ROOT / name, p.blockwise, checks, p.local.context if local else None)
              for name, (src, local) in SOURCES.items()}
    write_json(Path("metrics/blockwise.json"), report)


if __name__ == "__main__":
    run_cli(main)
