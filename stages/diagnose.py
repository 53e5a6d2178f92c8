"""Stage `diagnose`: which quantized MatMuls break, and from what pass length.

For each quantized variant and each pass length (diagnose.lengths_s, cut from the longest calibration
speech, never the evaluation clip): the relative error of every quantized MatMul's output against its
fp32 source (the graph it was quantized from, smoothed for SmoothQuant), each MatMul fed the fp32
graph's own input so that errors do not compound, and the relative error of the encoder output.
The quantized MatMul is run as onnxruntime runs it: the subgraph of the variant from that input to that
output (Q/DQ pairs, DynamicQuantizeLinear + MatMulInteger, or MatMulNBits), cut out of the variant.
Writes metrics/diagnosis.json, a heatmap (MatMul x length) per variant, and the errors by pass length as
a data series (metrics/plots/diagnosis.json) for `dvc plots diff`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from tqdm import tqdm  # noqa: E402

from requant import encoder_runs as runs  # noqa: E402
from requant import onnx_graph as og  # noqa: E402
from requant import stable  # noqa: E402
from requant.variants import VARIANTS  # noqa: E402
from requant.audio import read_wav  # noqa: E402
from requant.common import atomic_path, fail, run_cli, write_json  # noqa: E402
from requant.features import SAMPLE_RATE, features  # noqa: E402
from requant.params import load_params  # noqa: E402
from requant.plots import DIAGNOSIS_SERIES, diagnosis_series  # noqa: E402

log = logging.getLogger(__name__)

BASE, SMOOTHED = Path("models/base/encoder-model.onnx"), Path("models/smoothed/encoder-model.onnx")
POINTWISE = Path("models/pointwise/encoder-model.onnx")  # base with the pointwise convs as MatMuls
SOURCES = {"int8_smoothquant": SMOOTHED, "nbits_w8": POINTWISE, "nbits_w4": POINTWISE}  # others: the base
DIAGNOSED = ("int8_smoothquant", "int8_dynamic", "int8_stock", "nbits_w8", "nbits_w4")
AUDIO_DIR, METRICS, PLOTS = Path("data/audio"), Path("metrics/diagnosis.json"), Path("metrics/plots")
# fp32 activations captured per probe run: each run is a whole fp32 pass, so fewer, larger captures are
# what keeps Parakeet at 390 s affordable (about 13 GB of MatMul inputs and outputs: 4 passes per source,
# not 13); the demo's fit in one either way
CAPTURE_BYTES = 4 << 30


def relative_error(reference: np.ndarray, value: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    return float(np.linalg.norm(value.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


def quantized_matmuls(source: onnx.ModelProto, variant: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Source MatMul name -> (input, output) tensor names, for the weighted MatMuls the variant quantized
    (its output no longer comes from a plain MatMul reading that input)."""
    kinds = og.classify_matmuls(source.graph)
    makers = og.producers(variant.graph)
    found = {}
    for node in source.graph.node:
        if kinds.get(node.name) != "weighted":
            continue
        maker = makers.get(node.output[0])
        plain = maker is not None and maker.op_type == "MatMul" and maker.input[1] == node.input[1]
        if maker is not None and not plain:
            found[node.name] = (node.input[0], node.output[0])
    return found


def _chunks(graph: onnx.GraphProto, matmuls: dict[str, tuple[str, str]], frames: int) -> list[list[str]]:
    """MatMuls grouped so that one fp32 run captures at most CAPTURE_BYTES of their inputs and outputs."""
    dims = {t.name: list(t.dims) for t in graph.initializer}
    weight = {n.name: n.input[1] for n in graph.node if n.name in matmuls}
    chunks, used = [[]], 0
    for matmul in matmuls:
        size = frames * sum(dims[weight[matmul]]) * 4  # input [T, K] + output [T, N], float32
        if chunks[-1] and used + size > CAPTURE_BYTES:
            chunks.append([])
            used = 0
        chunks[-1].append(matmul)
        used += size
    return chunks


