"""web/: a release folder of the demo model transcribed by onnxruntime-web (WASM), in headless Chromium.

Debian's Chromium (/usr/bin/chromium, `.ci/run` installs it) is driven by playwright-core, cross-origin
isolated with two WASM threads as a deployed page would be; without it the same page code runs in Node on
onnxruntime-web's WASM backend, so `make test` always checks something real (the tests of what only a
browser has, threads, decodeAudioData and WebGPU, need Chromium). Each precision's transcript must equal
onnx-asr's (Python, same release folder, same nemo128.onnx preprocessor) word for word.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import jiwer
import onnx
import numpy as np
import onnx_asr
import onnxruntime as ort
import pytest
import soundfile as sf

from demo.synth import synthesize
from requant import onnx_graph as og
from tests.encoder_graph import write_windows

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
RUNNER = WEB / ("run-browser.mjs" if CHROMIUM.is_file() else "run-node.mjs")
THREADS = ["--threads", "2"] if CHROMIUM.is_file() else []
needs_chromium = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Chromium (`.ci/run` installs it)")
# local attention runs as fp32_local: int8_local's banded sums flip int8 roundings between WASM and the CPU
# (one word of 27 to a quarter of them apart, run to run), which says nothing about the graph's arithmetic
PRECISIONS = ["fp32", "fp32_sharded", "fp16", "int8", "w8", "w4", "w4_mixed", "fp32_blockwise", "int8_blockwise",
              "fp32_local"]
ONNX_ASR = {"fp32": None, "fp32_sharded": None, "fp16": "fp16", "int8": "int8", "w8": "w8", "w4": "w4",
            "w4_mixed": "w4_mixed", "fp32_blockwise": None, "int8_blockwise": "int8", "fp32_local": None}
SUBFOLDER = {"fp32_sharded": "sharded", "fp32_blockwise": "blockwise", "int8_blockwise": "blockwise",
             "fp32_local": "local"}
SENTENCES = ["the quiet river runs under the old stone bridge", "nous partons demain matin vers la mer",
             "my brother reads a long letter in the kitchen"]


def run_page(release: Path, wav: Path, *precisions: str, flags: list[str] = THREADS) -> list[dict]:
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        pytest.fail("web/node_modules is missing: `make test` installs it (npm ci in web/)")
    done = subprocess.run(["node", str(RUNNER), *flags, str(release), str(wav), *precisions], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model's release folder, every variant made by its real stage (SmoothQuant calibrated on
    speech-like windows), packaged by the package stage."""
    from requant.params import BlockwiseParams, GptqParams, NbitsRecipe
    from stages.base_model import demo_model
    from stages.blockwise import build_blockwise
    from stages.fp16 import build_fp16
    from requant.static_int8 import build_int8
    from stages.nbits import build_nbits
    from stages.package import package
    from stages.shard import shard_encoder
    from stages.smoothquant import smooth_encoder

    root = tmp_path_factory.mktemp("web")
    base, variants = root / "models/base", root / "models/variants"
    base.mkdir(parents=True)
    demo_model(REPO / "demo/model", base)
    windows = write_windows(root / "windows", calib=4, heldout=2, seconds=4.0)
    smooth_encoder(base / "encoder-model.onnx", root / "smoothed", windows, alpha=0.5)
    build_int8(root / "smoothed/encoder-model.onnx", variants / "int8_smoothquant", windows, 99.999, 0, min_cosine=0.5)
    build_fp16(base, variants / "fp16")
    shard_encoder(base / "encoder-model.onnx", variants / "fp32_sharded", 4_000_000, np.load(windows / "windows.npy")[0])
    for recipe, bits in (("w8", 8), ("w4", 4)):
        for level, folder in ((4, variants / f"nbits_{recipe}"), (0, root / f"level0_{recipe}")):  # 0: see below
            build_nbits(base / "encoder-model.onnx", folder, f"encoder-model.{recipe}.onnx",
                        NbitsRecipe(bits, 32, True, level))
        aware = variants / f"nbits_{recipe}_aware"  # the release packs every recipe; these are not tested here
        build_nbits(base / "encoder-model.onnx", aware, f"encoder-model.{recipe}_aware.onnx",
                    NbitsRecipe(bits, 32, True, 4))
    # mixed: GPTQ, and the 4 MatMuls 4 bits hurt most kept at 8 (one graph with both MatMulNBits widths)
    gptq = GptqParams(damp=0.01, hessian_mb=64)
    for level, folder in ((4, variants / "nbits_w4_mixed"), (0, root / "level0_w4_mixed")):
        build_nbits(base / "encoder-model.onnx", folder, "encoder-model.w4_mixed.onnx",
                    NbitsRecipe(4, 32, True, level, gptq=True, keep_8bit=4), windows, gptq_settings=gptq)
    checks = list(np.load(windows / "windows.npy"))
    small_blocks = BlockwiseParams(block=16, subsampling_block=8, max_rel_error=1e-5)  # many Loop turns
    build_blockwise(base / "encoder-model.onnx", variants / "fp32_blockwise", small_blocks, checks)
    build_blockwise(variants / "int8_smoothquant/encoder-model.int8.onnx", variants / "int8_blockwise", small_blocks,
                    checks)
    for name, source in (("fp32_local", base / "encoder-model.onnx"),
                         ("int8_local", variants / "int8_smoothquant/encoder-model.int8.onnx")):  # local attention
        build_blockwise(source, variants / name, small_blocks, checks, [12, 12],
                        root / "smoothed/encoder-model.onnx" if "int8" in name else None)
    (root / "reports").mkdir()
    (root / "reports/MODEL_CARD.md").write_text("# demo\n")
    package(root)
    return root / "models/release"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 10 s of held-out voices, English and French, as a 16-bit 16 kHz WAV."""
    audio = np.concatenate([np.concatenate([synthesize(s, v), np.zeros(4000, np.float32)])
                            for s, v in zip(SENTENCES, ("en-us+f2", "fr+m3", "en-gb+m3"), strict=True)])
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    sf.write(path, audio, 16_000, subtype="PCM_16")
    return path


def python_text(release: Path, precision: str, wav: Path, encoder: Path | None = None) -> str:
    """onnx-asr's transcript with the release folder's files (or another encoder in their place)."""
    folder = release
    if precision in SUBFOLDER or encoder is not None:  # onnx-asr loads the canonical names: copy the file there
        folder = wav.parent / f"{precision}-release"
        shutil.copytree(release, folder, dirs_exist_ok=True)
        sources = [encoder] if encoder is not None else [
            p for p in (release / SUBFOLDER[precision]).iterdir() if ".int8" in p.name or "int8" not in precision]
        for source in sources:
            shutil.copyfile(source, folder / source.name)
    model = onnx_asr.load_model(None, folder, quantization=ONNX_ASR[precision], providers=["CPUExecutionProvider"],
                                preprocessor_config={"use_numpy_preprocessors": False,
                                                     "use_conv_preprocessors": False})
    audio, _ = sf.read(wav, dtype="float32")
    return model.recognize(audio, sample_rate=16_000)


def test_every_precision_matches_onnx_asr_word_for_word(release: Path, clip: Path) -> None:
    results = {r["precision"]: r for r in run_page(release, clip, *PRECISIONS)}
    assert list(results) == PRECISIONS
    for precision in PRECISIONS:
        result = results[precision]
        assert "error" not in result, result
        if precision in ("w8", "w4", "w4_mixed"):
            # onnxruntime-web's MatMulNBits ignores accuracy_level 4 (int8 activations, a CPU-only kernel) and
            # computes in fp32 on the dequantized weights: it matches CPU onnxruntime at accuracy_level 0, and
            # differs from the shipped level-4 file's CPU transcript (measured on this clip: w8 5 of 27 words,
            # 19 %; w4 9 of 26, 35 %: the demo model's 4-bit weights are near its noise floor). Level 0 on the
            # CPU sums in the order of the CPU's kernels: word for word on an AVX-512 machine, two words of 26
            # apart on an AVX2 one ('mère' / 'mer', 'letter' / 'lettre'), so up to 10 % may differ, and the page
            # must stay closer to level 0 than to level 4.
            level0 = release.parent.parent / f"level0_{precision}" / f"encoder-model.{precision}.onnx"
            cpu_level0 = python_text(release, precision, clip, level0)
            shipped = python_text(release, precision, clip)
            assert jiwer.wer(cpu_level0, result["text"]) <= 0.1, (precision, cpu_level0, result["text"])
            assert jiwer.wer(cpu_level0, result["text"]) < jiwer.wer(shipped, result["text"]) < 0.5, precision
            continue
        assert result["text"].split() == python_text(release, precision, clip).split(), precision
        assert len(result["text"].split()) >= 15 and result["loadMs"] > 0 and result["passMs"] > 0
        assert result["timestamps"] == sorted(result["timestamps"]) and result["timestamps"][-1] < 12.5
        assert result["encodeMs"] + result["decodeMs"] == pytest.approx(result["passMs"])
        assert result["msPerToken"] == pytest.approx(result["decodeMs"] / len(result["tokens"]))
        assert result["decoderCalls"] >= len(result["tokens"])
        if CHROMIUM.is_file():  # the test server sends COOP/COEP, as a deployer must: two WASM threads
            assert result["isolated"] and result["threads"] == 2 and not result["note"], result
    assert results["fp32_sharded"]["text"] == results["fp32"]["text"]
    mixed = og.load_graph(release / "encoder-model.w4_mixed.onnx").graph  # both MatMulNBits widths in one graph
    assert {onnx.helper.get_attribute_value(a) for n in mixed.node if n.op_type == "MatMulNBits"
            for a in n.attribute if a.name == "bits"} == {4, 8}
    # the blockwise rewrite runs on WASM too (ONNX Loop), with the same words as the file it rewrites
    assert results["fp32_blockwise"]["text"] == results["fp32"]["text"]
    assert results["int8_blockwise"]["text"] == results["int8"]["text"]


def test_bad_inputs_get_one_line_naming_the_file(release: Path, clip: Path, tmp_path: Path) -> None:
    broken = tmp_path / "release"
    shutil.copytree(release, broken)
    (broken / "decoder_joint-model.int8.onnx").unlink()
    (broken / "sharded/encoder-model.onnx.data.001").unlink()
    missing, shard = run_page(broken, clip, "int8", "fp32_sharded")
    assert missing["error"] == "decoder_joint-model.int8.onnx: missing from the release folder" + (
        " (HTTP 404)" if RUNNER.name == "run-browser.mjs" else f" {broken}")
    assert shard["error"].startswith("sharded/encoder-model.onnx.data.001: missing from the release folder")
    not_audio = tmp_path / "talk.mp3"
    not_audio.write_text("<html>a web page, not a recording</html>")
    [wrong_audio] = run_page(release, not_audio, "fp32")
    assert wrong_audio["error"] == ("talk.mp3: the browser cannot decode this audio (EncodingError); give a WAV, MP3, "
                                    "Ogg, FLAC or M4A recording" if CHROMIUM.is_file() else
                                    "talk.mp3: not a WAV file; give 16 kHz mono WAV audio")


def words_of(result: dict) -> list[str]:
    """The page's word list, checked against its transcript: in order, each with start <= end."""
    found = result["words"]
    assert [w["word"] for w in found] == result["text"].split()
    assert all(w["start"] <= w["end"] for w in found)
    assert [w["start"] for w in found] == sorted(w["start"] for w in found)
    return [w["word"] for w in found]


