"""How close each encoder variant stays to fp32 on held-out windows (never used for calibration).

For every variant: cosine similarity and relative L2 error of the encoder `outputs` against fp32,
per window (min/max and mean), the file size, and the counts of the op types that tell how it was
quantized (MatMulInteger/ConvInteger for dynamic int8, QuantizeLinear/DequantizeLinear for QDQ).
`encoded_lengths` must equal fp32's exactly, per window and in a padded batch, or the stage fails.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant.params import load_params
from requant.variants import BUILT_ON_REQUEST, VARIANTS
from requant.common import fail, run_cli, write_json
from requant.features import SAMPLE_RATE, features

log = logging.getLogger(__name__)

WINDOWS = Path("data/windows")
METRICS = Path("metrics/fidelity.json")
REFERENCE = "fp32"
LENGTHS = "encoded_lengths"
BATCH = 3
BATCH_SAMPLES = 10 * SAMPLE_RATE  # the padded batch's longest clip: 10 s
TELLING_OPS = ("Cast", "Conv", "ConvInteger", "DequantizeLinear", "DynamicQuantizeLinear", "Loop", "MatMul",
               "MatMulInteger", "MatMulNBits", "QLinearConv", "QLinearMatMul", "QuantizeLinear")


def describe(path: Path) -> dict:
    """File size (graph + external data) and the quantization-telling op counts of one model."""
    model = og.load_graph(path)
    counts = og.op_counts(model.graph)
    size = path.stat().st_size + sum(f.stat().st_size for f in og.data_files(model, path.parent))
    return {"bytes": size, "ops": {op: n for op, n in counts.items() if op in TELLING_OPS}}


def encode(path: Path, windows: runs.Windows, desc: str) -> tuple[list[np.ndarray], list[list[int]]]:
    """The encoder's outputs per window, and its encoded_lengths per window and for one padded batch of
    the first BATCH windows cut to 1/BATCH, 2/BATCH, ... of 10 s (masks and padding exercised)."""
    session = runs.open_session(path)
    outputs, lengths = [], []
    for audio in tqdm(windows, desc=desc, unit="win"):
        out, n = session.run([runs.ENCODER_OUTPUT, LENGTHS], runs.encoder_feed(session, audio))
        outputs.append(out)
        lengths.append(n.tolist())
    # a few short clips suffice to exercise the masks and the padding: a batch of whole 30 s windows would
    # hold three windows' activations at once (at Parakeet size 2 GB above a single window's pass)
    n, samples = min(BATCH, len(windows)), min(BATCH_SAMPLES, min(len(w) for w in windows))
    clips = [features(windows[i][: samples * (i + 1) // n]) for i in range(n)]
    batch = np.zeros((len(clips), clips[0][0].shape[1], max(c[0].shape[2] for c in clips)), np.float32)
    for i, (signal, _) in enumerate(clips):
        batch[i, :, : signal.shape[2]] = signal[0]
    feed = {"audio_signal": batch, "length": np.concatenate([n for _, n in clips])}
    lengths.append(session.run([LENGTHS], feed)[0].tolist())
    return outputs, lengths


def measure(reference: Path, variants: dict[str, Path], windows: runs.Windows) -> dict:
    """Fidelity of each variant against the reference encoder, one session at a time."""
    missing = [f"{name} ({path})" for name, path in variants.items() if not path.is_file()]
    if missing:
        fail(f"variant files missing: {', '.join(missing)}; run `dvc repro` for their stages first")
    expected, expected_lengths = encode(reference, windows, REFERENCE)
    result = {}
    for name, path in variants.items():
        outputs, lengths = encode(path, windows, name)
        if lengths != expected_lengths:
            fail(f"{path}: encoded_lengths {lengths} differ from fp32's {expected_lengths} on the held-out windows "
                 "(and a padded batch of them): the variant computes lengths wrongly; rebuild it")
        scores = runs.compare(expected, outputs)
        log.info("%s vs %s: %s", name, REFERENCE, scores)
        result[name] = {"file": path.as_posix(), **describe(path), **scores, "encoded_lengths_equal": True}
    return {
        "reference": {"name": REFERENCE, "file": reference.as_posix(), **describe(reference)},
        "heldout_windows": len(windows),
        "variants": result,
    }


def main() -> None:
    skipped = () if load_params().compare.builds else BUILT_ON_REQUEST  # built with compare.builds: [all]
    files = {name: spec.folder / spec.name for name, spec in VARIANTS.items() if name not in skipped}
    reference = files.pop(REFERENCE)
    write_json(METRICS, measure(reference, files, runs.Windows(WINDOWS, "heldout")))


if __name__ == "__main__":
    run_cli(main)