def diagnose(variants: dict[str, tuple[Path, Path]], reference: Path, clips: dict[float, np.ndarray],
             scratch: Path) -> dict:
    """Per-MatMul and encoder-output relative errors of each variant (name -> (its fp32 source, its file))
    at each clip length. Each source's fp32 run serves every variant made from it; activations are
    captured a chunk of MatMuls at a time and every session is dropped after use, so memory stays
    bounded at Parakeet size (217 MatMuls at 390 s hold about 13 GB of activations)."""
    pairs, kernels = {}, {}
    for name, (source_path, variant_path) in variants.items():
        source = og.load_graph(source_path)  # first: checks the source exists (the variant derives from it)
        og.load_graph(variant_path)
        variant = onnx.load(str(variant_path))  # quantized variants are under 2 GB; the source stays on disk
        pairs[name] = quantized_matmuls(source, variant)
        if not pairs[name]:
            fail(f"{variant_path}: no quantized MatMul found against {source_path}; is it a quantized variant?")
        for i, (matmul, (x, y)) in enumerate(pairs[name].items()):
            kernels[name, matmul] = scratch / f"{name}.{i}.onnx"
            # one quantized MatMul as the variant runs it: its Q/DQ, MatMulInteger or MatMulNBits subgraph
            onnx.save(og.extract(variant, y, x), str(kernels[name, matmul]))
        del variant
    result = {name: {"source": src.as_posix(), "output_rel_error": {}, "matmuls": {m: {} for m in pairs[name]}}
              for name, (src, _) in variants.items()}
    for seconds, audio in tqdm(clips.items(), desc="diagnose", unit="length"):
        key = f"{seconds:g}"
        signal, length = features(audio)
        feed = {"audio_signal": signal, "length": length}
        expected = runs.open_session(reference, arena=False).run(["outputs"], feed)[0]
        for name, (_, variant_path) in variants.items():
            out = runs.open_session(variant_path, arena=False).run(["outputs"], feed)[0]
            result[name]["output_rel_error"][key] = runs.round_sig(relative_error(expected, out), 4)
        for source in dict.fromkeys(src for src, _ in variants.values()):
            graph = og.load_graph(source)
            made = [name for name, (src, _) in variants.items() if src == source]
            matmuls = {m: pair for name in made for m, pair in pairs[name].items()}
            for chunk in _chunks(graph.graph, matmuls, int(signal.shape[2]) // 8 + 1):
                tensors = sorted({t for m in chunk for t in matmuls[m]})
                probe = runs.open_session(runs.probe(graph, tensors), source.parent, arena=False)
                values = dict(zip(tensors, probe.run(tensors, feed)))
                del probe
                for name in made:
                    for matmul in (m for m in chunk if m in pairs[name]):
                        x, y = pairs[name][matmul]
                        got = runs.open_session(kernels[name, matmul], arena=False).run(None, {x: values[x]})[0]
                        result[name]["matmuls"][matmul][key] = runs.round_sig(relative_error(values[y], got), 4)
                del values
    return result


def summarize(result: dict, threshold: float) -> dict:
    """MatMuls ranked by their error at the longest length, with the first length where they break."""
    longest = max(result["output_rel_error"], key=float)
    # ranked on errors snapped to a coarse grid, ties by name: the ranking picks int8_mixed's fp32 MatMuls,
    # and must not follow another CPU's last bits (requant/stable.py)
    ranked = sorted(result["matmuls"], key=lambda m: (-stable.snap_mantissa(result["matmuls"][m][longest]), m))
    worst = []
    for matmul in ranked:
        by_length = result["matmuls"][matmul]
        breaks = [float(s) for s in sorted(by_length, key=float) if by_length[s] > threshold]
        worst.append({"matmul": matmul, "rel_error": by_length[longest], "breaks_from_s": breaks[0] if breaks else None})
    return {"ranking": ranked, "worst": worst[:5],
            "broken": sum(1 for w in worst if w["breaks_from_s"] is not None)}


def heatmap(result: dict, name: str, path: Path) -> None:
    lengths = sorted(result["output_rel_error"], key=float)
    names = list(result["matmuls"])
    grid = np.array([[result["matmuls"][m][s] for s in lengths] for m in names])
    fig, ax = plt.subplots(figsize=(6, max(4, len(names) * 0.12)))
    image = ax.imshow(np.log10(np.maximum(grid, 1e-6)), aspect="auto", cmap="magma_r")
    ax.set_xticks(range(len(lengths)), [f"{float(s):g} s" for s in lengths])
    ax.set_yticks(range(len(names)), names, fontsize=4)
    ax.set_title(f"{name}: log10 relative error of each quantized MatMul")
    fig.colorbar(image, ax=ax, label="log10 relative error")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)


def clips_from(audio: np.ndarray, lengths_s: list[float]) -> dict[float, np.ndarray]:
    available = len(audio) / SAMPLE_RATE
    usable = [s for s in lengths_s if s <= available]
    if not usable:
        fail(f"the longest calibration speech lasts {available:.0f} s, shorter than every diagnose.lengths_s")
    return {s: audio[: round(s * SAMPLE_RATE)] for s in usable}


def main() -> None:
    params = load_params()
    speeches = {name: read_wav(AUDIO_DIR / f"{name}.wav") for name in params.speeches}
    longest = max(speeches, key=lambda n: len(speeches[n]))
    clips = clips_from(speeches[longest], params.diagnose.lengths_s)
    report = {"audio": f"calibration speech '{longest}'", "lengths_s": sorted(clips),
              "break_rel_error": params.diagnose.break_rel_error, "variants": {}}
    variants = {name: (SOURCES.get(name, BASE), VARIANTS[name].folder / VARIANTS[name].name) for name in DIAGNOSED}
    with tempfile.TemporaryDirectory(prefix="diagnose-") as scratch:
        results = diagnose(variants, BASE, clips, Path(scratch))
    for name, result in results.items():
        result |= summarize(result, params.diagnose.break_rel_error)
        report["variants"][name] = result
        heatmap(result, name, PLOTS / f"diagnosis_{name}.png")
        log.info("%s: output error %s; worst %s", name, result["output_rel_error"], result["worst"][:2])
    write_json(METRICS, report)
    write_json(DIAGNOSIS_SERIES, diagnosis_series(report))


if __name__ == "__main__":
    run_cli(main)
