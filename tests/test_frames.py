"""The feed-forward and conv modules over blocks of frames (requant/frames.py): the same outputs as the
unrewritten encoder, bit for bit, on padded batches and across block edges, and patterns it must refuse left
as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from demo.synth import synthesize
from requant import frames
from requant import onnx_graph as og
from requant.features import features
from requant.static_int8 import NAME, build_int8
from stages.pointwise import rewrite_encoder
from stages.smoothquant import smooth_encoder
from tests.encoder_graph import write_windows
from tests.random_model import build_random_model


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The random model as exported (pointwise convs as Convs), as the pipeline makes it (stage pointwise:
    MatMuls, the attention glued), and in static int8 (QDQ) from there."""
    root = tmp_path_factory.mktemp("frames")
    export = build_random_model(root / "model", seed=0) / "encoder-model.onnx"
    windows = write_windows(root / "windows", seconds=2.0)
    rewrite_encoder(export, root / "pointwise", windows)
    fp32 = root / "pointwise" / export.name
    smooth_encoder(fp32, root / "smoothed", windows, alpha=0.5)
    build_int8(root / "smoothed" / export.name, root / "int8", windows, 99.999, 0, min_cosine=0.5)
    return {"export": export, "fp32": fp32, "int8": root / "int8" / NAME}


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    """Two clips padded to one batch: 16 s of speech and a shorter one."""
    speech = np.concatenate([synthesize(t, "en-us") for t in ("the quiet river runs under the old bridge",
                                                              "my brother reads a long letter")] * 3)
    long, long_len = features(speech)
    short, short_len = features(speech[: len(speech) // 2 + 555])
    signal = np.zeros((2, 128, long.shape[2]), np.float32)
    signal[0], signal[1, :, : short.shape[2]] = long[0], short[0]
    return signal, np.concatenate([long_len, short_len])


def run(model: onnx.ModelProto | Path, batch: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(
        None, {"audio_signal": batch[0], "length": batch[1]})


def layers(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "LayerNormalization" and "norm_out" in n.name for n in model.graph.node)


@pytest.mark.parametrize(("kind", "block"), [("int8", 1), ("int8", 7), ("int8", 64), ("int8", 100_000),
                                             ("fp32", 2), ("fp32", 64), ("fp32", 100_000)])
def test_blocked_modules_give_the_same_bits(encoders: dict[str, Path], batch: tuple[np.ndarray, np.ndarray],
                                            kind: str, block: int) -> None:
    """Blocks of one frame, blocks the depthwise kernel's halo crosses, one block for all."""
    model = onnx.load(str(encoders[kind]))
    rewritten, report = frames.rewrite(model, block)
    assert report["modules"] == 3 * layers(model)  # two feed-forward modules and one conv module per layer
    expected, got = run(encoders[kind], batch), run(rewritten, batch)
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


@pytest.mark.parametrize(("kind", "block"), [("fp32", 1), ("fp32", 7), ("export", 7), ("export", 64)])
def test_float_kernels_differ_in_their_last_bits_only(encoders: dict[str, Path], batch: tuple[np.ndarray, np.ndarray],
                                                      kind: str, block: int) -> None:
    """onnxruntime's float GEMM takes another path for blocks of a few rows (1, 3, 7 here), and its Conv sums in
    an order that depends on the number of frames (the export's kernel-1 Convs): float rounding, far inside the
    blockwise stage's exactness gate (1e-5 of the largest output). Integer MatMuls are exact at any block."""
    expected, got = run(encoders[kind], batch), run(frames.rewrite(onnx.load(str(encoders[kind])), block)[0], batch)
    assert np.array_equal(expected[1], got[1])
    assert np.abs(expected[0] - got[0]).max() <= 1e-6 * np.abs(expected[0]).max()


def test_no_module_wide_tensor_is_left_outside_the_loops(encoders: dict[str, Path]) -> None:
    """What grows with T: the feed-forward's [T, 4D] and the conv module's [T, 2D] live in Loop bodies only."""
    for kind in ("fp32", "int8"):
        model = onnx.load(str(encoders[kind]))
        rewritten, _ = frames.rewrite(model, 64)
        modules = [n.name for n in model.graph.node if "/feed_forward" in n.name or "/conv/" in n.name and "/layers." in n.name]
        assert len(modules) > 10 * layers(model)
        assert not [n.name for n in rewritten.graph.node if "/feed_forward" in n.name or "/conv/" in n.name and "/layers." in n.name]


def test_dynamic_int8_is_refused_and_left_as_it_is(encoders: dict[str, Path], tmp_path: Path) -> None:
    """DynamicQuantizeLinear takes its scale over the whole tensor: per block, the bits would change."""
    from onnxruntime.quantization import quantize_dynamic

    path = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(encoders["fp32"]), str(path), op_types_to_quantize=["MatMul"])
    model = onnx.load(str(path))
    rewritten, report = frames.rewrite(model, 64)
    assert report["refused"].get("DynamicQuantizeLinear is not per frame", 0) >= 2
    assert not any(n.name.startswith(frames.PREFIX) for n in rewritten.graph.node if "conv" not in n.name)


def test_a_statistic_over_time_is_refused(encoders: dict[str, Path]) -> None:
    """A feed-forward module that subtracts its mean over time (a made-up pattern) is not per frame."""
    model = onnx.load(str(encoders["fp32"]))
    graph = model.graph
    norm = next(n for n in graph.node if n.op_type == "LayerNormalization" and "feed_forward1" in n.name
                and "layers.0" in n.name)
    mean = helper.make_node("ReduceMean", [norm.output[0]], ["time_mean"], name="time_mean", axes=[1], keepdims=1)
    centred = helper.make_node("Sub", [norm.output[0], "time_mean"], ["centred"], name="centred")
    for node, _ in og.consumers(graph)[norm.output[0]]:
        node.input[0] = "centred"
    position = list(graph.node).index(norm) + 1
    graph.node.insert(position, mean)
    graph.node.insert(position + 1, centred)
    rewritten, report = frames.rewrite(model, 64)
    assert report["refused"].get("ReduceMean is not per frame") == 1
    assert "time_mean" in {n.name for n in rewritten.graph.node}  # that module is still in the main graph
    assert report["modules"] == 3 * layers(model) - 1  # the other modules are taken
