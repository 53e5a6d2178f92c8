"""A random model folder with the full upstream file list, for the evaluation and pipeline tests."""

from __future__ import annotations

from pathlib import Path

from demo.export import quantize_stock
from demo.fastconformer import build_random_model


def build_full_random_model(folder: Path, seed: int = 0) -> Path:
    """build_random_model plus the stock int8 encoder and decoder, made as the demo export makes them."""
    build_random_model(folder, seed=seed)
    quantize_stock(folder)
    return folder
