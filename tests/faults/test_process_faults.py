"""Faults of the process and the disk: kill -9 mid-stage, a full disk, a read-only output folder, two
runs at once, corrupt weights past base_model, a shard budget below the largest tensor."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.encoder_graph import write_windows
from tests.faults.helpers import ROOT, error_line, make_project, nothing_under, read_params, run_stage, succeeds, \
    write_params

DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model as models/base, eight 4 s windows, and the smoothed encoder."""
    root = make_project(tmp_path_factory.mktemp("process") / "repo")
    write_windows(root / "data" / "windows", calib=6, heldout=2, seconds=4.0)
    succeeds(run_stage(root, "base_model"))
    succeeds(run_stage(root, "pointwise"))
    succeeds(run_stage(root, "smoothquant"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, timeout=60)
    return root


def _mount(*args: str) -> bool:
    """mount(8) as root; False where it is missing or not permitted (the case is then skipped)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True, timeout=60).returncode == 0


def _empty_variants(project: Path) -> Path:
    target = project / "models" / "variants"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    return target


@pytest.fixture
def small_disk(project: Path) -> Path:
    """models/variants on a 1 MB tmpfs (root only: mount needs it)."""
    target = _empty_variants(project)
    if not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)):
        pytest.skip("needs root to mount a small tmpfs")
    yield target
    subprocess.run(["umount", str(target)], check=False, timeout=60)


@pytest.fixture
def read_only(project: Path) -> Path:
    """models/variants read-only: a read-only tmpfs as root, a 0555 folder otherwise."""
    target = _empty_variants(project)
    if not _mount("-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)):
        target.chmod(0o555)  # not root: a plain read-only folder (root would write through it)
        if os.geteuid() == 0:
            pytest.skip("root cannot make a folder read-only without mount")
        yield target
        target.chmod(0o755)
        return
    yield target
    subprocess.run(["umount", str(target)], check=False, timeout=60)


def test_disk_full_is_one_line_naming_the_output(project: Path, small_disk: Path) -> None:
    result = run_stage(project, "fp16")
    error_line(result, "models/variants/fp16", "No space left on device", "free space")
    nothing_under(small_disk / "fp16")
    subprocess.run(["umount", str(small_disk)], check=True, timeout=60)
    succeeds(run_stage(project, "fp16"))
    _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small_disk))  # for the fixture's umount


def test_read_only_output_folder(project: Path, read_only: Path) -> None:
    result = run_stage(project, "fp16")
    error_line(result, "models/variants/fp16", "Read-only file system" if os.geteuid() == 0 else "Permission")
    nothing_under(read_only / "fp16")


def test_kill_9_mid_stage_then_the_rerun_cleans_up(project: Path) -> None:
    """A stage killed while it writes leaves its temporary folder; DVC never sees it (.dvcignore), and
    the next run of the stage removes it and completes."""
    variants = project / "models" / "variants"
    shutil.rmtree(variants, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(project)}
    stage = subprocess.Popen([sys.executable, "-m", "stages.int8"], cwd=project, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(variants.glob(".int8_smoothquant.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    stage.send_signal(signal.SIGKILL)
    stage.wait(timeout=60)
    leftover = list(variants.glob(".int8_smoothquant.tmp-*"))
    assert leftover and not (variants / "int8_smoothquant").exists()
    ignored = subprocess.run([*DVC, "check-ignore", str(leftover[0].relative_to(project))], cwd=project,
                             capture_output=True, text=True, timeout=120)
    assert ignored.returncode == 0, ignored.stdout + ignored.stderr  # hashed into no output
    succeeds(run_stage(project, "int8"))
    assert (variants / "int8_smoothquant" / "encoder-model.int8.onnx").is_file()
    assert not list(variants.glob(".int8_smoothquant.tmp-*"))


def test_two_runs_at_once(project: Path) -> None:
    shutil.rmtree(project / "data" / "raw", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(project)}
    runs = [subprocess.Popen([sys.executable, "-m", "stages.fetch", "eval", "jfk"], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-500:] for _, err in results]
    assert (project / "data" / "raw" / "eval" / "jfk" / "provenance.json").is_file()
    assert not list((project / "data" / "raw" / "eval").glob(".jfk.tmp-*"))


@pytest.mark.parametrize(("model", "stage", "advice"), [("base", "pointwise", "rebuild it"),
                                                        ("pointwise", "smoothquant", "rebuild models/base")])
def test_nan_weights_past_base_model_fail_the_next_stage(project: Path, model: str, stage: str,
                                                         advice: str) -> None:
    data = project / "models" / model / "encoder-model.onnx.data"
    good = data.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 2 : len(raw) // 2 + 4096] = b"\xff" * 4096
    data.write_bytes(bytes(raw))
    try:
        error_line(run_stage(project, stage), "NaN or infinite", advice)
    finally:
        data.write_bytes(good)
    succeeds(run_stage(project, stage))


def test_shard_budget_below_the_largest_tensor(project: Path) -> None:
    good = read_params(project)
    write_params(project, read_params(project), **{"presets.demo": {"shard.budget_mb": 0.05}})
    error_line(run_stage(project, "shard"), "shard.budget_mb=0.05 is below the largest tensor",
               "shard.allow_oversize: true")
    nothing_under(project / "models" / "variants" / "fp32_sharded")
    write_params(project, read_params(project), **{"presets.demo": {"shard.budget_mb": 0.05,
                                                                     "shard.allow_oversize": True}})
    succeeds(run_stage(project, "shard"))
    write_params(project, good)


# the stage's own imports first, then an address-space cap of so many bytes above what they took: what fails
# is what the stage itself asks for (onnxruntime's sessions, numpy's arrays), as on a machine out of memory
CAPPED = """
import resource, runpy, sys
import stages.int8
size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]), resource.RLIM_INFINITY))
sys.argv = ["stages/int8.py"]
runpy.run_module("stages.int8", run_name="__main__")
"""


@pytest.mark.parametrize("headroom_mb", [2, 16])
def test_out_of_memory_is_one_line_with_the_peak_it_needs(project: Path, headroom_mb: int) -> None:
    (project / "metrics").mkdir(exist_ok=True)
    shutil.copyfile(ROOT / "metrics/rehearsal.json", project / "metrics/rehearsal.json")
    peak = json.loads((ROOT / "metrics/rehearsal.json").read_text())["stages"]["int8"]["peak_rss_gb"]
    _empty_variants(project)
    result = subprocess.run([sys.executable, "-c", CAPPED, str(headroom_mb << 20)], cwd=project, capture_output=True,
                            text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(project), "DVC_STAGE": "int8"})
    error_line(result, "int8 ran out of memory in build_int8", f"peaks at {peak} GB of RAM", "free memory")
    nothing_under(project / "models" / "variants" / "int8_smoothquant")
