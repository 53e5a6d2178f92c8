"""The blockwise stage's exactness gate keeps its strength now that the unrewritten encoder only runs up to
blockwise.gate_s: a wrong rewrite still fails it, and past gate_s the one pass is checked rewrite against
rewrite with every block boundary moved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import stages.blockwise as blockwise
from demo.synth import synthesize
from requant.common import StageError
from requant.params import BlockwiseParams
from tests.random_model import build_random_model

PARAMS = BlockwiseParams(block=16, subsampling_block=8, max_rel_error=1e-5)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_random_model(tmp_path_factory.mktemp("gate") / "model", seed=0)  # the export's layout
    return folder / "encoder-model.onnx"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return np.concatenate([synthesize(text, "en-us") for text in ("the quiet river runs under the old bridge",
                                                                  "my brother reads a long letter")] * 2)


def test_a_right_rewrite_passes_both_checks(encoder: Path, speech: np.ndarray, tmp_path: Path) -> None:
    report = blockwise.build_blockwise(encoder, tmp_path / "ok", PARAMS, [speech[:32_000]], long_pass=speech)
    assert report["sites"] > 0 and report["max_rel_error"] <= 1e-5
    assert report["long_pass_s"] == len(speech) / 16000 and report["long_pass_rel_error"] <= 1e-5
    assert (tmp_path / "ok" / encoder.name).is_file() and not list((tmp_path / "ok").glob("reference-*"))


def test_a_wrong_rewrite_fails_against_the_unrewritten_encoder(encoder: Path, speech: np.ndarray, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A band where full attention was asked for: right at short lengths below the band, wrong past it."""
    real = blockwise.rewrite_long_pass
    monkeypatch.setattr(blockwise, "rewrite_long_pass", lambda model, params, folder, context:
                        real(model, params, folder, context or [4, 4]))
    with pytest.raises(StageError, match="the rewrite differs from the original by .* nothing written"):
        blockwise.build_blockwise(encoder, tmp_path / "wrong", PARAMS, [speech[:32_000]], long_pass=speech)
    assert not (tmp_path / "wrong").exists()


def test_past_gate_s_a_rewrite_that_depends_on_its_blocks_fails(encoder: Path, speech: np.ndarray, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Right with the stage's blocks (so the short check passes), wrong with any other: only the long pass,
    checked rewrite against rewrite, can see it."""
    real = blockwise.rewrite_long_pass
    monkeypatch.setattr(blockwise, "rewrite_long_pass", lambda model, params, folder, context:
                        real(model, params, folder, context if params.block == PARAMS.block else [4, 4]))
    with pytest.raises(StageError, match="differs from itself with blocks of 25 queries by .* nothing written"):
        blockwise.build_blockwise(encoder, tmp_path / "blocks", PARAMS, [speech[:32_000]], long_pass=speech)
    assert not (tmp_path / "blocks").exists()


@pytest.fixture(scope="module")
def quantized(encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random encoder in dynamic int8: its activations' roundings flip with last-bit changes upstream."""
    from onnxruntime.quantization import quantize_dynamic

    path = tmp_path_factory.mktemp("int8") / "encoder-model.int8.onnx"
    quantize_dynamic(str(encoder), str(path), op_types_to_quantize=["MatMul"])
    return path


def test_a_quantized_local_rewrite_is_held_to_its_float_encoder_past_gate_s(
        encoder: Path, quantized: Path, speech: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other blocks sum each band in another order: the int8 encoder's outputs move by more than float rounding
    (the Parakeet-size twin's int8_local moved by 0.026 at 390 s), yet both block sizes stay as close to the
    float encoder as each other. A rewrite that depends on its blocks still fails."""
    run_all = blockwise._run_all

    def flipped(path: Path, clips: list[np.ndarray]) -> list:  # what the twin's flips do, at this toy scale
        runs = run_all(path, clips)
        if path.name == "reference-blocks":
            for out, _ in runs:
                out.flat[:: 997] += 1e-3 * np.abs(out).max()
        return runs

    monkeypatch.setattr(blockwise, "_run_all", flipped)
    strict = BlockwiseParams(block=16, subsampling_block=8, max_rel_error=1e-5)
    report = blockwise.build_blockwise(quantized, tmp_path / "ok", strict, [speech[:32_000]], [8, 8],
                                       unquantized=encoder, long_pass=speech)
    assert report["long_pass_rel_error"] > strict.max_rel_error
    low, high = sorted(report["long_pass_quantization_rel_l2"])
    assert 0 < low and high <= (1 + strict.quantized_share) * low
    real = blockwise.rewrite_long_pass
    monkeypatch.setattr(blockwise, "rewrite_long_pass", lambda model, params, folder, context:
                        real(model, params, folder, context if params.block == strict.block else [4, 4]))
    with pytest.raises(StageError, match="differs from itself with blocks of 25 queries"):
        blockwise.build_blockwise(quantized, tmp_path / "blocks", strict, [speech[:32_000]], [8, 8],
                                  unquantized=encoder, long_pass=speech)
