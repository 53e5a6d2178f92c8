"""Static int8 of the smoothed encoder: QDQ, per-channel int8 MatMul weights (7-bit range), Percentile
uint8 activations, whose ranges are snapped to a grid so that the model is the same bytes on any CPU.

Only the MatMuls SmoothQuant classes as weighted are quantized (two-activation, tied- and
transposed-weight MatMuls stay fp32), the conv module's pointwise convs among them (stage pointwise made
them MatMuls); the depthwise and subsampling convolutions stay fp32. Only their inputs are quantized:
their outputs stay fp32, so onnxruntime runs each as one MatMulIntegerToFloat. Calibration streams one
window at a time and ends before quantization starts, so at most one copy of the model is in memory. The
result must stay within fidelity.min_cosine of the fp32 encoder on held-out windows, else the stage fails and
leaves nothing behind.
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import PercentileCalibrater, TensorData, TensorsData, save_tensors_data
from tqdm import tqdm

from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant import patterns, positions, stable
from requant.features import features
from requant.common import atomic_path, fail, read_json

log = logging.getLogger("pipeline.int8")

NAME = "encoder-model.int8.onnx"
SMOOTHED = Path("models/smoothed/encoder-model.onnx")  # SmoothQuant's fp32 graph: every static int8's source
WINDOWS_DIR = Path("data/windows")
DIAGNOSIS_FILE, RANKED = Path("metrics/diagnosis.json"), "int8_smoothquant"  # the ranking int8_mixed follows
QUANTIZED_OPS = ("MatMul", "Conv")  # Convs only where named (quantize_convs); the others stay fp32


class WindowReader(CalibrationDataReader):
    """Encoder inputs for a range of windows, computed on demand (calibrate() sets the range)."""

    def __init__(self, windows: runs.Windows) -> None:
        self.windows = windows
        self.position, self.end = 0, len(windows)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.end = start_index, min(end_index, len(self.windows))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.end:
            return None
        signal, length = features(self.windows[self.position])
        self.position += 1
        return {"audio_signal": signal, "length": length}


class _QuantizedMatMulCalibrater(PercentileCalibrater):
    """Percentile calibration of the tensors of the MatMuls that will be quantized, and no others.

    onnxruntime's own calibrator records every MatMul's tensors, including the attention products that
    stay in fp32 (8 heads x T x 2T per layer at Parakeet size): wasted outputs and histograms."""

    def __init__(self, *args, skip: set[str], **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.skip = skip
        super().__init__(*args, **kwargs)

    def select_tensors_to_calibrate(self, model):  # type: ignore[no-untyped-def]
        kept = [n for n in model.graph.node if n.name not in self.skip]
        needed = {name for node in kept if node.op_type in QUANTIZED_OPS for name in node.input}  # outputs stay fp32
        tensors, value_infos = super().select_tensors_to_calibrate(model)
        return tensors & needed, value_infos


def snap_ranges(ranges: TensorsData) -> tuple[TensorsData, int]:
    """Every calibrated range end snapped to a 3-bit mantissa (requant/stable.py), so the int8 scales are the
    same on any CPU; and how many ends lie near a grid edge, where another CPU's last bits could still flip
    them."""
    snapped, near_edge = {}, 0
    for name, data in ranges.data.items():
        fields = {k: v for k, v in data.to_dict().items() if k != "CLS"}
        for end in ("lowest", "highest"):
            values = np.asarray(fields[end])
            near_edge += sum(stable.mantissa_edge_distance(float(v)) < stable.NEAR_EDGE for v in values.flat)
            fields[end] = np.array([stable.snap_mantissa(float(v)) for v in values.flat],
                                   dtype=values.dtype).reshape(values.shape)
        snapped[name] = TensorData(**fields)
    return TensorsData(ranges.calibration_method, snapped), near_edge


def calibrate(src: Path, work: Path, calib: runs.Windows, percentile: float, excluded: list[str],
              external: bool, op_types: Sequence[str] = ("MatMul",)) -> tuple[Path, dict[str, int]]:
    """Activation ranges of the quantized MatMuls over the calibration windows, snapped and saved as
    onnxruntime's calibration cache (JSON); and how many ranges there are and lie near a grid edge. The
    calibration session is gone when this returns, so quantizing after it
    never holds a second copy of the model (Parakeet-size twin, 8 windows: 9.7 -> 3.5 GB peak)."""
    calibrater = _QuantizedMatMulCalibrater(
        src, list(op_types), str(work / "augmented.onnx"), use_external_data_format=external,
        symmetric=True, num_bins=2048, percentile=percentile, skip=set(excluded))
    calibrater.augment_graph()
    calibrater.model = None  # the augmented copy is on disk now; the session reads it from there
    calibrater.create_inference_session()
    reader = WindowReader(calib)
    for start in tqdm(range(len(calib)), desc="calibrate", unit="win"):  # one window's outputs at a time
        reader.set_range(start, start + 1)
        calibrater.collect_data(reader)
    cache = work / "ranges.json"
    ranges, near_edge = snap_ranges(calibrater.compute_data())
    positional = widen_positional_range(ranges, src)
    save_tensors_data(ranges, cache)
    del calibrater
    gc.collect()
    for leftover in work.glob("augmented.onnx*"):
        leftover.unlink()
    return cache, {"ranges": len(ranges.data), "ranges_near_grid_edge": near_edge, "linear_pos_range": positional}


def widen_positional_range(ranges: TensorsData, src: Path) -> dict[str, float | str]:
    """The linear_pos input's range set to the bound its sinusoid rows reach at any position (in place).

    30 s windows see only the near positions, where low-frequency channels stay small: a range calibrated
    there clipped every linear_pos MatMul from 390 s on. The bound is computed from constants, so it is the
    same on any CPU and needs no snapping."""
    tensor, channels = positions.linear_pos_input_bound(og.load_graph(src), src.parent)
    if tensor is None:
        return {"refused": str(channels)}
    bound = float(channels.max())
    if tensor not in ranges.data:
        return {"refused": f"{tensor} is not calibrated (its MatMuls stay fp32)"}
    data = ranges.data[tensor]
    calibrated = float(np.asarray(data.range_value[1]).max())
    fields = {k: v for k, v in data.to_dict().items() if k != "CLS"}
    fields["lowest"] = np.array(-bound, dtype=np.asarray(fields["lowest"]).dtype)
    fields["highest"] = np.array(bound, dtype=np.asarray(fields["highest"]).dtype)
    ranges.data[tensor] = TensorData(**fields)
    return {"tensor": tensor, "calibrated": calibrated, "bound": bound}


def quantize_encoder(src: Path, work: Path, calib: runs.Windows, percentile: float,
                     external: bool | None = None, reduce_range: bool = True, keep_fp32: Sequence[str] = (),
                     quantize_convs: Sequence[str] = ()) -> tuple[Path, dict[str, int]]:
    """Quantize src into work/; return the written model path (with external data if `external`) and the
    calibration's snapping counts. Convs stay fp32 but those named in quantize_convs."""
    graph = og.load_graph(src).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv" and n.name not in quantize_convs] \
        if quantize_convs else []  # without Conv in the op types, no Conv is touched anyway
    excluded = [*patterns.fp32_matmuls(graph), *keep_fp32, *convs]
    op_types = ["MatMul", "Conv"] if quantize_convs else ["MatMul"]
    if any(not name for name in excluded):
        fail(f"{src}: a MatMul without a name cannot be excluded from quantization; rerun smoothquant")
    if external is None:
        external = og.model_size(src) > og.SELF_CONTAINED_BELOW
    (work / "out").mkdir()
    (work / "tmp").mkdir()
    log.info("static int8: %d MatMuls, %d without a private constant weight left in fp32, %d calibration windows",
             sum(n.op_type == "MatMul" for n in graph.node), len(excluded), len(calib))
    readable = og.onnx_readable(src, work / "tmp")  # the calibrater and the quantizer load it through onnx
    with og.quantizer_scratch(work / "tmp"):
        ranges, snapping = calibrate(readable, work / "tmp", calib, percentile, excluded, external, op_types)
        quantize_static(
            str(readable), str(work / "out" / NAME), None, calibration_cache_path=ranges,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=True,
            # 7-bit weights (quant.reduce_range): x86 CPUs without VNNI (AVX2, AVX-512F) run int8 MatMuls
            # as u8 x s8 pairs summed in 16 bits, which saturate with full 8-bit weights (measured: cosine
            # 0.990 -> 0.999). With 7 bits no CPU saturates, so fidelity does not depend on the machine.
            reduce_range=reduce_range,
            # uint8 activations: onnxruntime's CPU kernels want u8 x s8, and converts int8 Q/DQ pairs only
            # where one Q feeds one MatMul. With int8, the MatMuls that share an input (q, k, v; every
            # layer's linear_pos) ran as DequantizeLinear + fp32 MatMul: 96 of Parakeet's 217.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.Percentile,
            use_external_data_format=external,
            # MatMul outputs stay fp32: each MatMul runs as one MatMulIntegerToFloat, with no extra rounding.
            # A Q/DQ pair on the outputs also made onnxruntime schedule all 24 linear_pos projections first,
            # keeping their fp32 outputs alive all pass (Parakeet-size 390 s pass: 6.2 -> 4.7 GB peak RSS).
            extra_options={"OpTypesToExcludeOutputQuantization": op_types},
        )
    return work / "out" / NAME, snapping


