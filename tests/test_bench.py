"""The cost benchmark at toy scale: the same code as the Parakeet-size run, so that it cannot rot.

A 2-layer, d_model 64 twin is built through the CLI, then `python -m bench.cost` runs every stage
and variant with 2 calibration windows of 3 s. No timing assertions: only that every stage and
variant was measured, with positive figures, and that the recorded sizes are the files on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from bench.cost import VARIANT_FILES
from requant import pointwise
from requant.stable import KERNEL_FLAGS
from bench.report import markdown

STAGES = {("pointwise", None), ("smoothquant", 2), ("int8_static", 2), ("int8_matmul_only", 2), ("int8_dynamic", None),
          ("nbits_w8", None), ("nbits_w4", None), ("fp16", None), ("shard", None), ("disk_copy", None)}


def _run(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    root = Path(__file__).resolve().parents[1]
    tmp = tmp_path_factory.mktemp("bench")
    twin, work, out = tmp / "twin", tmp / "work", tmp / "bench.json"
    _run("bench.twin", "--out", str(twin), "--layers", "2", "--d-model", "64", "--heads", "2", "--vocab", "33",
         "--stock-int8", cwd=root)
    _run("bench.cost", "--model", str(twin), "--windows", "2", "--window-s", "3", "--heldout", "1",
         "--audio-s", "6", "--lengths", "3", "--shard-mb", "0.1", "--profile", "int8_smoothquant", "--work", str(work), "--out", str(out), cwd=root)
    return json.loads(out.read_text()), twin, work


def test_twin_has_upstream_layout(bench_run: tuple[dict, Path, Path]) -> None:
    _, twin, _ = bench_run
    for name in ("encoder-model.onnx", "encoder-model.onnx.data", "decoder_joint-model.onnx", "config.json",
                 "vocab.txt", "nemo128.onnx", "decoder_joint-model.int8.onnx", "encoder-model.int8.onnx"):
        assert (twin / name).is_file(), name
    vocab = (twin / "vocab.txt").read_text().splitlines()
    assert len(vocab) == 33 and vocab[-1] == "<blk> 32"
    encoder = onnx.load(str(twin / "encoder-model.onnx"), load_external_data=False)
    assert [i.name for i in encoder.graph.input] == ["audio_signal", "length"]
    assert [o.name for o in encoder.graph.output] == ["outputs", "encoded_lengths"]
    locations = {e.value for t in encoder.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"encoder-model.onnx.data"}
    summary = json.loads((twin / "twin.json").read_text())
    assert summary["config"]["n_layers"] == 2 and summary["peak_rss_mb"] > 0


def test_the_cpu_kind_and_its_gemm_ceiling_are_recorded(bench_run: tuple[dict, Path, Path]) -> None:
    machine = bench_run[0]["machine"]
    assert machine["gemm"]["fp32_gflops"] > 0 and machine["gemm"]["int8_gflops"] > 0
    assert machine["gemm"]["int8_vs_fp32"] == round(machine["gemm"]["int8_gflops"] / machine["gemm"]["fp32_gflops"], 2)
    assert set(machine["isa"]) <= set(KERNEL_FLAGS) and machine["cpu_model"]
    assert "bare GEMM" in markdown(bench_run[0])


def test_every_stage_measured(bench_run: tuple[dict, Path, Path]) -> None:
    result, _, _ = bench_run
    assert result["complete"] and result["settings"]["windows"] == [2]
    assert {(s["stage"], s["windows"]) for s in result["stages"]} == STAGES
    for s in result["stages"]:
        assert s["wall_s"] > 0 and s["peak_rss_mb"] > 0 and s["output_mb"] > 0, s["stage"]
        assert all(p["calls"] > 0 and p["peak_rss_mb"] > 0 for p in s["phases"].values()), s["stage"]
    smoothquant = next(s for s in result["stages"] if s["stage"] == "smoothquant")
    assert smoothquant["summary"]["calibration_windows"] == 2 and smoothquant["phases"]["statistics"]["calls"] == 1
    int8 = next(s for s in result["stages"] if s["stage"] == "int8_static")
    assert int8["phases"]["calibration"]["calls"] == 1  # ranges computed once, before quantizing
    assert int8["phases"]["calibration_passes"]["calls"] == 2  # streamed: one window per call
    assert next(s for s in result["stages"] if s["stage"] == "shard")["shards"] > 1


def test_every_variant_measured_and_sizes_match_disk(bench_run: tuple[dict, Path, Path]) -> None:
    result, twin, work = bench_run
    assert set(result["variants"]) == set(VARIANT_FILES)
    for name, variant in result["variants"].items():
        folder = twin if VARIANT_FILES[name][0] is None else work / VARIANT_FILES[name][0]
        assert variant["encoder_files"], name
        for file, size in variant["encoder_files"].items():
            assert (folder / file).stat().st_size == size, (name, file)
        assert [p["audio_s"] for p in variant["passes"]] == [3, 6]
        for p in variant["passes"]:
            assert p["load_s"] > 0 and p["pass_s"] > 0 and p["peak_rss_mb"] > 0 and p["finite"], (name, p)
            assert p["pass_cpu_s"] > 0 and p["pass_peak_rss_mb"] <= p["peak_rss_mb"], (name, p)
        frames = [p["frames"] for p in variant["passes"]]
        assert 0 < frames[0] < frames[1], name  # 8x subsampling: a longer clip gives more frames
    profile = result["variants"]["int8_smoothquant"]["profile"]
    assert profile["audio_s"] == 6 and "MatMulIntegerToFloat" in profile["op_seconds"]  # the int8 kernels ran
    assert profile["pass_s"] > 0  # a pass of its own: the table's passes ran without the profiler
    assert not any("op_seconds" in p for v in result["variants"].values() for p in v["passes"])
    fp32, sharded = result["variants"]["fp32"], result["variants"]["fp32_sharded"]
    assert len(sharded["encoder_files"]) > 2  # graph + several shards
    fp32_data = sum(v for k, v in fp32["encoder_files"].items() if ".data" in k)
    assert sum(v for k, v in sharded["encoder_files"].items() if ".data" in k) == fp32_data


def test_diagnose_pass_measures_every_quantized_matmul_beside_the_fp32_pass(bench_run: tuple[dict, Path, Path],
                                                                            tmp_path: Path) -> None:
    _, twin, _ = bench_run
    _run("bench.diagnose_pass", "--twin", str(twin), "--lengths", "3", "--out", str(tmp_path / "d.json"),
         cwd=Path(__file__).resolve().parents[1])
    fp32, combined = json.loads((tmp_path / "d.json").read_text())["passes"]
    assert (fp32["kind"], fp32["matmuls"], combined["kind"]) == ("fp32", 0, "errors")
    assert combined["matmuls"] == 2 * 9 + 1 and 0 < combined["worst_rel_error"] < 1  # 2 layers of 9, the subsampling's
    assert fp32["peak_rss_gb"] > 0 and combined["pass_s"] >= 0
    assert not list(twin.glob(".matmul-errors-*"))  # the combined graph lived only for the pass


def test_int8_is_the_pipelines_default_and_matmul_only_its_comparison(bench_run: tuple[dict, Path, Path]) -> None:
    """int8_smoothquant is built as dvc.yaml builds it (pointwise convs as MatMuls, quantized); int8_matmul_only
    leaves exactly those MatMuls in fp32."""
    _, _, work = bench_run
    graphs = {v: onnx.load(str(work / v / "encoder-model.int8.onnx"), load_external_data=False).graph
              for v in ("int8_smoothquant", "int8_matmul_only")}
    made_from_convs = pointwise.rewritten_matmuls(graphs["int8_smoothquant"])
    assert made_from_convs and made_from_convs == pointwise.rewritten_matmuls(graphs["int8_matmul_only"])
    makers = {v: {out: n.op_type for n in g.node for out in n.output} for v, g in graphs.items()}
    matmuls = {v: {n.name: n for n in g.node} for v, g in graphs.items()}
    for name in made_from_convs:  # weight and input through a DequantizeLinear in the default, plain in MatMul-only
        assert [makers["int8_smoothquant"].get(i) for i in matmuls["int8_smoothquant"][name].input] == \
            ["DequantizeLinear"] * 2, name
        plain = matmuls["int8_matmul_only"][name]
        assert "DequantizeLinear" not in [makers["int8_matmul_only"].get(i) for i in plain.input], name


def test_int8_runs_each_layers_position_projection_in_that_layer(bench_run: tuple[dict, Path, Path],
                                                                  tmp_path: Path) -> None:
    """In onnxruntime's execution order, layer i's linear_pos comes after layer i-1's attention. With a
    Q/DQ pair on the MatMul outputs it ran every layer's first and held all their outputs (at Parakeet
    size, 390 s: 1 GB more peak RSS)."""
    _, _, work = bench_run
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(work / "int8_smoothquant" / "encoder-model.int8.onnx"), options,
                         providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    position = {node.name: i for i, node in enumerate(nodes)}
    kernels = [n.op_type for n in nodes if n.name == "/layers.1/self_attn/linear_pos/MatMul"]
    assert kernels == ["MatMulIntegerToFloat"]
    assert position["/layers.0/self_attn/Softmax"] < position["/layers.1/self_attn/linear_pos/MatMul"]


def test_markdown_lists_everything(bench_run: tuple[dict, Path, Path]) -> None:
    result, _, _ = bench_run
    table = markdown(result)
    for name in [*VARIANT_FILES, *(stage for stage, _ in STAGES)]:
        assert f"| {name} |" in table, name
    targets = result["targets"]
    assert targets["int8_smoothquant_speedup"] > 0 and targets["shard_write_vs_copy"] > 0
    assert set(targets["int8_calibration_peak_rss_mb"]) == {"2"}


def test_passes_only_keeps_the_stages(bench_run: tuple[dict, Path, Path], tmp_path: Path) -> None:
    result, twin, work = bench_run
    out = tmp_path / "bench.json"
    out.write_text(json.dumps(result))
    _run("bench.cost", "--model", str(twin), "--passes-only", "--audio-s", "6", "--lengths", "3",
         "--sweep-variants", "fp32", "--work", str(work), "--out", str(out), cwd=Path(__file__).resolve().parents[1])
    again = json.loads(out.read_text())
    assert again["complete"] and again["stages"] == result["stages"]
    assert [p["audio_s"] for p in again["variants"]["fp32"]["passes"]] == [3, 6]
    assert [p["audio_s"] for p in again["variants"]["fp16"]["passes"]] == [6]


def test_the_long_pass_bench_checks_both_rewrites_and_plots_the_block_sweep(bench_run: tuple[dict, Path, Path],
                                                                            tmp_path: Path) -> None:
    _, twin, _ = bench_run
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "bench.blockwise", "--twin", str(twin), "--int8", str(twin),
                           "--lengths", "2", "5", "--block", "5", "--subsampling-block", "3", "--sweep", "4", "16"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "metrics/bench_blockwise.json").read_text())
    assert {(r["variant"], r["form"], r["audio_s"]) for r in data["passes"]} == {
        (v, f, s) for v in ("fp32", "int8_smoothquant") for f in ("original", "attention", "both") for s in (2, 5)}
    assert all(0 <= r["max_rel_diff"] <= 1e-5 and r["peak_rss_gb"] > 0 for r in data["passes"])
    assert [r["block"] for r in data["sweep"]["passes"]] == [4, 16]
    assert (tmp_path / "metrics/plots/blockwise_block.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(twin.glob("*.both*.onnx")) and "int8_smoothquant" in done.stdout  # scratch graphs removed


def test_the_twins_decoder_gets_a_real_models_token_rate(bench_run: tuple[dict, Path, Path], tmp_path: Path) -> None:
    """The random joint emits far more tokens than speech has; the blank bias brings greedy decoding (onnx-asr's
    own loop, on the written files) to one token per FRAMES_PER_TOKEN encoder frames."""
    from bench.twin import FRAMES_PER_TOKEN, speech_rate_decoders
    from bench.web_check import speech
    from requant.asr import load_asr, transcribe

    _, twin, _ = bench_run
    audio = speech(12.0, 3)
    summary = speech_rate_decoders(twin, audio, tmp_path / "decoder")["decoders"]["decoder_joint-model.onnx"]
    assert summary["blank_bias"] > 0 and summary["unbiased_tokens"] > 1.5 * summary["tokens"]
    assert summary["frames_per_token"] == pytest.approx(FRAMES_PER_TOKEN, rel=0.15)
    folder = tmp_path / "biased"
    folder.mkdir()
    for source in twin.iterdir():
        (folder / source.name).symlink_to(source)
    (folder / "decoder_joint-model.onnx").unlink()
    (folder / "decoder_joint-model.onnx").symlink_to(tmp_path / "decoder/decoder_joint-model.onnx")
    assert len(transcribe(load_asr(folder), audio).tokens) == summary["tokens"]


def test_a_forced_run_is_timed_stage_by_stage(tmp_path: Path) -> None:
    """bench.repro_time reads each stage's time off DVC's own output, in the order DVC ran them; a failing
    stage ends it with one line naming the folder."""
    from bench.repro_time import forced_run
    from requant.common import StageError

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  slow:\n    cmd: sleep 2 && echo a > a.txt\n    outs:\n      - a.txt\n"
        "  quick:\n    cmd: cat a.txt > b.txt\n    deps:\n      - a.txt\n    outs:\n      - b.txt\n")
    stages = forced_run(tmp_path)
    assert list(stages) == ["slow", "quick"]
    assert stages["slow"] >= 2.0 and stages["quick"] >= 0  # the sleep lands in its own stage
    (tmp_path / "dvc.yaml").write_text("stages:\n  broken:\n    cmd: exit 3\n")
    with pytest.raises(StageError, match=f"dvc repro --force in {tmp_path} failed"):
        forced_run(tmp_path)


def test_the_op_profile_times_each_encoder_as_exported_and_glued(bench_run: tuple[dict, Path, Path],
                                                                 tmp_path: Path) -> None:
    _, twin, _ = bench_run
    shutil.copytree(twin, tmp_path / "work" / "twin")  # prepare_twin builds none where one is
    out = tmp_path / "profile.json"
    _run("bench.op_profile", "--work", str(tmp_path / "work"), "--lengths", "3", "6", "--out", str(out),
         "--doc", str(tmp_path / "op-profile.md"), cwd=Path(__file__).resolve().parents[1])
    result = json.loads(out.read_text())
    assert [(r["encoder"], r["audio_s"]) for r in result["passes"]] == [
        (name, seconds) for seconds in (3, 6) for name in ("fp32", "fp32 glued", "int8", "int8 glued")]
    for row in result["passes"]:  # the glue's bias and empty rows are built once, with a ReduceMin
        assert ("ReduceMin" in row["op_seconds"]) == row["encoder"].endswith("glued"), row
        assert ("QuantizeLinear" in row["op_seconds"] or "DynamicQuantizeLinear" in row["op_seconds"]) == \
            row["encoder"].startswith("int8"), row
    assert result["machine"]["gemm"]["int8_vs_fp32"] > 0
    assert (tmp_path / "op-profile.md").read_text().count("| int8 glued | ") == 2
