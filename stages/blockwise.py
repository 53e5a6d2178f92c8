"""Stage `blockwise`: the fp32 and SmoothQuant int8 encoders rewritten for passes of any length.

requant/positions.py lets the positional table take any pass length (stored rows bit for bit, NeMo's
formula past them). requant/attention.py rewrites every relative-position attention of the export into
an ONNX Loop over blocks of `blockwise.block` queries: the same arithmetic, but no [B, H, T, 2T-1] or
[B, H, T, T] tensor, so a pass's activation memory grows linearly with its length; with `local.context`
each block only meets the keys in its band (NeMo's rel_pos_local_attn), so time is linear too.
requant/subsampling.py runs the convolutional subsampling over chunks of `blockwise.subsampling_block`
output frames. Exactness gate: each rewritten encoder must equal its reference (the source; for local
attention the source with the band added to its mask) within blockwise.max_rel_error (relative to the
largest output) on every held-out window and on the longest calibration speech cut to blockwise.gate_s
(the longest pass the unrewritten encoder's [T, T] attention affords), with the same encoded lengths; and
over one pass of that speech up to eval.max_s, the rewrite must equal itself rewritten with other block
sizes (every block boundary moved; a quantized local encoder, whose int8 roundings flip with the band's
summation order, must instead stay as close to its float encoder rewritten as with the other blocks, within
blockwise.quantized_share in relative L2). Else the stage fails and writes nothing. Weights are copied
byte for byte. Outputs: models/variants/{fp32,int8}_{blockwise,local}/encoder-model[.int8].onnx.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from requant import attention, stable
from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant.audio import read_wav
from requant.common import atomic_path, fail, run_cli, write_json
from requant.long_pass import rewrite_long_pass
from requant.params import BlockwiseParams, load_params

log = logging.getLogger("pipeline.blockwise")

FP32, INT8 = Path("models/base/encoder-model.onnx"), Path("models/variants/int8_smoothquant/encoder-model.int8.onnx")
SOURCES = {"fp32_blockwise": (FP32, False), "int8_blockwise": (INT8, False),  # variant: source, local attention
           "fp32_local": (FP32, True), "int8_local": (INT8, True)}
UNQUANTIZED = {INT8: Path("models/smoothed/encoder-model.onnx")}  # the float encoder int8 was quantized from
OUT_ROOT, WINDOWS, AUDIO = Path("models/variants"), Path("data/windows"), Path("data/audio")


def longest_speech(audio_dir: Path, speeches: list[str], max_s: float) -> np.ndarray:
    """The longest decoded calibration speech, cut to one pass (never an evaluation clip)."""
    paths = [audio_dir / f"{name}.wav" for name in speeches if (audio_dir / f"{name}.wav").is_file()]
    if not paths:
        fail(f"no decoded speech in {audio_dir}: the exactness gate needs one long pass; run `dvc repro decode`")
    return max((read_wav(p) for p in paths), key=len)[: int(max_s * 16000)]


def build_blockwise(src: Path, dst_dir: Path, params: BlockwiseParams, checks: list[np.ndarray],
                    context: list[int] | None = None, unquantized: Path | None = None,
                    long_pass: np.ndarray | None = None) -> dict:
    """Rewrite src into dst_dir (same file name, atomically) after the exactness gate; return its figures.
    checks: clips short enough for the unrewritten reference (its attention's memory grows with T^2).
    unquantized: the float encoder a quantized src was made from (its local-attention gate, below).
    long_pass: a clip too long for the reference: the rewrite must equal itself rewritten with other block
    sizes on it (every block boundary moves; the arithmetic per query is the same)."""
    source = og.load_graph(src)
    try:
        rewritten, report = rewrite_long_pass(source, params, src.parent, context)
    except ValueError as err:
        fail(f"{src}: {err}; nothing written (if the table is right, raise blockwise.pos_tolerance)")
    if report["sites"] == 0 or (context and report["refused"]):  # refused: metrics/blockwise.json says why
        if context:
            fail(f"{src}: local attention needs the export's attention pattern; none matches "
                 f"({'; '.join(report['refused'][:2]) or 'no Softmax'}); set local.context to null (full "
                 "attention) to build the other variants")
        log.warning("%s: no attention matches the export's pattern (%s); left as it is", src,
                    "; ".join(report["refused"][:2]) or "no Softmax")
    if report["subsampling_refused"]:
        log.warning("%s: subsampling left as it is: %s", src, report["subsampling_refused"])
    what = f"the band-masked original (context {context})" if context else "the original"
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir(parents=True)
        og.write_model(rewritten, src.parent, tmp / src.name)
        reference = _run_all(_reference(src, context, tmp), checks)  # one session at a time
        candidate = _run_all(tmp / src.name, checks)
        worst, lengths_equal = _difference(reference, candidate)
        ok, allowed = worst <= params.max_rel_error, f"{params.max_rel_error:g} (blockwise.max_rel_error)"
        if context and unquantized is not None:
            # the band sums over fewer keys: last-bit differences in the fp32 attention flip int8 roundings
            # downstream. A quantized encoder must then stay as close to its float reference as the original
            # is: its error may grow by at most blockwise.quantized_share.
            float_reference = _run_all(_reference(unquantized, context, tmp), checks)
            quantization, rewritten_error = (_difference(float_reference, run)[0] for run in (reference, candidate))
            ok = rewritten_error <= (1 + params.quantized_share) * quantization
            allowed = (f"its error against the float encoder {rewritten_error:.3g} must stay within "
                       f"{1 + params.quantized_share:g} x the original's {quantization:.3g}")
            report |= {"quantization_rel_error": stable.stable_error(quantization),
                       "rewritten_quantization_rel_error": stable.stable_error(rewritten_error)}
        if long_pass is not None:
            other = dataclasses.replace(params, block=params.block + params.block // 2 + 1,
                                        subsampling_block=params.subsampling_block // 2 + 1,
                                        frame_block=params.frame_block // 2 + 1)
            og.write_model(rewrite_long_pass(source, other, src.parent, context)[0], src.parent, tmp / "reference-blocks")
            theirs, mine = _run_all(tmp / "reference-blocks", [long_pass]), _run_all(tmp / src.name, [long_pass])
            self_difference, same_lengths = _difference(theirs, mine)
            report["long_pass_s"], report["long_pass_rel_error"] = len(long_pass) / 16000, self_difference
            agrees = self_difference <= params.max_rel_error
            if not agrees and context and unquantized is not None:
                # as in the gate above: other blocks sum each band in another order, and last-bit differences
                # flip int8 roundings downstream. Both block sizes must then stay as close to the float encoder
                # (rewritten: its unrewritten pass would not fit) as each other, in relative L2 error.
                float_pass = tmp / "reference-float.onnx"
                og.write_model(rewrite_long_pass(og.load_graph(unquantized), params, unquantized.parent, context)[0],
                               unquantized.parent, float_pass)
                float_out = _run_all(float_pass, [long_pass])[0][0]
                errors = [runs.relative_error(float_out, run[0][0]) for run in (mine, theirs)]
                agrees = max(errors) <= (1 + params.quantized_share) * min(errors)
                report["long_pass_quantization_rel_l2"] = [stable.stable_error(e) for e in errors]
            if not (agrees and same_lengths):
                fail(f"{src}: over a {len(long_pass) / 16000:g} s pass the rewrite differs from itself with blocks of "
                     f"{other.block} queries by {self_difference:.3g} (allowed: {params.max_rel_error:g}, "
                     f"blockwise.max_rel_error; lengths equal: {same_lengths}); nothing written")
        for scratch in tmp.glob("reference-*"):
            scratch.unlink()
        if not (ok and lengths_equal):  # NaN fails too
            fail(f"{src}: the rewrite differs from {what} by {worst:.3g} (relative; allowed: {allowed}; lengths "
                 f"equal: {lengths_equal}); nothing written")
    log.info("%s -> %s: %d attention sites over blocks of %d queries (%s), subsampling %s; max relative "
             "difference from %s %.3g (allowed: %s)", src, dst_dir.name, report["sites"], params.block,
             f"keys within {context}" if context else "all keys",
             "chunked" if report["subsampling_chunked"] else "whole", what, worst, allowed)
    if "long_pass_rel_error" in report:
        report["long_pass_rel_error"] = stable.stable_error(report["long_pass_rel_error"])
    return {**report, "max_rel_error": stable.stable_error(worst)}


def _reference(src: Path, context: list[int] | None, scratch: Path) -> Path:
    """What a rewrite must equal: src itself, or for local attention src with the band in its mask."""
    if not context:
        return src
    path = scratch / f"reference-{src.name}"
    og.write_model(attention.band_masked(og.load_graph(src), tuple(context)), src.parent, path)
    return path


def _difference(reference: list, candidate: list) -> tuple[float, bool]:
    """Largest difference relative to the reference's largest output, and whether the lengths are equal."""
    worst, lengths_equal = 0.0, True
    for (ref, ref_len), (new, new_len) in zip(reference, candidate, strict=True):
        worst = max(worst, float(np.abs(ref - new).max()) / (float(np.abs(ref).max()) or 1.0))
        lengths_equal &= bool(np.array_equal(ref_len, new_len))
    return worst, lengths_equal


def _run_all(path: Path, clips: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    session = runs.open_session(path)
    return [tuple(session.run(["outputs", "encoded_lengths"], runs.encoder_feed(session, clip))) for clip in clips]


def main() -> None:
    p = load_params()
    heldout = [w for w in runs.Windows(WINDOWS, "heldout")]
    speech = longest_speech(AUDIO, list(p.speeches), p.eval.max_s)
    # the unrewritten encoders run at most blockwise.gate_s (their attention holds [T, T] per head); the rest
    # of the one pass is checked rewrite against rewrite
    checks = [*heldout, speech[: int(p.blockwise.gate_s * 16000)]]
    long_pass = speech if len(speech) > len(checks[-1]) else None
    report = {name: build_blockwise(src, OUT_ROOT / name, p.blockwise, checks, p.local.context if local else None,
                                    UNQUANTIZED.get(src), long_pass)
              for name, (src, local) in SOURCES.items()}
    write_json(Path("metrics/blockwise.json"), report)


if __name__ == "__main__":
    run_cli(main)
