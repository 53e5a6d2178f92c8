"""How close each encoder variant stays to fp32 on held-out windows (never used for calibration).

For every variant: cosine similarity and relative L2 error of the encoder `outputs` against fp32,
per window (min/max and mean), the file size, and the counts of the op types that tell how it was
quantized (MatMulInteger/ConvInteger for dynamic int8, QuantizeLinear/DequantizeLinear for QDQ).
"""

from __future__ import annotations

import logging
from pathlib import Path

from stages import onnx_graph as og
from stages.asr import VARIANTS
from stages.common import fail, run_cli, write_json

log = logging.getLogger(__name__)

WINDOWS = Path("data/windows")
METRICS = Path("metrics/fidelity.json")
REFERENCE = "fp32"
TELLING_OPS = ("Cast", "Conv", "ConvInteger", "DequantizeLinear", "DynamicQuantizeLinear", "MatMul",
               "MatMulInteger", "QLinearConv", "QLinearMatMul", "QuantizeLinear")


def describe(path: Path) -> dict:
    """File size (graph + external data) and the quantization-telling op counts of one model."""
    model = og.load_graph(path)
    counts = og.op_counts(model.graph)
    size = path.stat().st_size + sum(f.stat().st_size for f in og.data_files(model, path.parent))
    return {"bytes": size, "ops": {op: n for op, n in counts.items() if op in TELLING_OPS}}


def measure(reference: Path, variants: dict[str, Path], windows: og.Windows) -> dict:
    """Fidelity of each variant against the reference encoder, one session at a time."""
    missing = [f"{name} ({path})" for name, path in variants.items() if not path.is_file()]
    if missing:
        fail(f"variant files missing: {', '.join(missing)}; run `dvc repro` for their stages first")
    expected = og.encoder_outputs(reference, windows, REFERENCE)
    result = {}
    for name, path in variants.items():
        scores = og.compare(expected, og.encoder_outputs(path, windows, name))
        log.info("%s vs %s: %s", name, REFERENCE, scores)
        result[name] = {"file": path.as_posix(), **describe(path), **scores}
    return {
        "reference": {"name": REFERENCE, "file": reference.as_posix(), **describe(reference)},
        "heldout_windows": len(windows),
        "variants": result,
    }


def main() -> None:
    files = {name: spec.folder / spec.name for name, spec in VARIANTS.items()}
    reference = files.pop(REFERENCE)
    write_json(METRICS, measure(reference, files, og.Windows(WINDOWS, "heldout")))


if __name__ == "__main__":
    run_cli(main)
