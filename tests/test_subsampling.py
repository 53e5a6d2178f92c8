"""requant/subsampling.py: the chunked subsampling is exact on the export's stack, refuses others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from demo.fastconformer import TINY, build_random_model
from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant.params import BlockwiseParams
from requant.subsampling import PREFIX, find_stack, rewrite
from requant.long_pass import rewrite_long_pass
from tools.census import census
from tests.test_attention import padded_batch, run


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_random_model(tmp_path_factory.mktemp("subsampling") / "model", TINY.replace(n_layers=1))
    return folder / "encoder-model.onnx"


def assert_same_encoding(model: onnx.ModelProto, encoder: Path) -> None:
    feed = padded_batch()  # 9.0 s and 4.3 s: 113 and 54 encoder frames, padding in the batch
    (ref, ref_len), (new, new_len) = run(encoder, encoder.parent, feed), run(model, encoder.parent, feed)
    np.testing.assert_array_equal(new_len, ref_len)
    assert new.shape == ref.shape
    for row, frames in enumerate(ref_len):
        got, want = new[row, :, :frames], ref[row, :, :frames]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# one frame per chunk; a chunk that does not divide 113 (the last one short); 113 in two; all in one
@pytest.mark.parametrize("block", [1, 5, 64, 10_000])
def test_the_chunked_subsampling_is_exact_with_padding_in_the_batch(encoder: Path, block: int) -> None:
    model = onnx.load(encoder, load_external_data=False)
    rewritten, refused = rewrite(model, block, encoder.parent)
    assert refused == ""
    assert not any(n.op_type == "Conv" and n.name.startswith("/pre_encode") for n in rewritten.graph.node)
    assert [n.op_type for n in rewritten.graph.node].count("Loop") == 1
    assert_same_encoding(rewritten, encoder)


def test_the_subsampling_output_is_bit_for_bit_the_same(encoder: Path) -> None:
    """With onnxruntime's default optimizations (NCHWc Convs): a 1e-7 change here flips int8 roundings later."""
    model = onnx.load(encoder)
    stack, _ = find_stack(model.graph)
    alone = og.extract(model, stack.out, "audio_signal")
    rewritten, _ = rewrite(alone, 5, encoder.parent)
    assert not [t for t in rewritten.graph.initializer if t.name in {i for n in stack.nodes for i in n.input}]
    feed = {"audio_signal": padded_batch()["audio_signal"]}
    want, got = (runs.open_session(m, encoder.parent).run(None, feed)[0] for m in (alone, rewritten))
    np.testing.assert_array_equal(got, want)


def test_both_rewrites_together_are_exact_and_the_census_sees_them(encoder: Path) -> None:
    model = onnx.load(encoder, load_external_data=False)
    stack, _ = find_stack(model.graph)
    assert (stack.stride, stack.time_strides, len(stack.nodes)) == (8, (2, 2, 1, 2, 1), 8)  # 5 Convs, 3 Relus
    assert census(model)["subsampling"] == {"chunkable": True, "chunked": False, "stride": 8, "convs": 5,
                                            "refused": ""}
    rewritten, report = rewrite_long_pass(model, BlockwiseParams(7, 3, 1e-5), encoder.parent)
    assert (report["sites"], report["subsampling_chunked"]) == (1, True)
    assert_same_encoding(rewritten, encoder)
    after = census(rewritten)
    assert after["subsampling"]["chunked"] and after["attention"]["loops"] == 1  # the other Loops apart
    assert after["per_frame"]["blocked"] == report["per_frame_modules"]["modules"] == census(model)["per_frame"][
        "blockable"] > 0
    with pytest.raises(ValueError, match="subsampling block=0"):
        rewrite(model, 0)


def test_a_stack_that_is_not_centred_in_time_is_refused_and_left_as_it_was(encoder: Path) -> None:
    model = onnx.load(encoder, load_external_data=False)
    stack, _ = find_stack(model.graph)
    conv = stack.nodes[0]
    del conv.attribute[:]
    conv.attribute.extend([helper.make_attribute("kernel_shape", [3, 3]), helper.make_attribute("strides", [2, 2]),
                           helper.make_attribute("pads", [2, 1, 0, 1])])  # causal in time: the whole past matters
    rewritten, refused = rewrite(model, 16, encoder.parent)
    assert "not centred in time" in refused and conv.name in refused
    assert rewritten.graph == model.graph
    assert census(model)["subsampling"]["refused"] == refused
    assert not any(n.name.startswith(PREFIX) for n in rewritten.graph.node)


def test_an_intermediate_read_twice_ends_the_stack_there(encoder: Path) -> None:
    """A second reader of a Conv's output (a tap): the stack the rewrite takes stops before it."""
    model = onnx.load(encoder, load_external_data=False)
    stack, _ = find_stack(model.graph)
    tapped = stack.nodes[1].output[0]  # the first Relu
    model.graph.node.append(helper.make_node("Identity", [tapped], ["tap"], name="tap"))
    model.graph.output.append(helper.make_tensor_value_info("tap", onnx.TensorProto.FLOAT, None))
    shorter, _ = find_stack(model.graph)
    assert shorter.out == tapped and shorter.time_strides == (2,)
    rewritten, refused = rewrite(model, 5, encoder.parent)
    assert refused == ""
    assert_same_encoding(rewritten, encoder)
