"""The release folder's browser claims at Parakeet scale, in headless Chromium (`make web-check`).

    python -m bench.web_check [--work /tmp/web-check] [--audio-s 30] [--windows 8] [--long-s 390]

Builds the Parakeet-size random twin (bench.twin), its sharded fp32, SmoothQuant int8 and fp16 encoders
with the pipeline's own stage code, and the int8 encoder's long-pass rewrite (stage blockwise's code and
params), lays them out as a release folder, and runs web/index.html on each precision for one pass over
a synthesized clip: fp32 (one 2.44 GB .data file), fp32 sharded, int8, fp16. With --long-s it then runs
int8 and int8_blockwise on one long pass. Records the load time, pass time (encoder, and with the greedy
decoding), the browser's peak memory (largest Chromium process) or the exact error, in
metrics/web_check.json, and prints the table. About 10 minutes and 7 GB of RAM on 2 cores; a 390 s
pass adds about 15.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from requant.common import fail, run_cli, write_json

log = logging.getLogger("bench.web_check")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "metrics/web_check.json"
PRECISIONS = ["fp32", "fp32_sharded", "int8", "fp16"]
LONG_PRECISIONS = ["int8", "int8_blockwise"]
STEP_TIMEOUT_S = 3600
ENCODER_FILES = {"fp32": ".", "fp32_sharded": "sharded", "int8": ".", "fp16": ".", "int8_blockwise": "blockwise"}


def child(*args: str) -> None:
    """One build step in its own process, so that its memory is returned before the browser runs."""
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, timeout=STEP_TIMEOUT_S,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


BUILD = """
import sys, numpy as np
from pathlib import Path
from stages.fp16 import build_fp16
from stages.int8 import build_int8
from stages.shard import shard_encoder
from stages.smoothquant import smooth_encoder
twin, work, step = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
windows = work / "windows"
if step == "shard":
    shard_encoder(twin / "encoder-model.onnx", work / "sharded", 1_500_000_000, np.load(windows / "windows.npy")[0])
elif step == "int8":
    smooth_encoder(twin / "encoder-model.onnx", work / "smoothed", windows, alpha=0.5)
    build_int8(work / "smoothed/encoder-model.onnx", work / "int8", windows, 99.999, 0, min_cosine=-1.0)
elif step == "fp16":
    build_fp16(twin, work / "fp16")
elif step == "blockwise":  # graph only: the weights stay in int8/, linked from the release folder
    import onnx
    from bench.cost import pipeline_params
    from stages.blockwise import rewrite_long_pass
    p = pipeline_params().blockwise
    model, _ = rewrite_long_pass(onnx.load(work / "int8/encoder-model.int8.onnx", load_external_data=False),
                                 p, work / "int8")
    (work / "blockwise").mkdir()
    onnx.save(model, work / "blockwise/encoder-model.int8.onnx")
"""


def speech(seconds: float, seed: int) -> np.ndarray:
    from demo.synth import make_speech

    return make_speech("en", "en-us+m3", seconds, seed)[0]


def lay_out(twin: Path, work: Path) -> Path:
    """A release folder of links: the twin's files under the names the page loads for each precision."""
    release = work / "release"
    shutil.rmtree(release, ignore_errors=True)
    (release / "sharded").mkdir(parents=True)
    (release / "blockwise").mkdir()
    links = {name: twin / name for name in ("nemo128.onnx", "vocab.txt", "config.json", "encoder-model.onnx",
                                              "encoder-model.onnx.data", "decoder_joint-model.onnx")}
    links["decoder_joint-model.int8.onnx"] = twin / "decoder_joint-model.int8.onnx"
    links |= {p.name: p for folder in ("int8", "fp16") for p in (work / folder).iterdir()}
    links |= {f"sharded/{p.name}": p for p in (work / "sharded").iterdir()}
    links |= {"blockwise/encoder-model.int8.onnx": work / "blockwise/encoder-model.int8.onnx",
              "blockwise/encoder-model.int8.onnx.data": work / "int8/encoder-model.int8.onnx.data"}
    for name, source in links.items():
        (release / name).symlink_to(source)
    shards = sorted(p.name for p in (work / "sharded").iterdir() if ".data." in p.name)
    (release / "sharded/shards.json").write_text(json.dumps(shards))
    return release


