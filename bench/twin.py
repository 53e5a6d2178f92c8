"""A random-weight twin of Parakeet TDT 0.6B v3's ONNX export, for cost benchmarks (never committed).

    python -m bench.twin --out /work/twin                      # Parakeet's sizes: ~2.4 GB encoder
    python -m bench.twin --out /tmp/t --layers 2 --d-model 64   # a tiny one (tests)
    python -m bench.twin --out /work/twin-ctc --layout ctc       # parakeet-ctc-0.6b's layout and sizes

The folder holds what upstream's holds, with the same file and tensor names: encoder-model.onnx
(+ one encoder-model.onnx.data), decoder_joint-model.onnx, config.json, vocab.txt (<blk> last),
nemo128.onnx (onnx-asr's own, from the installed package) and the stock-recipe int8 decoder
(plus, with --stock-int8, the stock-recipe int8 encoder). twin.json records the sizes, the build
time and the builder's peak RSS. The weights are random: fine for costs, meaningless for accuracy.
--layout rnnt or ctc gives the English 0.6B models' layouts (80 mels, linear biases, 1025 tokens by default),
derived from a TDT twin as the demo's are (demo/layouts.py): an RNN-T decoder_joint without duration logits,
or one CTC graph (model.onnx, model.int8.onnx: quantize_dynamic of the whole graph) whose head is two 1x1 convs
where NeMo's is one (the same cost within 4 %: 1024x640 + 640x1025 against 1024x1025 per frame).

A random joint emits the most tokens it may (10) on every frame, so a decoding timed on the twin times
that artifact. speech_rate_decoders gives the joint a blank bias that brings greedy decoding to a real
model's token rate (FRAMES_PER_TOKEN) for timings that include decoding (bench.web_check).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from demo.fastconformer import PARAKEET, ModelConfig, build_random_model
from demo.layouts import write_demo_layout
from requant.layouts import LAYOUTS
from requant.common import atomic_path, fail, run_cli, write_json
from stages.int8_dynamic import build_dynamic_int8

log = logging.getLogger("bench.twin")

MB = 1e6
FEATURES = (80, 128)  # onnx-asr's nemo80 and nemo128 preprocessors
# parakeet-rnnt-0.6b and parakeet-ctc-0.6b (docs/models.md): 80 mels, biases in the block linears, 1025 tokens
ENGLISH_06B = {"n_mels": 80, "linear_bias": True, "vocab_size": 1025}
ENCODER, DECODER, INT8_DECODER = "encoder-model.onnx", "decoder_joint-model.onnx", "decoder_joint-model.int8.onnx"
# Real speech: about 2.7 words/s x 1.3 SentencePiece tokens a word = 3.5 tokens/s, over 12.5 encoder frames/s
# (80 ms each): one token per 3.5 frames, in the 3-4 a real Parakeet gives on conversational speech
FRAMES_PER_TOKEN = 3.5


def preprocessor(mels: int = 128) -> Path:
    """onnx-asr's bundled nemo<mels> preprocessor (taken from the installed package, never committed)."""
    path = Path(str(resources.files("onnx_asr.preprocessors") / "data" / f"nemo{mels}.onnx"))
    if not path.is_file():
        fail(f"{path} not found: the installed onnx-asr has no nemo{mels}.onnx; reinstall onnx-asr==0.12.0")
    return path


def nemo128() -> Path:
    return preprocessor(128)


