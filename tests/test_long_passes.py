"""Passes of any length: the positional table extended exactly (requant/positions.py), and local attention
(requant/attention.py with a context) equal to full attention with a band mask, padding included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from demo.fastconformer import PARAKEET, TINY, RandomWeights, build_encoder, sinusoid_table
from requant import patterns, positions
from requant.attention import band_masked, find_sites, rewrite
from tools.census import census

# Parakeet's layout (stored table, no band in the mask) with a table of 40 frames: 3.2 s is the cap
CAPPED = PARAKEET.replace(n_layers=2, d_model=64, n_heads=2, ff_dim=128, subsampling_channels=8, vocab_size=20,
                          pred_hidden=32, joint_hidden=32, pos_max_len=40)
UNCAPPED = CAPPED.replace(pos_max_len=400)  # the same weights with a table ten times as long


def model_of(cfg) -> onnx.ModelProto:
    return build_encoder(RandomWeights(cfg), cfg)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def batch(frames: int, short: int) -> dict[str, np.ndarray]:
    """Two items, the second padded to `frames` encoder frames from `short` (the padding masks matter)."""
    feats = np.random.default_rng(frames).standard_normal((2, 128, frames * 8), dtype=np.float32)
    feats[1, :, short * 8:] = 0.0
    return {"audio_signal": feats, "length": np.array([frames * 8, short * 8])}


def assert_close(got: list[np.ndarray], want: list[np.ndarray], lengths: np.ndarray, rel: float = 1e-5) -> None:
    np.testing.assert_array_equal(got[1], want[1])
    for row, frames in enumerate(lengths):  # the frames each item owns; padded frames are masked downstream
        scale = np.abs(want[0][row, :, :frames]).max()
        assert np.abs(got[0][row, :, :frames] - want[0][row, :, :frames]).max() <= rel * scale


def extended(model: onnx.ModelProto) -> onnx.ModelProto:
    table = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "pos_enc.pe"))
    out, report = positions.extend(model, table, 2e-3)
    assert report["extended"], report
    return out


def test_inside_the_stored_range_the_extension_changes_no_bit() -> None:
    model = model_of(CAPPED)
    feed = batch(40, 23)  # exactly the cap
    np.testing.assert_array_equal(session(extended(model)).run(None, feed)[0], session(model).run(None, feed)[0])


def test_past_the_cap_it_equals_a_longer_stored_table_and_the_census_sees_no_cap() -> None:
    capped = model_of(CAPPED)
    feed = batch(100, 61)  # 8 s: two and a half times the cap
    with pytest.raises(Exception):  # the export's own failure: the slice start goes negative
        session(capped).run(None, feed)
    got = session(extended(capped)).run(None, feed)
    assert_close(got, session(model_of(UNCAPPED)).run(None, feed), feed["length"] // 8)
    assert patterns.positional_limit(capped) == 40 and census(extended(capped))["max_frames"] is None


def test_the_formula_is_checked_against_every_stored_row() -> None:
    stored = sinusoid_table(5000, 1024)
    assert positions.check_formula(stored, 2e-3) < 1e-3  # Parakeet's size: float32 angles up to 5000 rad
    other = stored.copy()
    other[0, 4999 - 3000] *= 1.01  # one row of 9999 off by 1 %
    with pytest.raises(ValueError, match="differs from NeMo's sinusoid"):
        positions.check_formula(other, 2e-3)


def test_a_slice_that_is_not_the_exports_is_refused_and_the_graph_left_unchanged() -> None:
    model = model_of(CAPPED)
    node = patterns.positional_slice(model)[0]
    steps = helper.make_node("Constant", [], ["two_steps"], value=numpy_helper.from_array(np.array([2], np.int64)))
    model.graph.node.insert(0, steps)
    node.input.append("two_steps")
    before = model.SerializeToString()
    out, report = positions.extend(model, np.zeros((1, 79, 64), np.float32), 2e-3)
    assert not report["extended"] and "steps [2]" in report["refused"]
    assert out.SerializeToString() == before


def band_reference(inputs: dict[str, np.ndarray], context: tuple[int, int]) -> np.ndarray:
    """One attention in numpy: full relative-position attention with keys outside [i-left, i+right] masked."""
    qu, k, qv, pe, mask, v = (inputs[name] for name in ("qu", "k", "qv", "pe", "mask", "v"))
    frames = qu.shape[2]
    i, j = np.arange(frames)[:, None], np.arange(frames)[None]
    # pe's column c holds relative position T-1-c; the pair (i, j) has position i-j
    bd = np.einsum("bhid,hdij->bhij", qv, pe[0][:, :, frames - 1 - i + j])
    scores = (qu @ k + bd) / inputs["scale"]
    masked = mask | ((j - i < -context[0]) | (j - i > context[1]))[None, None]
    scores = np.where(masked, -10000.0, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs = np.where(masked, 0.0, probs / probs.sum(-1, keepdims=True))
    return probs @ v


@pytest.mark.parametrize("context", [(5, 5), (3, 9), (0, 4)])
def test_local_attention_equals_full_attention_with_a_band_mask_padding_included(context) -> None:
    model = model_of(CAPPED.replace(pos_max_len=100))
    feed = batch(70, 37)
    site = find_sites(model.graph)[0][0]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = {"qu": site.qu, "k": site.k, "qv": site.qv, "pe": site.pe, "mask": site.mask, "v": site.v,
             "scale": site.scale, "out": site.out}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names.values() if n != site.scale)
    values = dict(zip(["outputs", "encoded_lengths", *[k for k in names if k != "scale"]],
                      session(probe).run(None, feed), strict=True))
    values["scale"] = numpy_helper.to_array(next(n.attribute[0].t for n in model.graph.node
                                                 if n.output[0] == site.scale)) if site.scale not in {
        t.name for t in model.graph.initializer} else numpy_helper.to_array(
        next(t for t in model.graph.initializer if t.name == site.scale))
    local, refused = rewrite(model, 7, context)
    assert refused == [] and "Tile" not in [n.op_type for n in local.graph.node]  # no [B, 1, T, T] mask left
    local_probe = onnx.ModelProto()
    local_probe.CopyFrom(local)
    local_probe.graph.output.append(helper.make_empty_tensor_value_info(site.out))
    got = session(local_probe).run(None, feed)
    want = band_reference(values, context)
    for row, frames in enumerate(feed["length"] // 8):  # one attention, in numpy
        assert np.abs(got[2][row, :, :frames] - want[row, :, :frames]).max() <= 1e-5 * np.abs(want).max()
    assert_close(got[:2], session(band_masked(model, context)).run(None, feed), feed["length"] // 8)  # the encoder


def test_local_attention_past_the_cap_equals_the_band_masked_longer_table() -> None:
    local, _ = rewrite(extended(model_of(CAPPED)), 16, (8, 8))
    feed = batch(100, 55)
    assert_close(session(local).run(None, feed), session(band_masked(model_of(UNCAPPED), (8, 8))).run(None, feed),
                 feed["length"] // 8)


def test_local_attention_reads_only_its_bands_positions() -> None:
    """The positions are cut to the band (block + context each way): every layer projects 2 x 24 + 1 rows, not
    2T - 1, and a pass past the stored table's 40 frames needs no row past it."""
    local, _ = rewrite(model_of(CAPPED), 16, (8, 8))
    assert any(n.name.startswith("/local_positions/") for n in local.graph.node)
    feed = batch(100, 55)
    probe = onnx.ModelProto()
    probe.CopyFrom(local)
    probe.graph.output.append(helper.make_empty_tensor_value_info(patterns.positional_slice(local)[0].output[0]))
    *outputs, positions_read = session(probe).run(None, feed)
    assert positions_read.shape[1] == 2 * (16 + 8) + 1
    assert_close(outputs, session(band_masked(model_of(UNCAPPED), (8, 8))).run(None, feed), feed["length"] // 8)
    short = batch(10, 6)  # fewer frames than the band: the cut keeps the export's 2T - 1 rows
    assert_close(session(local).run(None, short), session(band_masked(model_of(CAPPED), (8, 8))).run(None, short),
                 short["length"] // 8)


def test_the_demo_layout_keeps_its_own_band_when_local_attention_is_narrower() -> None:
    """The demo model's mask already holds a +-64 band: local attention ANDs its own band with it."""
    model = build_encoder(RandomWeights(TINY.replace(n_layers=1, att_context=6)), TINY.replace(n_layers=1,
                                                                                               att_context=6))
    feed = batch(50, 31)
    for context in ((3, 3), (10, 2)):
        local, _ = rewrite(model, 8, context)
        assert_close(session(local).run(None, feed), session(band_masked(model, context)).run(None, feed),
                     feed["length"] // 8)


def test_the_census_reports_the_extended_table() -> None:
    from tools.census import report

    text = report(Path("twin.onnx"), census(extended(model_of(CAPPED))))
    assert "positional table: extended past its stored rows (stage blockwise), no cap" in text
    assert "at most 40 encoder frames per pass (3.2 s of audio)" in report(Path("twin.onnx"), census(model_of(CAPPED)))


def test_the_cap_is_found_through_a_quantizer_s_nodes(tmp_path: Path) -> None:
    """int8 puts Mul / Q / DQ or DynamicQuantizeLinear between the table's Slice and linear_pos: the census
    must still report the cap there (it reported 'no cap' for every quantized encoder before)."""
    from requant import onnx_graph as og
    from stages.int8_dynamic import build_dynamic_int8

    (tmp_path / "fp32").mkdir()
    og.write_model(model_of(CAPPED), tmp_path, tmp_path / "fp32/encoder-model.onnx")
    build_dynamic_int8(tmp_path / "fp32/encoder-model.onnx", tmp_path / "int8")
    quantized = og.load_graph(tmp_path / "int8/encoder-model.int8.onnx")
    assert patterns.positional_limit(quantized) == 40
