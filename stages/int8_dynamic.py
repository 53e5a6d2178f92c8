"""The stock int8 recipe reproduced: onnxruntime's quantize_dynamic with its default options.

Defaults mean per-tensor int8 weights, activations quantized at run time (DynamicQuantizeLinear), and
every supported op type: MatMul -> MatMulInteger and also Conv -> ConvInteger. Upstream's stock int8
encoder is most likely exactly that: at 622 MB against the MatMul-only SmoothQuant int8's 842 MB, the
~220 MB gap matches the conv module's ~75 M pointwise/depthwise weights at 1 byte instead of 4.
fidelity.json records both files' op types, so the choice can be checked on the real model.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

from requant import onnx_graph as og
from requant.common import atomic_path, run_cli

log = logging.getLogger(__name__)

SOURCE = Path("models/base/encoder-model.onnx")
OUT_DIR = Path("models/variants/int8_dynamic")
NAME = "encoder-model.int8.onnx"


def build_dynamic_int8(src: Path, dst_dir: Path, op_types: list[str] | None = None,
                       external: bool | None = None) -> dict[str, int]:
    """Write dst_dir/NAME (atomically); return its op type counts. op_types None = onnxruntime's defaults."""
    og.load_graph(src)  # a clear error if the input is missing or truncated
    if external is None:
        external = og.model_size(src) > og.SELF_CONTAINED_BELOW
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir()
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=tmp))
        readable = og.onnx_readable(src, work)  # onnxruntime's quantizer loads it through onnx
        with og.quantizer_scratch(work):
            quantize_dynamic(str(readable), str(work / NAME), op_types_to_quantize=op_types, per_channel=False,
                             reduce_range=False, weight_type=QuantType.QInt8, use_external_data_format=external)
        og.save_self_contained_if_small(work / NAME, tmp / NAME)
        shutil.rmtree(work)
        counts = og.op_counts(og.load_graph(tmp / NAME).graph)
    log.info("dynamic int8 op types: %s", counts)
    return counts


def main() -> None:
    build_dynamic_int8(SOURCE, OUT_DIR)


if __name__ == "__main__":
    run_cli(main)