def build_twin(out_dir: Path, config: ModelConfig, seed: int, stock_int8: bool, layout: str = "tdt") -> dict:
    """Write the twin folder atomically; return its summary (also written to twin.json)."""
    if config.n_mels not in FEATURES:
        fail(f"a twin needs 80 or 128 mel inputs (onnx-asr's nemo80, nemo128), not {config.n_mels}")
    started = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        build_random_model(tmp, config, seed)
        built_s = time.perf_counter() - started
        for name in (ENCODER, f"{ENCODER}.data", DECODER, "config.json", "vocab.txt"):
            if not (tmp / name).is_file():
                fail(f"demo.fastconformer.build_random_model wrote no {name}; the twin needs upstream's files")
        settings = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        (tmp / "config.json").write_text(json.dumps({**settings, "features_size": config.n_mels}, indent=4) + "\n")
        shutil.copyfile(preprocessor(config.n_mels), tmp / f"nemo{config.n_mels}.onnx")
        stock_int8 = stock_int8 or layout == "rnnt"  # the RNN-T layout ships its int8 encoder
        with tempfile.TemporaryDirectory(dir=tmp) as scratch:  # stock recipe: quantize_dynamic, defaults
            quantize_dynamic(str(tmp / DECODER), str(Path(scratch) / "decoder.onnx"), weight_type=QuantType.QInt8)
            shutil.move(Path(scratch) / "decoder.onnx", tmp / INT8_DECODER)
        if stock_int8:
            build_dynamic_int8(tmp / ENCODER, tmp / "stock")
            # one self-contained file, as upstream ships it (612 MB, under protobuf's 2 GB)
            onnx.save_model(onnx.load(str(tmp / "stock" / "encoder-model.int8.onnx")),
                            str(tmp / "encoder-model.int8.onnx"))
            shutil.rmtree(tmp / "stock")
        if layout != "tdt":
            with tempfile.TemporaryDirectory(dir=tmp) as scratch:
                for path in [p for p in tmp.iterdir() if p.is_file() and not p.name.startswith("nemo")]:
                    shutil.move(path, Path(scratch) / path.name)
                write_demo_layout(Path(scratch), layout, tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        summary = {
            "layout": layout,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
            "seed": seed,
            "files": files,
            "encoder_mb": round(sum(v for k, v in files.items() if k.startswith((ENCODER, "model.onnx"))) / MB, 1),
            "build_model_s": round(built_s, 1),
            "total_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB, 1),
        }
        write_json(tmp / "twin.json", summary)
    log.info("twin in %s: encoder %.0f MB, built in %.0f s, peak RSS %.0f MB", out_dir, summary["encoder_mb"],
             summary["total_s"], summary["peak_rss_mb"])
    return summary


def with_blank_bias(decoder: onnx.ModelProto, blank: int, bias: float) -> onnx.ModelProto:
    """A copy of the decoder whose joint adds `bias` to the blank logit (joint.out.bias[blank])."""
    biased = onnx.ModelProto()
    biased.CopyFrom(decoder)
    [out_bias] = [t for t in biased.graph.initializer if t.name == "joint.out.bias"]
    values = onnx.numpy_helper.to_array(out_bias).copy()
    values[blank] += bias
    out_bias.CopyFrom(onnx.numpy_helper.from_array(values, out_bias.name))
    return biased


def speech_rate_decoders(twin: Path, audio: np.ndarray, out_dir: Path, encoders: dict[str, Path] | None = None,
                         frames_per_token: float = FRAMES_PER_TOKEN) -> dict:
    """out_dir/<decoder file> for each (decoder file -> encoder) pair (default: the fp32 pair): the twin's
    decoder (the plain name) or its stock int8 (any other name), with the blank bias, found by bisection, at
    which greedy decoding of that encoder's output for `audio` emits one token per `frames_per_token`
    frames. Each encoder gets its own bias: a quantized random encoder's outputs differ in scale."""
    from requant.asr import load_asr  # onnx-asr's own greedy TDT loop, through its internals as recognize_all

    model = load_asr(twin).asr
    features = model._preprocessor(audio[None].astype(np.float32), np.array([len(audio)], np.int64))
    sources = {name: onnx.load(twin / name) for name in (DECODER, INT8_DECODER)}
    blank, found = model._blank_idx, {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name, encoder in (encoders or {DECODER: twin / ENCODER}).items():
            model._encoder = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
            encodings, lengths = model._encode(*features)
            decoder, frames = sources[DECODER if name == DECODER else INT8_DECODER], int(lengths[0])

            def tokens(bias: float) -> int:
                model._decoder_joint = ort.InferenceSession(with_blank_bias(decoder, blank, bias).SerializeToString(),
                                                            providers=["CPUExecutionProvider"])
                [(ids, _, _)] = model._decoding(encodings, lengths)
                return len(ids)

            low, high = -16.0, 64.0  # the token count falls as the bias grows
            for _ in range(16):
                middle = (low + high) / 2
                low, high = (middle, high) if tokens(middle) * frames_per_token > frames else (low, middle)
            bias = round(high, 3)
            onnx.save_model(with_blank_bias(decoder, blank, bias), str(tmp / name))
            emitted = tokens(bias)
            found[name] = {"encoder": encoder.name, "blank_bias": bias, "frames": frames, "tokens": emitted,
                           "frames_per_token": round(frames / max(1, emitted), 2), "unbiased_tokens": tokens(0.0)}
            log.info("%s on %s: blank bias %.3f, %d tokens over %d frames (unbiased %d)", name, encoder.name, bias,
                     emitted, frames, found[name]["unbiased_tokens"])
        summary = {"target_frames_per_token": frames_per_token, "audio_s": round(len(audio) / 16_000, 2),
                   "decoders": found}
        write_json(tmp / "speech_rate.json", summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.twin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create (replaced if it exists)")
    parser.add_argument("--layers", type=int, default=PARAKEET.n_layers)
    parser.add_argument("--d-model", type=int, default=PARAKEET.d_model)
    parser.add_argument("--heads", type=int, default=PARAKEET.n_heads)
    parser.add_argument("--ff-dim", type=int, help="default: 4 x d_model")
    parser.add_argument("--subsampling-channels", type=int, help="default: d_model / 4")
    parser.add_argument("--vocab", type=int, default=PARAKEET.vocab_size, help="tokens including <blk> (tdt)")
    parser.add_argument("--pred-hidden", type=int, help="LSTM and joint width (default: d_model x 5/8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stock-int8", action="store_true", help="also write the stock-recipe int8 encoder")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="tdt",
                        help="tdt: Parakeet v2/v3; rnnt, ctc: the English 0.6B models (80 mels, biases, 1025 tokens)")
    args = parser.parse_args()
    pred = args.pred_hidden or args.d_model * 5 // 8
    sizes = ENGLISH_06B if args.layout != "tdt" else {"vocab_size": args.vocab}
    config = PARAKEET.replace(n_layers=args.layers, d_model=args.d_model, n_heads=args.heads,
                              ff_dim=args.ff_dim or 4 * args.d_model,
                              subsampling_channels=args.subsampling_channels or max(args.d_model // 4, 4),
                              pred_hidden=pred, joint_hidden=pred, **sizes)
    build_twin(args.out, config, args.seed, args.stock_int8, args.layout)


if __name__ == "__main__":
    run_cli(main)
