"""A naive fp16 cast of the encoder and the decoder/joint, keeping float32 inputs and outputs.

onnxruntime's float16 converter works from the model path (shape inference without the 2 GB proto
limit). onnx-asr feeds float32 features and int64 lengths, so the I/O types must not change.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

from stages import onnx_graph as og
from stages.common import atomic_path, run_cli

log = logging.getLogger(__name__)

BASE_DIR = Path("models/base")
OUT_DIR = Path("models/variants/fp16")
MODELS = {"encoder-model.onnx": "encoder-model.fp16.onnx", "decoder_joint-model.onnx": "decoder_joint-model.fp16.onnx"}


def to_fp16(src: Path, dst: Path) -> list[Path]:
    """Cast src to fp16 at dst (one file if small, else with dst.data); return the files written."""
    og.require_single_links(src)  # also a clear error if the input is missing
    model = convert_float_to_float16(str(src), keep_io_types=True)
    if model.ByteSize() < og.SELF_CONTAINED_BELOW:
        dst.write_bytes(model.SerializeToString())
        return [dst]
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data")  # dst's folder is fresh: no stale .data to append to
    return [dst, dst.with_name(f"{dst.name}.data")]


def build_fp16(base_dir: Path, dst_dir: Path) -> list[Path]:
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir()
        written = [f for src, dst in MODELS.items() for f in to_fp16(base_dir / src, tmp / dst)]
        names = [f.name for f in written]
    log.info("fp16 models: %s", names)
    return [dst_dir / name for name in names]


def main() -> None:
    build_fp16(BASE_DIR, OUT_DIR)


if __name__ == "__main__":
    run_cli(main)
