"""Every encoder the release folder ships, in headless Chromium at Parakeet scale (`make web-check`).

    python -m bench.web_check [--work /tmp/web-check] [--audio-s 30] [--threads 1 2] [--long-s 390] [--local-s 1200]

Builds the Parakeet-size random twin (bench.twin) and every encoder the release folder ships with the
pipeline's own stage code: SmoothQuant int8 with its pointwise convs, w8/w4 round-to-nearest and
activation-aware (bench.quantize_more's builds, reused), fp16, the sharded fp32, and the blockwise and
local-attention graphs of fp32 and int8. Each decoder file gets a blank bias that brings greedy decoding of
its encoder's output to a real model's token rate (bench.twin.speech_rate_decoders), so that a pass times
real decoding work.

Then web/index.html runs each precision on a synthesized clip, one fresh browser per run, cross-origin
isolated, at each --threads count: load time, encoder time, decoding time (and per token), the whole
pass, real-time factor, the browser's peak memory (largest Chromium process), or the exact error. With
--long-s the int8, blockwise and local-attention int8 encoders also run one long pass (with --local-s, the
local-attention one also a pass past the export's 400 s table), and the int8
encoder runs once more under onnxruntime-web's profiler (time per op type, against the native profile of
metrics/bench_quantize_more.json). JSON: metrics/web_check.json. About 35 minutes and 7 GB on 2 cores,
builds not counted (bench.quantize_more's, first time: about 45 more).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path


from bench.fixtures import BUILD_STEPS, NBITS, ROOT, STEP_TIMEOUT_S, child, prepare_twin, speech
from requant.common import fail, run_cli, write_json
from requant.variants import browser_precisions
from requant.web_figures import browser_table

log = logging.getLogger("bench.web_check")
OUT = ROOT / "metrics/web_check.json"
# the page's precisions (web/asr.js, from the registry) -> their encoder file in the release folder
ENCODERS = {name: files["encoder"] for name, files in browser_precisions().items()}
PRECISIONS = list(ENCODERS)
LONG_PRECISIONS = ["int8", "int8_blockwise", "int8_local"]


def lay_out(twin: Path, work: Path, files: dict[str, Path]) -> Path:
    """A release folder of links: each file under the name the page loads for its precision."""
    release = work / "release"
    shutil.rmtree(release, ignore_errors=True)
    for sub in ("sharded", "blockwise", "local"):
        (release / sub).mkdir(parents=True)
    int8 = files["int8_smoothquant"]
    links = {name: twin / name for name in ("nemo128.onnx", "vocab.txt", "config.json", "encoder-model.onnx",
                                              "encoder-model.onnx.data")}
    links |= {p.name: p for folder in ("decoder", "fp16") for p in (work / folder).glob("*.onnx*")}
    links |= {int8.name: int8, f"{int8.name}.data": int8.with_name(f"{int8.name}.data")}
    for recipe in NBITS:
        encoder = files[f"nbits_{recipe}"]
        links |= {p.name: p for p in encoder.parent.glob(f"{encoder.name}*")}
    links |= {f"sharded/{p.name}": p for p in (work / "sharded").iterdir()}
    for sub in ("blockwise", "local"):
        links |= {f"{sub}/encoder-model.onnx": work / "graphs" / sub / "encoder-model.onnx",
                  f"{sub}/encoder-model.onnx.data": twin / "encoder-model.onnx.data",
                  f"{sub}/{int8.name}": work / "graphs" / sub / int8.name,
                  f"{sub}/{int8.name}.data": int8.with_name(f"{int8.name}.data")}
    for name, source in links.items():
        (release / name).symlink_to(source)
    shards = sorted(p.name for p in (work / "sharded").iterdir() if ".data." in p.name)
    (release / "sharded/shards.json").write_text(json.dumps(shards))
    return release


def in_browser(release: Path, clip: Path, precisions: list[str], *flags: str) -> dict:
    """One fresh headless Chromium per precision: its figures or its error, and the encoder's size."""
    done = subprocess.run(["node", str(ROOT / "web/run-browser.mjs"), *flags, str(release), str(clip), *precisions],
                          capture_output=True, text=True, timeout=STEP_TIMEOUT_S * 2, cwd=ROOT,
                          env={**os.environ, "WEB_TIMEOUT_MS": str(STEP_TIMEOUT_S * 1000)})
    if done.returncode != 0:
        fail(f"web/run-browser.mjs failed: {done.stderr.strip().splitlines()[-1:]}")
    runs = {}
    for r in (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")):
        seconds = {key: r.get(f"{key}Ms") and round(r[f"{key}Ms"] / 1e3, 2) for key in ("load", "encode", "decode", "pass")}
        runs[r["precision"]] = {
            **{f"{key}_s": value for key, value in seconds.items()}, "threads": r.get("threads"),
            "rtf": seconds["pass"] and round(seconds["pass"] / r["audioS"], 3),
            "decode_ms_per_token": r.get("msPerToken") and round(r["msPerToken"], 2), "tokens": len(r.get("tokens") or []),
            "decoder_calls": r.get("decoderCalls"), "encoded_frames": r.get("encodedFrames"), "peak_mb": r.get("peakMb"),
            "error": r.get("error"), "text_sha256": r.get("text") and hashlib.sha256(r["text"].encode()).hexdigest(),
            **({"op_ms": r["opMs"]} if "opMs" in r else {})}
    return runs


def web_check(work: Path, audio_s: float, windows: int, threads: list[int], long_s: float, local_s: float) -> dict:
    import soundfile as sf

    from bench.quantize_more import build, mb

    started = time.perf_counter()
    twin = prepare_twin(work, windows)
    files, _ = build(twin, work / "quantize-more", work / "windows")
    for step in BUILD_STEPS:
        if not (work / {"shard": "sharded"}.get(step, step)).is_dir():  # a rerun keeps what an earlier run built
            log.info("building %s", step)
            child("-m", "bench.fixtures", str(twin), str(work), str(files["int8_smoothquant"]), step)
    release = lay_out(twin, work, files)
    clip = work / "clip.wav"
    sf.write(clip, speech(audio_s, 7), 16_000, subtype="PCM_16")
    result = {"audio_s": audio_s, "build_s": round(time.perf_counter() - started, 1), "chromium": chromium_version(),
              "decoder": json.loads((work / "decoder/speech_rate.json").read_text()),
              "precisions": {name: {"encoder_mb": round(mb(release / file)), "threads": {}}
                             for name, file in ENCODERS.items()}}
    for count in threads:
        for name, run in in_browser(release, clip, PRECISIONS, "--threads", str(count)).items():
            result["precisions"][name]["threads"][str(count)] = run
    most = str(max(threads))
    if long_s:
        long_clip = work / "long.wav"
        sf.write(long_clip, speech(long_s, 8), 16_000, subtype="PCM_16")
        runs = in_browser(release, long_clip, LONG_PRECISIONS, "--threads", most)
        result["long"] = {"audio_s": long_s, "threads": int(most), "precisions": runs}
    if local_s:  # past the export's 400 s table: local attention only (linear time and memory)
        local_clip = work / "local.wav"
        sf.write(local_clip, speech(local_s, 9), 16_000, subtype="PCM_16")
        result["local"] = {"audio_s": local_s, "threads": int(most),
                           "precisions": in_browser(release, local_clip, ["int8_local"], "--threads", most)}
    [profiled] = in_browser(release, clip, ["int8"], "--threads", most, "--profile").values()
    result["int8_profile"] = {"audio_s": audio_s, "threads": int(most), "encode_s": profiled["encode_s"],
                              "op_ms": profiled.get("op_ms"), "native": native_profile()}
    return result


def native_profile() -> dict | None:
    """The same encoder's profile on the CPU (bench.quantize_more, onnxruntime's own profiler), if measured."""
    native = ROOT / "metrics/bench_quantize_more.json"
    if not native.is_file():
        return None
    figures = json.loads(native.read_text())
    return {"cpu": figures["machine"]["cpu_model"], "cpus": figures["machine"]["cpus"],
            "op_ms": {op: round(s * 1e3) for op, s in figures["int8_profile"]["op_seconds"].items()},
            "pass_s": figures["variants"]["int8_smoothquant"]["passes"][0]["pass_s"]}


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
    parser.add_argument("--windows", type=int, default=4, help="calibration windows (bench.quantize_more's builds)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="WASM thread counts to run")
    parser.add_argument("--long-s", type=float, default=0.0, help="then the int8 encoders on a pass this long")
    parser.add_argument("--local-s", type=float, default=0.0, help="then int8 local attention on a pass this long")
    args = parser.parse_args()
    result = web_check(args.work, args.audio_s, args.windows, args.threads, args.long_s, args.local_s)
    write_json(OUT, result)
    print(browser_table(result))


if __name__ == "__main__":
    run_cli(main)
