"""eval.engine: ray against a real Ray cluster: two `ray start` nodes on this machine (tests/ray_cluster.py).

The small project of tests/test_evaluate.py (random model in Parakeet's layout, two synthesized long clips
with their references) with a corpus of 40 utterances, three shards of 16; `python -m stages.evaluate`
runs in its own process as DVC would run it. The Ray engine must write metrics/eval/<variant>.json byte
for byte as the local engine does, also when a worker is SIGKILLed mid-task, and fail in one line when
the cluster cannot be reached or a node lacks a model file.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from requant.params import ParamsError
from tests.params_helpers import make_params
from tests.ray_cluster import (NODE_IP, REPO, LocalCluster, build_project, evaluate_cmd, free_port, stage_env,
                               write_params)

STAGE_TIMEOUT_S = 300


def run_stage(root: Path, variant: str = "fp32", env: dict[str, str] | None = None,
              timeout: float = STAGE_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(evaluate_cmd(variant), cwd=root, env=env or stage_env(), capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(stderr: str) -> str:
    """The stage's error: exactly one 'error:' line, the last one, and no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr[-3000:]
    assert "Traceback" not in stderr
    return errors[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("ray-project"))


@pytest.fixture(scope="module")
def local_bytes(project: Path) -> bytes:
    """metrics/eval/fp32.json by the local engine; its process must never import ray."""
    write_params(project, "local")
    check = ("import runpy, sys; sys.argv = ['evaluate', 'fp32']\n"
             "try:\n    runpy.run_module('stages.evaluate', run_name='__main__')\n"
             "finally:\n    print('ray imported:', 'ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", check], cwd=project, env=stage_env(), capture_output=True,
                          text=True, timeout=STAGE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray imported: False" in done.stdout
    return (project / "metrics/eval/fp32.json").read_bytes()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(nodes=2) as running:
        yield running


def test_the_ray_engine_writes_the_local_engines_bytes(project: Path, local_bytes: bytes, cluster: LocalCluster):
    (project / "metrics/eval/fp32.json").unlink(missing_ok=True)
    write_params(project, "ray", cluster.address, corpus_shard=16)
    done = run_stage(project, env=cluster.client_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 long passes and 3 corpus shards" in done.stderr
    assert (project / "metrics/eval/fp32.json").read_bytes() == local_bytes
    assert (project / "metrics/timing/fp32.json").is_file()


def test_a_worker_killed_mid_task_is_retried_with_the_same_numbers(project: Path, local_bytes: bytes,
                                                                    cluster: LocalCluster):
    (project / "metrics/eval/fp32.json").unlink(missing_ok=True)
    write_params(project, "ray", None)  # the cluster from RAY_ADDRESS this time
    stage = subprocess.Popen(evaluate_cmd(), cwd=project, env=cluster.client_env(RAY_ADDRESS=cluster.address),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = []
    try:
        deadline = time.monotonic() + STAGE_TIMEOUT_S
        while stage.poll() is None and not killed and time.monotonic() < deadline:
            for worker in cluster.workers_running("eval_long_pass")[:1]:
                worker.send_signal(signal.SIGKILL)
                killed.append(worker.pid)
            time.sleep(0.01)
        _, stderr = stage.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        stage.kill()
    assert killed, "no worker was caught running a long pass"
    assert stage.returncode == 0, stderr[-3000:]
    assert (project / "metrics/eval/fp32.json").read_bytes() == local_bytes


def test_a_node_missing_a_model_file_is_named_with_the_file(project: Path, cluster: LocalCluster):
    write_params(project, "ray", cluster.address)
    done = run_stage(project, "fp16", env=cluster.client_env())  # the small project has no fp16 on any node
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert f"{project}/models/variants/fp16/encoder-model.fp16.onnx is missing" in line
    assert re.search(rf"\[on node {re.escape(NODE_IP)} \([0-9a-f]{{12}}\)\]$", line), line


def test_an_unreachable_cluster_fails_in_one_line_quickly(project: Path):
    nobody = f"{NODE_IP}:{free_port()}"  # nothing listens there
    write_params(project, "ray", nobody, connect_timeout_s=5)
    started = time.monotonic()
    done = run_stage(project, timeout=60)
    assert done.returncode == 1 and time.monotonic() - started < 30
    line = one_error_line(done.stderr)
    assert f"the Ray cluster at {nobody} is unreachable" in line
    # a port that takes the connection but is no Ray head: ray.init itself must be cut short
    with socket.socket() as silent:
        silent.bind((NODE_IP, 0))
        silent.listen(64)
        address = f"{NODE_IP}:{silent.getsockname()[1]}"
        write_params(project, "ray", address, connect_timeout_s=3)
        started = time.monotonic()
        done = run_stage(project, timeout=60)
    assert done.returncode == 1 and time.monotonic() - started < 30
    assert f"the Ray cluster at {address} did not answer within" in one_error_line(done.stderr)


def test_without_an_address_a_local_cluster_runs_for_the_stage(project: Path, local_bytes: bytes, tmp_path: Path):
    (project / "metrics/eval/fp32.json").unlink(missing_ok=True)
    write_params(project, "ray", None, corpus_shard=32)  # no ray.address, no RAY_ADDRESS: ray.init("local")
    done = run_stage(project, env={**stage_env(), "HOME": str(tmp_path)})  # Ray writes ~/.ray/auth_token
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 long passes and 2 corpus shards" in done.stderr
    assert (project / "metrics/eval/fp32.json").read_bytes() == local_bytes


@pytest.mark.parametrize(("changes", "message"), [
    ({"engine": "spark"}, "eval.engine='spark'; use local or ray"),
    ({"corpus_shard": 24}, "eval.corpus_shard=24 must be a multiple of 16"),
    ({"corpus_shard": 0}, "eval.corpus_shard=0 must be >= 16"),
])
def test_bad_engine_params_are_refused_in_one_line(changes: dict, message: str):
    with pytest.raises(ParamsError, match=re.escape(message)):
        make_params(eval=changes)


def test_the_default_engine_is_local():
    params = make_params()
    assert params.eval.engine == "local" and params.ray.address is None and params.ray.max_retries >= 1
    assert "eval.engine" in (REPO / "dvc.yaml").read_text()  # DVC tracks it: -S eval.engine=ray re-runs evaluate
