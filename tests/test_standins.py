"""The same calibrated encoders on any CPU, shown with stand-ins for a second CPU kind: onnxruntime sessions
run with all graph optimizations or none, and with 1 or 2 threads, change the last bits of the calibration
statistics the way another instruction set does; the snapped statistics give the same bytes."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from bench import standins
from requant.static_int8 import NAME, build_int8
from stages.smoothquant import smooth_encoder
from tests.encoder_graph import build_encoder, save_encoder, write_windows


def _build(root: Path, base: Path, windows: Path) -> dict[str, bytes]:
    smooth_encoder(base, root / "smoothed", windows, alpha=0.5)
    build_int8(root / "smoothed" / base.name, root / "int8", windows, 99.999, 0, min_cosine=0.9)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("standins")
    base = save_encoder(build_encoder(outlier_scale=50), root / "base")
    windows = write_windows(root / "windows")
    return base, windows, _build(root / "default", base, windows)


@pytest.mark.parametrize("kind", ["optimizations-none", "optimizations-all", "threads-1"])
def test_a_stand_in_gives_the_same_bytes(reference: tuple[Path, Path, dict[str, bytes]], kind: str,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, windows, expected = reference
    monkeypatch.setattr(ort, "SessionOptions", ort.SessionOptions)  # restored after the test
    standins.apply(kind)
    built = _build(tmp_path, base, windows)
    assert list(built) == list(expected) and f"int8/{NAME}" in built
    assert [name for name in built if built[name] != expected[name]] == []


def test_the_stand_in_does_change_the_last_bits(reference: tuple[Path, Path, dict[str, bytes]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without it the test above could not fail: the encoder's outputs do differ under the stand-in."""
    from requant import encoder_runs as runs

    base, windows, _ = reference
    heldout = runs.Windows(windows, "calib")
    plain = runs.encoder_outputs(base, heldout, "default")
    monkeypatch.setattr(ort, "SessionOptions", ort.SessionOptions)
    standins.apply("optimizations-none")
    assert any((a != b).any() for a, b in zip(plain, runs.encoder_outputs(base, heldout, "stand-in")))
