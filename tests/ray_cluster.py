"""A real Ray cluster of several nodes on this machine (`ray start`), and the small project it evaluates.

Used by tests/test_ray.py and bench/ray_scaling.py. Each node is a `ray start` with one CPU (a head, then
`ray start --address=<head>`), all under a private --temp-dir, so that stop() kills exactly this
cluster's processes (found by that folder on their command lines, and their children, the workers) and
never another Ray on the machine. The nodes listen on 127.0.0.2 (loopback: Ray swaps 127.0.0.1 itself
for the machine's outward address). Every `ray start` is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
import yaml

RAY = Path(sys.executable).with_name("ray")
NODE_IP = "127.0.0.2"  # loopback, and not one Ray replaces by the machine's outward address
START_TIMEOUT_S = 120
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        return s.getsockname()[1]


class LocalCluster:
    """`nodes` Ray nodes of `cpus` CPUs each on this machine; start() then stop(), or use as a context."""

    def __init__(self, nodes: int, cpus: int = 1) -> None:
        self.nodes, self.cpus = nodes, cpus
        # short: Ray's unix sockets live under it and a socket path may not exceed 107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rq-ray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"{NODE_IP}:{self.port}"
        # Ray 2.60's token authentication, with a token of this cluster's own (not ~/.ray/auth_token)
        self.token = secrets.token_hex(32)

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that joins this cluster: a node, or the stage as its driver."""
        return {**stage_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **extra}

    def _ray_start(self, *args: str) -> None:
        env = self.client_env()
        done = subprocess.run([str(RAY), "start", f"--node-ip-address={NODE_IP}", f"--num-cpus={self.cpus}",
                               f"--temp-dir={self.temp_dir}", "--disable-usage-stats", *args],
                              capture_output=True, text=True, timeout=START_TIMEOUT_S, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def start(self) -> LocalCluster:
        try:
            self._ray_start("--head", f"--port={self.port}", "--include-dashboard=false")
            for _ in range(self.nodes - 1):
                self._ray_start(f"--address={self.address}")
        except BaseException:
            self.stop()
            raise
        return self

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes: those naming its temp dir, and all their descendants (the workers,
        whose titles read ray::IDLE or ray::<task>)."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if str(self.temp_dir) in " ".join(proc.info["cmdline"] or []):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
        return list(found.values())

    def workers_running(self, task: str) -> list[psutil.Process]:
        """Worker processes whose title says they run `task` right now (Ray sets it to ray::<task name>)."""
        running = []
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                if any(part.startswith(f"ray::{task}") for part in proc.cmdline()[:1]):
                    running.append(proc)
        return running

    def stop(self) -> None:
        """SIGKILL every process of this cluster (no `ray stop`: it would stop every Ray on the machine)."""
        for _ in range(3):  # a raylet may start a worker while we kill: look again
            procs = self.processes()
            if not procs:
                break
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL)
            psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- The small project: tests/test_evaluate.py's random model and clips, and a corpus of many shards ---

CORPUS_TEXTS = [("en_us", "the dog runs in the park"), ("fr_fr", "le chat dort sur la table"),
                ("en_us", "she reads a long letter"), ("fr_fr", "nous partons demain matin"),
                ("en_us", "we eat bread")]


def build_project(root: Path, utterances: int = 40) -> Path:
    """models/base (a random model in Parakeet's layout), the two long clips with their references, and a
    corpus of `utterances` short ones (several corpus shards of 16): what stages.evaluate reads."""
    from demo.synth import synthesize
    from requant.model_check import verify_model_dir
    from stages.base_model import demo_model
    from stages.corpus import build_corpus
    from tests.random_model import build_full_random_model
    from tests.test_evaluate import SENTENCES, write_eval_sets
    from requant.params import parse_params

    base = root / "models/base"
    base.mkdir(parents=True)
    demo_model(build_full_random_model(root / "random-model", seed=0), base)
    verify_model_dir(base)
    audio = np.concatenate([np.concatenate([synthesize(s, "en-us"), np.zeros(4000, np.float32)]) for s in SENTENCES])
    write_eval_sets(root, audio)
    manifest = root / "many_utterances"  # the corpus stage rebuilt from a larger manifest
    manifest.mkdir()
    voices = {"en_us": "en-us", "fr_fr": "fr"}
    clips = {i: synthesize(text, voices[lang]) for i, (lang, text) in enumerate(CORPUS_TEXTS)}
    lines = ["audio,text,lang"]
    for n in range(utterances):
        lang, text = CORPUS_TEXTS[n % len(CORPUS_TEXTS)]
        # each one a little different (a shift of silence), so that batches pad differently
        sf.write(manifest / f"{n}.wav", np.concatenate([np.zeros(160 * (n % 7), np.float32),
                                                       clips[n % len(CORPUS_TEXTS)]]), 16_000)
        lines.append(f"{n}.wav,{text},{lang}")
    (manifest / "manifest.csv").write_text("\n".join(lines) + "\n")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["corpus"]["local_dir"] = str(manifest)
    shutil.rmtree(root / "data/corpus")
    build_corpus(parse_params(raw), root / "data/corpus")
    return root


def write_params(root: Path, engine: str, address: str | None = None, corpus_shard: int = 16,
                 connect_timeout_s: float = 30, max_retries: int = 3) -> None:
    """params.yaml for `python -m stages.evaluate` in the small project (the test clips, the engine)."""
    from tests.test_evaluate import CLIPS, PARAMS

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["eval"].update(section_s=PARAMS.section_s, engine=engine, corpus_shard=corpus_shard)
    raw["eval_clips"] = {clip: {**raw["eval_clips"]["jfk"], "source": None} for clip in CLIPS}
    raw["ray"] = {"address": address, "connect_timeout_s": connect_timeout_s, "max_retries": max_retries}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def evaluate_cmd(variant: str = "fp32") -> list[str]:
    return [sys.executable, "-m", "stages.evaluate", variant]


def stage_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    took: list[float] = []
    started = time.perf_counter()
    yield took
    took.append(time.perf_counter() - started)