@needs_chromium
def test_without_cross_origin_isolation_the_page_runs_one_thread_and_says_why(release: Path, clip: Path) -> None:
    [isolated] = run_page(release, clip, "int8")
    [plain] = run_page(release, clip, "int8", flags=["--threads", "2", "--no-isolation"])
    assert isolated["threads"] == 2 and not plain["isolated"] and plain["threads"] == 1
    assert plain["note"] == ("one WASM thread: this page is not cross-origin isolated; serve it with "
                             "Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp "
                             "to use 2")
    assert plain["text"] == isolated["text"]  # threads split the work, not the sums


@needs_chromium
def test_the_page_takes_any_recording_the_browser_decodes(release: Path, clip: Path, tmp_path: Path) -> None:
    audio, _ = sf.read(clip, dtype="float32")
    flac, ogg = tmp_path / "stereo.flac", tmp_path / "stereo-44k.ogg"
    sf.write(flac, np.stack([audio, audio], axis=1), 16_000, subtype="PCM_16")  # same samples, two channels
    resampled = np.interp(np.arange(round(len(audio) * 44_100 / 16_000)) * 16_000 / 44_100, np.arange(len(audio)), audio)
    sf.write(ogg, np.stack([resampled, 0.5 * resampled], axis=1), 44_100, format="OGG", subtype="VORBIS")
    [wav] = run_page(release, clip, "int8")
    [from_flac] = run_page(release, flac, "int8")
    [from_ogg] = run_page(release, ogg, "int8")
    # lossless and at 16 kHz already: the browser's decoding and channel averaging give the same samples
    assert words_of(from_flac) == words_of(wav) and from_flac["audioS"] == wav["audioS"]
    # lossy at 44.1 kHz: resampled to 16 kHz in the browser (a wrong rate would stretch the audio and garble
    # the words); the demo model turns a few words with the codec's noise (measured 3 of 26)
    assert from_ogg["audioS"] == pytest.approx(wav["audioS"], abs=0.01)
    assert jiwer.wer(" ".join(words_of(wav)), " ".join(words_of(from_ogg))) <= 0.25
    # progress: every file loaded, the encoder done, the decoding to its last frame, in that order
    phases = [(p["phase"], p["done"], p["total"]) for p in from_ogg["progress"]]
    assert phases[:6] == [("load", 1, 4), ("load", 2, 4), ("load", 3, 4), ("load", 4, 4), ("encode", 0, 1),
                          ("encode", 1, 1)]
    assert phases[-1] == ("decode", from_ogg["encodedFrames"], from_ogg["encodedFrames"]) and len(phases) > 7


