"""What the benchmarks share: the Parakeet-size twin with its windows, synthetic speech, and the builds of
the browser's encoders at twin scale, each step in a child process so that its memory is returned before
the next thing is measured.

    python -m bench.fixtures <twin> <work> <int8 encoder> <step>   # one build_step, as child() runs it
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from requant.params import PARAMS_FILE, Params, parse_params
from requant.variants import SHIPPED

ROOT = Path(__file__).resolve().parents[1]
STEP_TIMEOUT_S = 3600
# the weight-only recipes the release folder ships ("w8", ...), as the registry says
NBITS = tuple(key.removeprefix("nbits_") for key in SHIPPED if key.startswith("nbits_"))
BUILD_STEPS = ("decoder", "shard", "fp16", "graphs")


def pipeline_params(path: Path = PARAMS_FILE) -> Params:
    """params.yaml as the parakeet preset sees it (alpha, percentile, window length, shard budget)."""
    raw = yaml.safe_load(Path(path).read_text())
    return parse_params({**raw, "preset": "parakeet"})


def child(*args: str) -> None:
    """One build step in its own process, so that its memory is returned before the browser runs."""
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, timeout=STEP_TIMEOUT_S,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def speech(seconds: float, seed: int, lang: str = "en", voice: str = "en-us+m3") -> np.ndarray:
    """Synthetic speech (espeak-ng through demo.synth), 16 kHz mono float32."""
    from demo.synth import make_speech

    return make_speech(lang, voice, seconds, seed)[0]


def prepare_twin(work: Path, windows: int) -> Path:
    """work/twin (built once) and work/windows: `windows` calibration windows and two held out, as the
    stages read them."""
    twin = work / "twin"
    if not (twin / "encoder-model.onnx.data").is_file():
        child("-m", "bench.twin", "--out", str(twin))
    (work / "windows").mkdir(parents=True, exist_ok=True)
    window = [speech(30.0, 100 + i) for i in range(windows + 2)]
    np.save(work / "windows/windows.npy", np.stack(window).astype(np.float32))
    (work / "windows/index.json").write_text(json.dumps(
        [{"speaker": f"s{i}", "start_s": 0.0, "split": "calib" if i < windows else "heldout"}
         for i in range(len(window))]))
    return twin


def build_step(twin: Path, work: Path, int8: Path, step: str) -> None:
    """One of BUILD_STEPS for the browser's release folder at twin scale, into work/<step>."""
    import onnx

    from bench.twin import speech_rate_decoders
    from requant.long_pass import rewrite_long_pass
    from stages.fp16 import to_fp16
    from stages.shard import shard_encoder

    if step == "decoder":  # one bias per decoder file the release pairs with an encoder, on that encoder's output
        nbits = {r: int8.parents[1] / f"nbits_{r}" / f"encoder-model.{r}.onnx" for r in NBITS}
        speech_rate_decoders(twin, speech(30.0, 7), work / "decoder", {
            "decoder_joint-model.onnx": twin / "encoder-model.onnx", "decoder_joint-model.int8.onnx": int8,
            **{f"decoder_joint-model.{r}.onnx": encoder for r, encoder in nbits.items()}})
    elif step == "shard":
        shard_encoder(twin / "encoder-model.onnx", work / "sharded", 1_500_000_000,
                      np.load(work / "windows/windows.npy")[0])
    elif step == "fp16":  # the encoder, and the decoder with the blank bias
        (work / "fp16.tmp").mkdir()
        to_fp16(twin / "encoder-model.onnx", work / "fp16.tmp/encoder-model.fp16.onnx")
        to_fp16(work / "decoder/decoder_joint-model.onnx", work / "fp16.tmp/decoder_joint-model.fp16.onnx")
        (work / "fp16.tmp").rename(work / "fp16")
    elif step == "graphs":  # graphs only: the weights stay where they are, linked from the release folder
        p = pipeline_params()
        (work / "graphs.tmp").mkdir()
        for folder, context in (("blockwise", None), ("local", p.local.context)):
            (work / "graphs.tmp" / folder).mkdir()
            for src in (twin / "encoder-model.onnx", int8):
                model, _ = rewrite_long_pass(onnx.load(src, load_external_data=False), p.blockwise, src.parent, context)
                onnx.save(model, work / "graphs.tmp" / folder / src.name)
        (work / "graphs.tmp").rename(work / "graphs")
    else:
        raise SystemExit(f"unknown build step '{step}'; one of {', '.join(BUILD_STEPS)}")


if __name__ == "__main__":
    build_step(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
