"""Export trained weights to the demo model directory (Parakeet's layout), torch-free.

fp32 files from demo.fastconformer, optional outlier channels (demo.outliers, exact rescaling,
checked <= 1e-5), then the stock int8 files made as upstream did: onnxruntime's quantize_dynamic
with default options.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import quantize_dynamic

from demo.fastconformer import DECODER_FILE, ENCODER_FILE, ModelConfig, save_encoder, write_model_dir
from demo.outliers import add_outlier_channels, channel_absmax, matmul_layernorms
from requant.features import features
from requant.common import atomic_path

log = logging.getLogger("demo.export")
MAX_RELATIVE_CHANGE = 1e-5


def int8_name(fp32_name: str) -> str:
    return fp32_name.replace(".onnx", ".int8.onnx")


def quantize_stock(model_dir: Path) -> None:
    """encoder-model.int8.onnx and decoder_joint-model.int8.onnx, quantize_dynamic defaults."""
    for name in (ENCODER_FILE, DECODER_FILE):
        quantize_dynamic(str(model_dir / name), str(model_dir / int8_name(name)))


def calibration_inputs(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two 20 s speeches with training voices (never the held-out ones), as encoder inputs."""
    from demo.synth import make_speech

    return [features(make_speech(lang, voice, 20.0, seed=seed + 77)[0])
            for lang, voice in (("en", "en-us+m1"), ("fr", "fr+m4"))]


def encode(model: onnx.ModelProto, inputs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(["outputs"], {"audio_signal": f, "length": n})[0] for f, n in inputs]


def add_outliers_to_encoder(path: Path, inputs: list[tuple[np.ndarray, np.ndarray]], ratio: float = 60.0,
                            seed: int = 0) -> dict[str, dict[str, float]]:
    """Rescale outlier channels into the encoder at `path` (rewritten), keeping fp32 outputs."""
    model = onnx.load(str(path))
    before = encode(model, inputs)
    ln_outputs = [n.output[0] for n in model.graph.node if n.name in matmul_layernorms(model)]
    report = add_outlier_channels(model, channel_absmax(model, inputs, ln_outputs), ratio=ratio, seed=seed)
    after = encode(model, inputs)
    change = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(after, before, strict=True))
    if change > MAX_RELATIVE_CHANGE:
        raise RuntimeError(f"outlier rescaling changed the fp32 encoder by {change:.2e} (> {MAX_RELATIVE_CHANGE})")
    log.info("outlier channels added to %d LayerNorms; fp32 outputs changed by %.1e (relative)", len(report), change)
    save_encoder(model, path)
    return {"layernorms": report, "max_relative_change": change}  # type: ignore[dict-item]


def export_model(weights: Mapping[str, np.ndarray], cfg: ModelConfig, tokens: list[str], out_dir: Path,
                 add_outliers: bool = True, seed: int = 0) -> dict:
    """Write the whole model directory atomically; returns the outlier report (empty without)."""
    report: dict = {}
    with atomic_path(out_dir) as tmp:
        write_model_dir(tmp, weights, cfg, tokens)
        if add_outliers:
            report = add_outliers_to_encoder(tmp / ENCODER_FILE, calibration_inputs(seed), seed=seed)
        quantize_stock(tmp)
    return report
