"""The release folder's browser claims at Parakeet scale, in headless Chromium (`make web-check`).

    python -m bench.web_check [--work /tmp/web-check] [--audio-s 30] [--windows 8]

Builds the Parakeet-size random twin (bench.twin), its sharded fp32, SmoothQuant int8 and fp16 encoders
with the pipeline's own stage code, lays them out as a release folder, and runs web/index.html on each
precision for one pass over a synthesized clip: fp32 (one 2.44 GB .data file), fp32 sharded, int8, fp16.
Records the load time, pass time, the browser's peak memory (largest Chromium process) or the exact error,
in metrics/web_check.json, and prints the table. About 10 minutes and 7 GB of RAM on 2 cores.
"""

from __future__ import annotations

import argparse
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
STEP_TIMEOUT_S = 3600


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
"""


def speech(seconds: float, seed: int) -> np.ndarray:
    from demo.synth import make_speech

    return make_speech("en", "en-us+m3", seconds, seed)[0]


def lay_out(twin: Path, work: Path) -> Path:
    """A release folder of links: the twin's files under the names the page loads for each precision."""
    release = work / "release"
    shutil.rmtree(release, ignore_errors=True)
    (release / "sharded").mkdir(parents=True)
    links = {name: twin / name for name in ("nemo128.onnx", "vocab.txt", "config.json", "encoder-model.onnx",
                                              "encoder-model.onnx.data", "decoder_joint-model.onnx")}
    links["decoder_joint-model.int8.onnx"] = twin / "decoder_joint-model.int8.onnx"
    links |= {p.name: p for folder in ("int8", "fp16") for p in (work / folder).iterdir()}
    links |= {f"sharded/{p.name}": p for p in (work / "sharded").iterdir()}
    for name, source in links.items():
        (release / name).symlink_to(source)
    shards = sorted(p.name for p in (work / "sharded").iterdir() if ".data." in p.name)
    (release / "sharded/shards.json").write_text(json.dumps(shards))
    return release


def web_check(work: Path, audio_s: float, windows: int) -> dict:
    import soundfile as sf

    twin = work / "twin"
    started = time.perf_counter()
    if not (twin / "encoder-model.onnx.data").is_file():
        child("-m", "bench.twin", "--out", str(twin))
    (work / "windows").mkdir(parents=True, exist_ok=True)
    window = [speech(30.0, 100 + i) for i in range(windows + 2)]
    np.save(work / "windows/windows.npy", np.stack(window).astype(np.float32))
    (work / "windows/index.json").write_text(json.dumps(
        [{"speaker": f"s{i}", "start_s": 0.0, "split": "calib" if i < windows else "heldout"}
         for i in range(len(window))]))
    for step, folder in (("shard", "sharded"), ("int8", "int8"), ("fp16", "fp16")):
        if not (work / folder).is_dir():  # a rerun keeps what an earlier run built
            log.info("building %s", step)
            child("-c", BUILD, str(twin), str(work), step)
    release = lay_out(twin, work)
    clip = work / "clip.wav"
    sf.write(clip, speech(audio_s, 7), 16_000, subtype="PCM_16")
    built_s = time.perf_counter() - started
    done = subprocess.run(["node", str(ROOT / "web/run-browser.mjs"), str(release), str(clip), *PRECISIONS],
                          capture_output=True, text=True, timeout=STEP_TIMEOUT_S, cwd=ROOT)
    if done.returncode != 0:
        fail(f"web/run-browser.mjs failed: {done.stderr.strip().splitlines()[-1:]}")
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    sizes = {p: sum(f.stat().st_size for f in (release / d).iterdir() if f.name.startswith(n) and f.is_file())
             for p, d, n in (("fp32", ".", "encoder-model.onnx"), ("fp32_sharded", "sharded", "encoder-model.onnx"),
                             ("int8", ".", "encoder-model.int8.onnx"), ("fp16", ".", "encoder-model.fp16.onnx"))}
    return {"audio_s": audio_s, "build_s": round(built_s, 1), "chromium": chromium_version(),
            "precisions": {r["precision"]: {"encoder_mb": round(sizes[r["precision"]] / 1e6),
                                            **{k: r.get(k) for k in ("loadMs", "passMs", "peakMb", "error")}}
                           for r in results}}


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
    args = parser.parse_args()
    result = web_check(args.work, args.audio_s, args.windows)
    write_json(OUT, result)
    print(f"{'precision':<13} {'encoder MB':>10} {'load s':>7} {'pass s':>7} {'peak MB':>8}  error")
    for name, r in result["precisions"].items():
        load = "–" if r["loadMs"] is None else f"{r['loadMs'] / 1e3:.1f}"
        run = "–" if r["passMs"] is None else f"{r['passMs'] / 1e3:.1f}"
        print(f"{name:<13} {r['encoder_mb']:>10} {load:>7} {run:>7} {r['peakMb'] or '–':>8}  {r['error'] or ''}")


if __name__ == "__main__":
    run_cli(main)
