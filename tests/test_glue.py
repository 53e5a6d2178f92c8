"""requant/glue.py: the attention's mask as a bias and the shift without its Pad give the export's outputs bit for
bit (padded batches, one frame, banded and global masks), the blockwise rewrites still take the result, and a
site whose fill would not underflow is refused and left as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from demo.fastconformer import TINY, build_random_model
from requant import glue
from requant import onnx_graph as og
from requant.attention import band_masked, find_sites, rewrite
from tests.test_attention import padded_batch, run

LAYERS = 2


@pytest.fixture(scope="module", params=[64, None], ids=["banded", "global"])
def encoder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TINY.replace(n_layers=LAYERS, att_context=request.param)
    return build_random_model(tmp_path_factory.mktemp("glue") / "model", cfg) / "encoder-model.onnx"


def glued(encoder: Path) -> tuple[onnx.ModelProto, dict]:
    model = onnx.load(encoder, load_external_data=False)
    return model, glue.simplify(model)


def one_frame_batch() -> dict[str, np.ndarray]:
    """T = 1 encoder frame (the shift's rows would have 2T-2 = 0 columns), and an item of it padded."""
    signal = np.random.default_rng(0).standard_normal((2, 128, 8), dtype=np.float32)
    return {"audio_signal": signal, "length": np.array([8, 3], np.int64)}


@pytest.mark.parametrize("feed", [padded_batch, one_frame_batch], ids=["padded", "one_frame"])
def test_the_glue_gives_the_exports_outputs_bit_for_bit(encoder: Path, feed) -> None:
    model, summary = glued(encoder)
    assert summary["rewritten"] == summary["sites"] == LAYERS and summary["refused"] == {}
    inputs = feed()
    for ref, new in zip(run(encoder, encoder.parent, inputs), run(model, encoder.parent, inputs)):
        np.testing.assert_array_equal(new, ref)  # padded frames included: the empty rows are zeroed too


def test_the_per_layer_copies_are_gone(encoder: Path) -> None:
    model, summary = glued(encoder)
    before = og.op_counts(onnx.load(encoder, load_external_data=False).graph)
    after = og.op_counts(model.graph)
    # per layer: two [B, H, T, T] Wheres become one [B, H, T, dk] Where, plus one bias for the pass
    assert after["Where"] == before["Where"] - LAYERS + 1 == summary["where_nodes"][1]
    assert after["Pad"] == before["Pad"] - LAYERS  # the shift's Pads (the depthwise convs keep theirs)
    attention_ops = {n.op_type for n in model.graph.node if "/glue." in n.name or "self_attn" in n.name}
    assert "Pad" not in attention_ops
    masks = [n for n in model.graph.node if n.name.startswith("/glue_mask.")]
    assert len({n.name.split("/")[1] for n in masks}) == 1  # one mask, one bias: built once per pass


@pytest.mark.parametrize("context", [None, (8, 8)], ids=["blockwise", "local"])
def test_the_blockwise_rewrites_take_the_glued_attention(encoder: Path, context: tuple[int, int] | None) -> None:
    original = onnx.load(encoder, load_external_data=False)
    model, _ = glued(encoder)
    assert len(find_sites(model.graph)[0]) == LAYERS
    feed = padded_batch()
    (ref, ref_len), (new, new_len) = (run(rewrite(m, 16, context)[0], encoder.parent, feed) for m in (original, model))
    np.testing.assert_array_equal(new_len, ref_len)
    np.testing.assert_array_equal(new, ref)
    if context is not None:  # the local reference (the full attention, banded) reads the glue's mask too
        banded = [run(band_masked(m, context), encoder.parent, feed)[0] for m in (original, model)]
        np.testing.assert_array_equal(banded[1], banded[0])
        assert not np.array_equal(banded[0], run(original, encoder.parent, feed)[0])


def test_a_shift_off_by_one_frame_is_seen(encoder: Path) -> None:
    """The equality above can fail: the same rewrite with the flat rows cut one element late differs."""
    model, _ = glued(encoder)
    skip = next(n for n in model.graph.node if n.name == "/glue_mask.0/skip")
    skip.op_type, skip.input[:] = "Identity", [skip.input[0]]  # T instead of T - 1
    feed = padded_batch()
    assert not np.array_equal(run(model, encoder.parent, feed)[0], run(encoder, encoder.parent, feed)[0])


def test_a_fill_that_would_not_underflow_is_refused_and_left_as_it_was(encoder: Path) -> None:
    model = onnx.load(encoder, load_external_data=False)
    site = find_sites(model.graph)[0][0]
    fill = next(n for n in model.graph.node if n.output and n.output[0] == site.fill)
    fill.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(-1.0, np.float32)))
    before = og.op_counts(model.graph)
    summary = glue.simplify(model)
    assert summary["rewritten"] == LAYERS - 1
    assert summary["refused"] == {"the mask's fills are not constants -1000 or below, and 0": 1}
    assert og.op_counts(model.graph)["Where"] == before["Where"] - (LAYERS - 1) + 1  # that site kept both Wheres


def test_a_glued_graph_is_left_as_it_is(encoder: Path) -> None:
    model, _ = glued(encoder)
    before = og.op_counts(model.graph)
    assert glue.simplify(model)["refused"] == {"already glued": LAYERS}
    assert og.op_counts(model.graph) == before


def test_the_blockwise_body_adds_its_mask_and_moves_no_pad(encoder: Path) -> None:
    """The blocks do as the glue does: per block a [B, 1, R, K] bias instead of two Wheres over [B, H, R, K],
    and the shift without a Pad (their exactness: tests/test_attention.py, every block size)."""
    loops = [n for n in rewrite(onnx.load(encoder, load_external_data=False), 16)[0].graph.node if n.op_type == "Loop"]
    assert len(loops) == LAYERS
    for loop in loops:
        ops = [n.op_type for n in loop.attribute[0].g.node]
        pads = [n.input[0] for n in loop.attribute[0].g.node if n.op_type == "Pad"]
        assert [p.rsplit("/", 1)[-1] for p in pads] == ["ctx"]  # only the block's output, padded to `block` rows
        assert ops.count("Where") == 2 and "ReduceMin" in ops
