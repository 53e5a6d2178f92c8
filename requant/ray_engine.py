"""eval.engine: ray. The evaluate stage's work as Ray tasks: one per long pass, one per corpus shard.

DVC still runs `python -m stages.evaluate <variant>` as one stage; only its work is spread. The driver
(that process) connects to the cluster, submits one task per long clip (a long_pass each, which loads a
fresh session as the local engine does for every pass) and one per slice of eval.corpus_shard utterances of
one language (count_corpus over it), gathers the results in submission order and hands them back to
stages.evaluate, which writes metrics/eval/<variant>.json as the local engine does. Shards start at
multiples of CORPUS_BATCH within their language, as the local engine's batches do, so every encoder batch,
and with it every padded frame and every number, is the local engine's: the file comes out byte for byte
the same.

Models and audio reach the workers by a path every node sees: the project root, made absolute on the
driver and handed to each task (a shared file system, or the same checkout at the same path on every node).
`import ray` happens only here, and stages.evaluate imports this module only when eval.engine is ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from requant.asr import assemble_model_dir, load_asr
from requant.common import StageError, describe_os_error, fail
from requant.evalsets import Utterance
from requant.params import BeamParams, EvalParams, RayParams
from requant.evaluation import count_corpus, language_chunks, long_pass, summarize_corpus

log = logging.getLogger("pipeline.evaluate.ray")

EncoderFiles = list[tuple[str, int]]  # (name, bytes) of the encoder's files, as a node sees them


class NodeError(Exception):
    """A task's one-line failure, with the node it ran on: the driver prints it as it is."""


# --- Where the cluster is, and getting there within a bounded time ------------------------------------

def cluster_address(params: RayParams) -> str | None:
    """ray.address, else $RAY_ADDRESS, else None: a local cluster for this run only."""
    return params.address or os.environ.get("RAY_ADDRESS") or None


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of 'host:port' or 'ray://host:port'; None for Ray's keywords ('auto', 'local')."""
    bare = address.removeprefix("ray://").rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float) -> None:
    """One clear line if nothing answers at the address: ray.init itself would retry for minutes and
    then raise a traceback about the GCS."""
    where = host_port(address)
    if where is None:
        if address not in ("auto", "local"):
            fail(f"ray.address '{address}' is not host:port (e.g. 10.0.0.5:6379) nor ray://host:port; "
                 "fix ray.address or RAY_ADDRESS")
        return
    try:
        with socket.create_connection(where, timeout=timeout_s):
            pass
    except OSError as err:
        cause = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        fail(f"the Ray cluster at {address} is unreachable ({cause}, {timeout_s:g} s timeout); start it "
             "(`ray start --head`, docs/cluster.md) or fix ray.address / RAY_ADDRESS")


