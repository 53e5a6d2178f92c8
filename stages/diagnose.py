"""Stage `diagnose`: which quantized MatMuls break, and from what pass length.

For each quantized variant and each pass length (diagnose.lengths_s, cut from the longest calibration
speech, never the evaluation clip): the relative error of every quantized MatMul's output against its
fp32 source (the graph it was quantized from, smoothed for SmoothQuant), each MatMul fed the fp32
graph's own input so that errors do not compound, and the relative error of the encoder output.
The quantized MatMul is run as onnxruntime runs it: the subgraph of the variant from that input to that
output (Q/DQ pairs, DynamicQuantizeLinear + MatMulInteger, or MatMulNBits), cut out of the variant and set
beside the fp32 MatMul inside one graph of the source (requant/matmul_errors.py): one fp32 pass per source
and length measures every MatMul of every variant made from it.
Writes metrics/diagnosis.json, a heatmap (MatMul x length) per variant, and the errors by pass length as
a data series (metrics/plots/diagnosis.json) for `dvc plots diff`.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from requant import encoder_runs as runs  # noqa: E402
from requant import matmul_errors as errors  # noqa: E402
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


def diagnose(variants: dict[str, tuple[Path, Path]], reference: Path, clips: dict[float, np.ndarray]) -> dict:
    """Per-MatMul and encoder-output relative errors of each variant (name -> (its fp32 source, its file))
    at each clip length. Per source and length, one pass of a graph that holds the source and, beside each
    of its MatMuls, every variant's quantized replacement fed the same input (requant/matmul_errors.py);
    then one pass of each variant for its output's error against the reference encoder's."""
    sources: dict[Path, dict[str, Path]] = {}
    for name, (source, variant) in variants.items():
        sources.setdefault(source, {})[name] = variant
    with ExitStack() as stack:
        graphs = {source: stack.enter_context(errors.error_graph(source, made)) for source, made in sources.items()}
        result = {name: {"source": src.as_posix(), "output_rel_error": {},
                         "matmuls": {m: {} for m in graphs[src][1][name]}} for name, (src, _) in variants.items()}
        for seconds, audio in tqdm(clips.items(), desc="diagnose", unit="length"):
            key = f"{seconds:g}"
            signal, length = features(audio)
            feed = {"audio_signal": signal, "length": length}
            expected = None
            for source, (path, found) in graphs.items():
                session = runs.open_session(path)  # one session at a time: the arena is freed with it
                names = ["outputs", *errors.sum_outputs(found)]
                values = dict(zip(names, session.run(names, feed)))
                del session
                if source == reference:  # the combined graph's own output is the reference encoder's
                    expected = values["outputs"]
                for name, pairs in found.items():
                    for matmul, error in errors.relative_errors(values, pairs).items():
                        result[name]["matmuls"][matmul][key] = runs.round_sig(error, 4)
                del values
            if expected is None:
                expected = runs.open_session(reference).run(["outputs"], feed)[0]
            for name, (_, variant_path) in variants.items():
                out = runs.open_session(variant_path).run(["outputs"], feed)[0]
                result[name]["output_rel_error"][key] = runs.round_sig(runs.relative_error(expected, out), 4)
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
    results = diagnose(variants, BASE, clips)
    for name, result in results.items():
        result |= summarize(result, params.diagnose.break_rel_error)
        report["variants"][name] = result
        heatmap(result, name, PLOTS / f"diagnosis_{name}.png")
        log.info("%s: output error %s; worst %s", name, result["output_rel_error"], result["worst"][:2])
    write_json(METRICS, report)
    write_json(DIAGNOSIS_SERIES, diagnosis_series(report))


if __name__ == "__main__":
    run_cli(main)
