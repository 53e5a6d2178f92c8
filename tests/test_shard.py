"""Sharded fp32: each data file under budget, tensors byte-for-byte untouched, outputs bit-identical."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from requant import encoder_runs as runs
from requant import onnx_graph as og
from stages import shard as shard_stage
from requant.common import StageError
from stages.shard import shard_encoder
from tests.encoder_graph import build_encoder, save_encoder, speechlike

BUDGET = 40_000  # bytes: the FFN weights (64 KiB) exceed it and must get files of their own


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_encoder(build_encoder(), tmp_path_factory.mktemp("shard") / "base")


def _run(path: Path, audio: np.ndarray) -> list[np.ndarray]:
    session = runs.open_session(path)
    return session.run(None, runs.encoder_feed(session, audio))


def _without_locations(model: onnx.ModelProto) -> bytes:
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for tensor in stripped.graph.initializer:
        del tensor.external_data[:]
    return stripped.SerializeToString()


def test_shards_under_budget_and_identical(base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    audio = speechlike(3.0, seed=7)
    with caplog.at_level(logging.WARNING):
        shards = shard_encoder(base, tmp_path / "sharded", BUDGET, audio, allow_oversize=True)
    assert len(shards) >= 2
    assert [p.name for p in shards] == [f"encoder-model.onnx.data.{i:03d}" for i in range(len(shards))]
    assert "gets a file of its own" in caplog.text

    sharded_path = tmp_path / "sharded" / "encoder-model.onnx"
    original, sharded = og.load_graph(base), og.load_graph(sharded_path)
    per_file: dict[str, list[int]] = {}
    for tensor in sharded.graph.initializer:
        if og.is_external(tensor):
            per_file.setdefault(og.external_info(tensor)["location"], []).append(og.tensor_nbytes(tensor))
    for name, sizes in per_file.items():
        assert (tmp_path / "sharded" / name).stat().st_size == sum(sizes)
        assert sum(sizes) <= BUDGET or len(sizes) == 1, name  # over budget only as a lone oversized tensor
    assert any(len(sizes) == 1 and sizes[0] > BUDGET for sizes in per_file.values())

    # a pure repack: same graph, same tensor bytes, same outputs to the bit
    assert _without_locations(original) == _without_locations(sharded)
    for old, new in zip(original.graph.initializer, sharded.graph.initializer):
        assert og.read_tensor(old, base.parent).tobytes() == og.read_tensor(new, sharded_path.parent).tobytes()
    for a, b in zip(_run(base, audio), _run(sharded_path, audio)):
        assert np.array_equal(a, b)


def test_rerun_is_byte_identical(base: Path, tmp_path: Path) -> None:
    audio = speechlike(2.0, seed=1)
    first = shard_encoder(base, tmp_path / "a", BUDGET, audio, allow_oversize=True)
    second = shard_encoder(base, tmp_path / "b", BUDGET, audio, allow_oversize=True)
    for a, b in zip([*first, tmp_path / "a/encoder-model.onnx"], [*second, tmp_path / "b/encoder-model.onnx"]):
        assert a.read_bytes() == b.read_bytes()


def test_generous_budget_gives_one_shard(base: Path, tmp_path: Path) -> None:
    shards = shard_encoder(base, tmp_path / "one", 10**9, speechlike(1.0, seed=2))
    assert [p.name for p in shards] == ["encoder-model.onnx.data.000"]


def test_stale_data_files_are_replaced_not_appended(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "encoder-model.onnx"
    for stale in ("encoder-model.onnx.data", "encoder-model.onnx.data.000", "encoder-model.onnx.data.999"):
        (tmp_path / stale).write_bytes(b"garbage" * 1000)
    written = og.write_model(og.load_graph(base), base.parent, out)
    assert [p.name for p in written] == ["encoder-model.onnx.data"]
    assert not (tmp_path / "encoder-model.onnx.data.000").exists()
    model = og.load_graph(out)
    assert written[0].stat().st_size == sum(og.tensor_nbytes(t) for t in model.graph.initializer if og.is_external(t))
    audio = speechlike(1.0, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(_run(base, audio), _run(out, audio)))


def test_mismatch_fails_and_leaves_nothing(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = og.write_model

    def corrupting_write(*args, **kwargs):  # type: ignore[no-untyped-def]
        files = real_write(*args, **kwargs)
        data = bytearray(files[1].read_bytes())
        data[:4] = b"\x00\x00\x80\x7f"  # +inf into the first float of a weight
        files[1].write_bytes(bytes(data))
        return files

    monkeypatch.setattr(shard_stage.og, "write_model", corrupting_write)
    with pytest.raises(StageError, match="not bit-identical"):
        shard_encoder(base, tmp_path / "bad", BUDGET, speechlike(1.0, seed=4), allow_oversize=True)
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.iterdir())  # no temporary left either


def test_bad_budget(base: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="budget"):
        shard_encoder(base, tmp_path / "x", 0, speechlike(1.0, seed=5))


def test_budget_below_the_largest_tensor_is_an_error_unless_allowed(base: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"shard.budget_mb=0.04 is below the largest tensor \(.*set "
                                         r"shard.allow_oversize: true"):
        shard_encoder(base, tmp_path / "x", BUDGET, speechlike(1.0, seed=5))
    assert not (tmp_path / "x").exists()


def test_without_copy_file_range_the_bytes_are_the_same(base: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Filesystems or kernels that refuse copy_file_range get plain reads, with the same files."""
    audio = speechlike(1.0, seed=3)
    fast = shard_encoder(base, tmp_path / "fast", BUDGET, audio, allow_oversize=True)

    def refuse(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(og.os, "copy_file_range", refuse)
    plain = shard_encoder(base, tmp_path / "plain", BUDGET, audio, allow_oversize=True)
    assert [p.read_bytes() for p in fast] == [p.read_bytes() for p in plain]


def test_truncated_source_data_is_a_clear_error(base: Path, tmp_path: Path) -> None:
    copy = tmp_path / "base"
    copy.mkdir()
    for f in base.parent.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = copy / f"{base.name}.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(StageError, match="truncated"):
        shard_encoder(copy / base.name, tmp_path / "out", BUDGET, speechlike(1.0, seed=4), allow_oversize=True)
    assert not (tmp_path / "out").exists()
