"""requant/attention.py: the blockwise attention rewrite is exact on the export's pattern, refuses others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from demo.fastconformer import TINY, build_random_model
from requant import encoder_runs as runs
from requant.attention import find_sites, rewrite
from requant.features import features
from tools.census import census
from tests.encoder_graph import speechlike


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_random_model(tmp_path_factory.mktemp("attention") / "model", TINY.replace(n_layers=2))
    return folder / "encoder-model.onnx"


def padded_batch() -> dict[str, np.ndarray]:
    """Two utterances of different lengths in one batch: the padding masks matter."""
    long, long_len = features(speechlike(9.0, 1))
    short, short_len = features(speechlike(4.3, 2))
    signal = np.zeros((2, 128, long.shape[2]), np.float32)
    signal[0], signal[1, :, : short.shape[2]] = long[0], short[0]
    return {"audio_signal": signal, "length": np.concatenate([long_len, short_len])}


def run(model: onnx.ModelProto | Path, folder: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = runs.open_session(model, folder) if isinstance(model, onnx.ModelProto) else runs.open_session(model)
    return session.run(["outputs", "encoded_lengths"], feed)


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])  # one query; not dividing T; T in two; all in one
def test_the_rewrite_is_exact_with_padding_in_the_batch(encoder: Path, block: int) -> None:
    model = onnx.load(encoder, load_external_data=False)
    rewritten, refused = rewrite(model, block)
    assert refused == []
    ops = [n.op_type for n in rewritten.graph.node]
    attention = [n.op_type for n in rewritten.graph.node if "self_attn" in n.name]
    assert ops.count("Loop") == 2 and "Softmax" not in ops and "Pad" not in attention  # no T x T tensor outside
    feed = padded_batch()
    (ref, ref_len), (new, new_len) = run(encoder, encoder.parent, feed), run(rewritten, encoder.parent, feed)
    np.testing.assert_array_equal(new_len, ref_len)
    for row, frames in enumerate(ref_len):  # the frames each utterance owns: padding rows are masked anyway
        got, want = new[row, :, :frames], ref[row, :, :frames]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_a_pattern_that_is_not_the_exports_is_refused_and_left_as_it_was(encoder: Path) -> None:
    model = onnx.load(encoder, load_external_data=False)
    sites, _ = find_sites(model.graph)
    pad = next(n for n in sites[0].nodes if n.op_type == "Pad")
    other = onnx.helper.make_node("Constant", [], ["odd_pads"], value=numpy_helper.from_array(
        np.array([0, 0, 0, 2, 0, 0, 0, 0], np.int64), "odd_pads"))  # a shift by two: not rel_shift
    model.graph.node.insert(0, other)
    pad.input[1] = "odd_pads"
    rewritten, refused = rewrite(model, 16)
    assert len(refused) == 1 and "not the export's rel_shift" in refused[0]
    ops = [n.op_type for n in rewritten.graph.node]
    attention = [n.op_type for n in rewritten.graph.node if "self_attn" in n.name]
    assert ops.count("Loop") == 1 and ops.count("Softmax") == 1 and attention.count("Pad") == 1
    assert census(rewritten)["attention"] == {"blockwise_ready": 0, "loops": 1, "refused": refused}
    assert census(model)["attention"]["blockwise_ready"] == 1
    # local attention must take every attention or none: half local, half full is neither model
    before = model.SerializeToString()
    local, refused = rewrite(model, 16, (8, 8))
    assert len(refused) == 1 and local.SerializeToString() == before


def test_census_counts_the_sites_the_rewrite_takes(encoder: Path) -> None:
    report = census(onnx.load(encoder, load_external_data=False))
    assert report["attention"] == {"blockwise_ready": 2, "loops": 0, "refused": []}
    with pytest.raises(ValueError, match="block=0"):
        rewrite(onnx.load(encoder, load_external_data=False), 0)