def in_browser(release: Path, clip: Path, precisions: list[str]) -> dict:
    """One fresh headless Chromium per precision: its figures or its error, and the encoder's size."""
    done = subprocess.run(["node", str(ROOT / "web/run-browser.mjs"), str(release), str(clip), *precisions],
                          capture_output=True, text=True, timeout=STEP_TIMEOUT_S, cwd=ROOT,
                          env={**os.environ, "WEB_TIMEOUT_MS": str(STEP_TIMEOUT_S * 1000)})
    if done.returncode != 0:
        fail(f"web/run-browser.mjs failed: {done.stderr.strip().splitlines()[-1:]}")
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {r["precision"]: {"encoder_mb": encoder_mb(release, r["precision"]),
                             **{k: r.get(k) and round(r[k]) for k in ("loadMs", "encodeMs", "passMs", "peakMb")},
                             "error": r.get("error"), "tokens": len(r.get("tokens") or []),
                             "text_sha256": r.get("text") and hashlib.sha256(r["text"].encode()).hexdigest()}
            for r in results}


def encoder_mb(release: Path, precision: str) -> int:
    folder = release / ENCODER_FILES[precision]
    stem = {"fp16": "encoder-model.fp16.onnx"}.get(precision, "encoder-model.int8.onnx" if "int8" in precision
                                                    else "encoder-model.onnx")
    return round(sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith(stem) and f.is_file()) / 1e6)


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


def web_check(work: Path, audio_s: float, windows: int, long_s: float) -> dict:
    import soundfile as sf

    started = time.perf_counter()
    twin = prepare_twin(work, windows)
    for step, folder in (("shard", "sharded"), ("int8", "int8"), ("fp16", "fp16"), ("blockwise", "blockwise")):
        if not (work / folder).is_dir():  # a rerun keeps what an earlier run built
            log.info("building %s", step)
            child("-c", BUILD, str(twin), str(work), step)
    release = lay_out(twin, work)
    clip = work / "clip.wav"
    sf.write(clip, speech(audio_s, 7), 16_000, subtype="PCM_16")
    built_s = time.perf_counter() - started
    result = {"audio_s": audio_s, "build_s": round(built_s, 1), "chromium": chromium_version(),
              "precisions": in_browser(release, clip, PRECISIONS)}
    if long_s:
        long_clip = work / "long.wav"
        sf.write(long_clip, speech(long_s, 8), 16_000, subtype="PCM_16")
        runs = in_browser(release, long_clip, LONG_PRECISIONS)
        texts = {r["text_sha256"] for r in runs.values()}
        result["long"] = {"audio_s": long_s, "precisions": runs,
                          "same_transcript": len(texts) == 1 and None not in texts}
    return result


def chromium_version() -> str:
    try:
        return subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True,
                              timeout=60).stdout.strip()
    except OSError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/web-check"))
    parser.add_argument("--audio-s", type=float, default=30.0)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--long-s", type=float, default=0.0, help="then int8 and int8_blockwise on a pass this long")
    args = parser.parse_args()
    result = web_check(args.work, args.audio_s, args.windows, args.long_s)
    write_json(OUT, result)
    for title, part in (("", result), ("long pass: ", result.get("long"))):
        if part is None:
            continue
        print(f"{title}{part['audio_s']:g} s of audio")
        print(f"{'precision':<15} {'encoder MB':>10} {'load s':>7} {'encoder s':>9} {'pass s':>7} {'peak MB':>8}"
              "  error")
        for name, r in part["precisions"].items():
            load, encode, run = ("–" if r.get(k) is None else f"{r[k] / 1e3:.1f}"
                                 for k in ("loadMs", "encodeMs", "passMs"))
            print(f"{name:<15} {r['encoder_mb']:>10} {load:>7} {encode:>9} {run:>7} {r['peakMb'] or '–':>8}  "
                  f"{r['error'] or ''}")
    if "long" in result:
        print(f"long pass, the same transcript from every precision: {result['long']['same_transcript']}")


if __name__ == "__main__":
    run_cli(main)