def build_int8(src: Path, dst_dir: Path, windows_dir: Path, percentile: float, calib_windows: int,
               min_cosine: float, external: bool | None = None, reduce_range: bool = True,
               keep_fp32: Sequence[str] = (), quantize_convs: Sequence[str] = ()) -> dict[str, float]:
    """Quantize, gate on fidelity against the fp32 input, and publish dst_dir/NAME atomically."""
    if not 0 < percentile <= 100:
        fail(f"quant.percentile={percentile} must be in (0, 100]")
    if calib_windows < 0:
        fail(f"quant.calib_windows={calib_windows} must be >= 0 (0 = every calibration window)")
    calib = runs.Windows(windows_dir, "calib", limit=calib_windows)
    heldout = runs.Windows(windows_dir, "heldout")
    reference = runs.encoder_outputs(src, heldout, "fp32 heldout")
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir()
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=tmp))
        written, snapping = quantize_encoder(src, work, calib, percentile, external, reduce_range, keep_fp32,
                                             quantize_convs)
        log.info("%d activation ranges snapped to %d-bit mantissas, %d within %g of a grid edge", snapping["ranges"],
                 stable.MANTISSA_BITS, snapping["ranges_near_grid_edge"], stable.NEAR_EDGE)
        og.save_self_contained_if_small(written, tmp / NAME)
        shutil.rmtree(work)
        fidelity = runs.compare(reference, runs.encoder_outputs(tmp / NAME, heldout, "int8 heldout"))
        log.info("int8 vs fp32 on %d held-out windows: %s", len(heldout), fidelity)
        if fidelity["cosine_min"] < min_cosine:
            shutil.rmtree(dst_dir, ignore_errors=True)  # an older model under the final name would look valid
            fail(f"int8 encoder cosine vs fp32 is {fidelity['cosine_min']:.6f} on a held-out window, below "
                 f"fidelity.min_cosine={min_cosine}; try another smooth.alpha or quant.percentile. Nothing written")
    return {**fidelity, **snapping}


def most_sensitive(diagnosis_path: Path, k: int) -> list[str]:
    """The K MatMuls the diagnosis ranks worst for SmoothQuant int8 (int8_mixed keeps them in fp32)."""
    if not diagnosis_path.is_file():
        fail(f"{diagnosis_path} not found; run `dvc repro diagnose` first")
    ranking = read_json(diagnosis_path).get("variants", {}).get(RANKED, {}).get("ranking")
    if ranking is None:
        fail(f"{diagnosis_path} has no ranking for {RANKED}; rerun `dvc repro diagnose`")
    if k > len(ranking):
        fail(f"mixed.keep_fp32={k} but only {len(ranking)} MatMuls are quantized; lower it")
    return ranking[:k]