def cpu_encoded_frames(release: Path, wav: Path) -> int:
    """The encoded length CPU onnxruntime gives for the clip (nemo128 then the fp32 encoder)."""
    audio, _ = sf.read(wav, dtype="float32")
    features, lengths = ort.InferenceSession(str(release / "nemo128.onnx")).run(
        None, {"waveforms": audio[None], "waveforms_lens": np.array([len(audio)], np.int64)})
    encoder = ort.InferenceSession(str(release / "encoder-model.onnx"))
    return int(encoder.run(["encoded_lengths"], {"audio_signal": features, "length": lengths})[0][0])


@needs_chromium
def test_webgpu_on_a_software_adapter(release: Path, clip: Path) -> None:
    """onnxruntime-web's WebGPU backend on SwiftShader (Chromium's CPU Vulkan): fp32 gives CPU onnxruntime's
    words and encoded length; fp16 on an adapter without shader-f16 is refused in one line naming what runs."""
    fp32, fp16 = run_page(release, clip, "fp32", "fp16", flags=["--backend", "webgpu"])
    assert "error" not in fp32, fp32
    assert fp32["backend"] == "webgpu" and fp32["adapter"]["architecture"] == "swiftshader"
    assert fp32["text"].split() == python_text(release, "fp32", clip).split()
    assert fp32["encodedFrames"] == cpu_encoded_frames(release, clip)
    if "shader-f16" in fp32["adapter"]["features"]:  # another adapter: fp16 runs and must give fp16's words
        assert fp16["text"].split() == python_text(release, "fp16", clip).split()
    else:
        assert fp16["error"] == ("fp16 on WebGPU: the swiftshader adapter lacks shader-f16, which fp16 needs; "
                                 "choose fp32 on WebGPU or int8 on WASM")
