"""Figures for the demo model's card: short-clip CER/WER per language, one 390 s pass, and int8
behaviour (per-channel activation outliers, dynamic int8 vs fp32 by clip length).

    python -m demo.measure demo/model [--plain demo/.work/model-plain] [--out demo/.work/measure.json]

Test speech uses only the held-out voice variants (+m3, +f2) and sentence seeds never used in
training. `--plain` names the same model exported without outlier channels, for the before/after.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import jiwer
import numpy as np
import onnx
import onnx_asr
import onnxruntime as ort

from demo.outliers import channel_absmax, matmul_inputs, outlier_ratio
from demo.synth import make_speech, synthesize
from demo.text import sentences
from requant.features import features

log = logging.getLogger("demo.measure")
TEST_VOICES = {"en": ("en-us+m3", "en-gb+m3", "en-us+f2", "en-gb+f2"), "fr": ("fr+f2", "fr+m3", "fr-be+f2", "fr-be+m3")}
LONG_VOICES = {"en": "en-us+m3", "fr": "fr+f2"}
TEST_SEED = 4_242  # training uses sentence seeds 1000+, the training dev set 500+


def short_clips(lang: str, n: int) -> list[tuple[np.ndarray, str]]:
    rng = random.Random(f"test:{lang}")
    voices = TEST_VOICES[lang]
    return [(synthesize(text, voices[i % len(voices)], rate_wpm=rng.randint(140, 190), pitch=50 + rng.randint(-8, 8)), text)
            for i, text in enumerate(sentences(lang, n, seed=TEST_SEED))]


def scores(refs: list[str], hyps: list[str]) -> dict[str, float]:
    return {"cer": float(jiwer.cer(refs, hyps)), "wer": float(jiwer.wer(refs, hyps))}


def recognize_all(model_dir: Path, clips: list[tuple[np.ndarray, str]], quantization: str | None) -> dict[str, float]:
    asr = onnx_asr.load_model(None, str(model_dir), quantization=quantization)
    return scores([t for _, t in clips], [asr.recognize(a) for a, _ in clips])


def encoder_cosine(model_dir: Path, clips: list[np.ndarray]) -> list[float]:
    fp32 = ort.InferenceSession(str(model_dir / "encoder-model.onnx"))
    int8 = ort.InferenceSession(str(model_dir / "encoder-model.int8.onnx"))
    out = []
    for audio in clips:
        f, n = features(audio)
        a = fp32.run(["outputs"], {"audio_signal": f, "length": n})[0].ravel()
        b = int8.run(["outputs"], {"audio_signal": f, "length": n})[0].ravel()
        out.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return out


def activation_ratios(model_dir: Path, audio: np.ndarray) -> dict[str, float]:
    """max/median per-channel absmax of every constant-weight MatMul's input."""
    model = onnx.load(str(model_dir / "encoder-model.onnx"))
    names = matmul_inputs(model)
    absmax = channel_absmax(model, [features(audio)], names)
    return {name: outlier_ratio(absmax[name]) for name in names}


def measure(model_dir: Path, plain_dir: Path | None, n_short: int, long_s: float) -> dict:
    result: dict = {"short": {}, "long": {}, "int8_by_length": {}, "activation_outliers": {}}
    for lang in ("en", "fr"):
        clips = short_clips(lang, n_short)
        for q in (None, "int8"):
            t0 = time.time()
            result["short"][f"{lang}_{q or 'fp32'}"] = recognize_all(model_dir, clips, q)
            log.info("short %s %s: %s (%.0f s)", lang, q or "fp32", result["short"][f"{lang}_{q or 'fp32'}"], time.time() - t0)
            if plain_dir is not None and q == "int8":
                result["short"][f"{lang}_int8_plain"] = recognize_all(plain_dir, clips, q)
    longs = {}
    for lang, voice in LONG_VOICES.items():
        audio, text = make_speech(lang, voice, long_s, seed=TEST_SEED)
        longs[lang] = audio
        for q in (None, "int8"):
            asr = onnx_asr.load_model(None, str(model_dir), quantization=q)
            t0 = time.time()
            hyp = asr.recognize(audio)
            result["long"][f"{lang}_{q or 'fp32'}"] = scores([text], [hyp]) | {"seconds": long_s, "words": len(text.split())}
            log.info("long %s %s: %s (%.0f s)", lang, q or "fp32", result["long"][f"{lang}_{q or 'fp32'}"], time.time() - t0)
        if plain_dir is not None:
            asr = onnx_asr.load_model(None, str(plain_dir), quantization="int8")
            result["long"][f"{lang}_int8_plain"] = scores([text], [asr.recognize(audio)])
    lengths = [5, 30, 120, long_s]
    crops = [longs["en"][: int(s * 16_000)] for s in lengths]
    for name, d in (("outliers", model_dir), ("plain", plain_dir)):
        if d is not None:
            result["int8_by_length"][name] = dict(zip([f"{s:g}s" for s in lengths], encoder_cosine(d, crops), strict=True))
            ratios = activation_ratios(d, longs["en"][: 60 * 16_000])
            result["activation_outliers"][name] = {"max_ratio": max(ratios.values()),
                                                   "median_ratio": float(np.median(list(ratios.values()))),
                                                   "per_input": ratios}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--plain", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("demo/.work/measure.json"))
    parser.add_argument("--n-short", type=int, default=200)
    parser.add_argument("--long-s", type=float, default=390.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = measure(args.model_dir, args.plain, args.n_short, args.long_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "activation_outliers"}, indent=2))


if __name__ == "__main__":
    main()