def connect(address: str | None, timeout_s: float) -> None:
    """ray.init against the address within timeout_s (TCP check included), or a fresh local cluster."""
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}  # our own lines say it
    if address is None:
        _start_local({**kwargs, "address": "local", "include_dashboard": False})  # plain `ray`: no dashboard
        return
    started = time.monotonic()
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401  (Ray Client's transport, the ray[client] extra)
        except ImportError:
            fail(f"ray.address '{address}' is a Ray Client address, which needs ray[client]; give the "
                 "head's GCS address (host:6379) instead, as docs/cluster.md does")
    check_reachable(address, timeout_s)
    _join_cluster({**kwargs, "address": address}, max(1.0, timeout_s - (time.monotonic() - started)))


def _join_cluster(kwargs: dict[str, Any], budget: float) -> None:
    """ray.init in a daemon thread, waited for `budget` seconds: a port that accepts TCP but is no Ray head
    would keep ray.init retrying far longer, and then fail with a traceback about the GCS."""
    import ray

    outcome: dict[str, BaseException | None] = {}

    def init() -> None:
        try:
            ray.init(**kwargs)
            outcome["error"] = None
        except BaseException as err:  # noqa: BLE001  (reported on the driver's thread below)
            outcome["error"] = err

    where = f"the Ray cluster at {kwargs['address']}"
    with _stderr_held() as keep_quiet:
        thread = threading.Thread(target=init, name="ray-init", daemon=True)
        thread.start()
        thread.join(budget)
        if thread.is_alive() or outcome["error"] is not None:
            keep_quiet()
        if thread.is_alive():
            fail(f"{where} did not answer within {budget:.0f} s (ray.connect_timeout_s): is it a Ray head "
                 "(`ray status --address ...`)? Fix ray.address / RAY_ADDRESS or start it")
        if outcome["error"] is not None:
            fail(f"could not connect to {where}: {_first_line(outcome['error'])}")


def _start_local(kwargs: dict[str, Any]) -> None:
    """A fresh local cluster for this run, from the main thread: Ray ties its GCS and raylet to the thread
    that starts them (the parent-death signal), so they would die with a helper thread. Ray bounds its
    own start-up; our SIGTERM handler (unwind, remove temporaries) is put back over Ray's."""
    import ray

    handler = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except Exception as err:  # noqa: BLE001  (Ray raises many types; the user needs one line)
        fail(f"could not start a local Ray cluster: {_first_line(err)}")
    finally:
        signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def _stderr_held() -> Iterator[Callable[[], None]]:
    """File descriptor 2 points to /dev/null while ray.init runs: Ray's C++ core writes its own lines
    about the GCS there, which would bury (or follow) our one line. On success it comes back as it was;
    after keep_quiet() (a failure) it stays there, for the still-running init thread, and Python's
    sys.stderr writes to the real one, so that our error is the only line."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    quiet = False

    def keep_quiet() -> None:
        nonlocal quiet
        quiet = True

    try:
        yield keep_quiet
    finally:
        if quiet:
            sys.stderr = os.fdopen(saved, "w", buffering=1)
        else:
            os.dup2(saved, 2)
            os.close(saved)


# --- The tasks: what runs on the workers --------------------------------------------------------------

def _node() -> str:
    """This worker's node: its IP and the start of its Ray node id (both in `ray status`/`ray list nodes`)."""
    import ray

    return f"node {ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:12]})"


@contextlib.contextmanager
def on_node(root: str) -> Iterator[Path]:
    """Work from the project root as this node sees it; a failure becomes NodeError naming the node, so
    that the driver can say which machine lacks a model file (and not only which file)."""
    try:
        os.chdir(root)  # relative paths inside the stage code resolve against the shared root
        yield Path(root)
    except StageError as err:
        raise NodeError(f"{err} [on {_node()}]") from None
    except OSError as err:
        raise NodeError(f"{describe_os_error(err)} [on {_node()}]") from None


def _encoder_files(files: list[Path]) -> EncoderFiles:
    return [(p.name, p.stat().st_size) for p in files]


def long_pass_task(root: str, variant: str, clip: str, eval_params: EvalParams,
                   beam: BeamParams) -> tuple[EncoderFiles, dict[str, Any]]:
    """requant.evaluation.long_pass on this node, its model folder assembled from the shared root."""
    with on_node(root) as project, tempfile.TemporaryDirectory(prefix=f"eval-{variant}-") as model_dir:
        files = assemble_model_dir(variant, eval_params.decoder, Path(model_dir), project)
        return _encoder_files(files), long_pass(Path(model_dir), clip, eval_params, beam, project)


def corpus_task(root: str, variant: str, utterances: list[Utterance], eval_params: EvalParams,
                beam: BeamParams) -> tuple[EncoderFiles, tuple[dict[str, Any], float, float, dict[str, float]]]:
    """requant.evaluation.count_corpus over one shard (its audio paths relative to the root) on this node."""
    with on_node(root) as project, tempfile.TemporaryDirectory(prefix=f"eval-{variant}-") as model_dir:
        files = assemble_model_dir(variant, eval_params.decoder, Path(model_dir), project)
        shard = [Utterance(u.id, u.lang, project / u.audio, u.text, u.where) for u in utterances]
        return _encoder_files(files), count_corpus(load_asr(Path(model_dir)), shard, eval_params, beam)


# --- The driver: submit, gather in order, merge ----------------------------------------------------------

def shards(utterances: list[Utterance], size: int) -> list[list[Utterance]]:
    """Slices of `size` utterances (a multiple of CORPUS_BATCH: params.py checks it) within one language each:
    25 FLEURS languages fan out as 25 groups of tasks, and each shard's batches are the local engine's."""
    return language_chunks(utterances, size)


def relative_to_root(utterances: list[Utterance], root: Path) -> list[Utterance]:
    """The utterances with audio paths relative to the project root (read_corpus gives them relative to
    the driver's working directory); one outside the root keeps its absolute path, which every node must
    then see too."""
    base = Path(os.path.abspath(root))
    moved = []
    for u in utterances:
        path = Path(os.path.abspath(u.audio))  # abspath, not resolve: a DVC cache symlink stays in the project
        moved.append(Utterance(u.id, u.lang, path.relative_to(base) if path.is_relative_to(base) else path,
                               u.text, u.where))
    return moved


def merge_corpus(parts: list[tuple[dict[str, Any], float, float, dict[str, float]]],
                 decodings: list[str]) -> tuple[dict[str, Any], float, float, dict[str, float]]:
    """The shards' count_corpus results as one, in shard order: the same lists, in the same order (and so
    the same languages first), as count_corpus over the whole corpus."""
    by_lang: dict[str, dict[str, dict[str, list]]] = {name: {} for name in decodings}
    seconds, encode_s, decode_s = 0.0, 0.0, dict.fromkeys(decodings, 0.0)
    for part_by_lang, part_seconds, part_encode_s, part_decode_s in parts:
        seconds, encode_s = seconds + part_seconds, encode_s + part_encode_s
        for name in decodings:
            decode_s[name] += part_decode_s[name]
            for lang, items in part_by_lang[name].items():
                merged = by_lang[name].setdefault(lang, {key: [] for key in items})
                for key, values in items.items():
                    merged[key].extend(values)
    return by_lang, seconds, encode_s, decode_s


def gather(refs: list[Any], labels: list[str]) -> list[Any]:
    """Every task's result in submission order, logged as each one lands; the first failure becomes one
    line (the worker's own line for NodeError, else Ray's reason with the node's IP)."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending, started = list(refs), time.perf_counter()
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        i = index[done[0]]
        try:
            results[i] = ray.get(done[0])
        except RayTaskError as err:
            if isinstance(err.cause, NodeError):
                fail(str(err.cause))
            fail(f"Ray task {labels[i]} failed on node {err.ip}: {_first_line(err.cause or err)}")
        except RayError as err:  # the worker or its node died more than ray.max_retries times, ...
            fail(f"Ray task {labels[i]} failed: {_first_line(err)} (retried ray.max_retries times)")
        log.info("%s done (%d/%d, %.1f s)", labels[i], len(refs) - len(pending), len(refs),
                 time.perf_counter() - started)
    return results


def same_files(found: list[EncoderFiles], labels: list[str]) -> EncoderFiles:
    """The encoder's files as every task saw them; nodes that disagree see different projects."""
    for files, label in zip(found[1:], labels[1:], strict=True):
        if files != found[0]:
            fail(f"the encoder files differ between Ray tasks {labels[0]} ({found[0]}) and {label} ({files}): "
                 "every node must see the same project at the same path (docs/cluster.md)")
    return found[0]


def run_ray(variant: str, eval_params: EvalParams, beam: BeamParams, clips: list[str],
            utterances: list[Utterance], root: Path,
            params: RayParams) -> tuple[EncoderFiles, dict[str, dict], tuple]:
    """stages.evaluate.run_local's result, computed by Ray tasks on the cluster."""
    import ray

    connect(cluster_address(params), params.connect_timeout_s)
    try:
        # max_retries: a worker or node that dies mid-task (OOM-killed, preempted) gets the task run again;
        # a task's own error (a missing file) is not retried: it would fail the same way.
        options = {"num_cpus": 1, "max_retries": params.max_retries, "retry_exceptions": False}
        long_remote = ray.remote(long_pass_task).options(name="eval_long_pass", **options)
        corpus_remote = ray.remote(corpus_task).options(name="eval_corpus_shard", **options)
        project = os.path.abspath(root)  # as the user names it: a shared mount's real path may differ per node
        # long passes first: they are the longest tasks, so the cluster is not left waiting for them at the end
        refs = [long_remote.remote(project, variant, clip, eval_params, beam) for clip in clips]
        parts = shards(relative_to_root(utterances, root), eval_params.corpus_shard)
        refs += [corpus_remote.remote(project, variant, part, eval_params, beam) for part in parts]
        labels = [f"long pass {clip}" for clip in clips] + [
            f"corpus shard {i + 1}/{len(parts)}" for i in range(len(parts))]
        log.info("%s: %d long passes and %d corpus shards on %s", variant, len(clips), len(parts),
                 ", ".join(f"{n['NodeManagerAddress']}" for n in ray.nodes() if n["Alive"]))
        results = gather(refs, labels)
    finally:
        ray.shutdown()
    encoder_files = same_files([files for files, _ in results], labels)
    long = {clip: result for clip, (_, result) in zip(clips, results[: len(clips)], strict=True)}
    by_lang, seconds, encode_s, decode_s = merge_corpus([part for _, part in results[len(clips):]],
                                                        list(eval_params.decodings))
    return encoder_files, long, (summarize_corpus(by_lang), seconds, encode_s, decode_s)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
