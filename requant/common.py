"""Small shared helpers: atomic outputs, JSON, hashing, logging, and one-line fatal errors."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

log = logging.getLogger("pipeline")


class StageError(RuntimeError):
    """An error the user can act on; printed as one line, without a traceback."""


class Stopped(BaseException):
    """SIGTERM or SIGINT while a child process ran: the child's group is gone, the stage unwinds."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


def fail(message: str) -> NoReturn:
    raise StageError(message)


def run_cli(main: Callable[[], Any]) -> None:
    """Run a stage entry point: log to stderr, have glibc return large blocks (release_large_blocks), and turn
    StageError/ParamsError, OSError from a full or read-only disk, and running out of memory (numpy's,
    onnxruntime's or the OS's) into one line and exit 1."""
    from requant.params import ParamsError

    setup_logging()
    release_large_blocks()
    signal.signal(signal.SIGTERM, _stop)  # unwind (removing temporary outputs) instead of dying mid-write
    try:
        main()
    except KeyboardInterrupt:
        print("error: stopped by SIGINT; nothing was written", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except (StageError, ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except MemoryError as err:  # numpy's _ArrayMemoryError too
        print(f"error: {describe_memory_error(err)}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        print(f"error: {describe_memory_error(err) if err.errno == errno.ENOMEM else describe_os_error(err)}",
              file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # onnxruntime's allocator failures arrive as its own RuntimeException
        if not any(sign in str(err) for sign in ALLOCATION_FAILED):
            raise
        print(f"error: {describe_memory_error(err)}", file=sys.stderr)
        sys.exit(1)
    except Stopped as stop:
        print(f"error: stopped by {signal.Signals(stop.signum).name}; nothing was written", file=sys.stderr)
        sys.exit(128 + stop.signum)


ALLOCATION_FAILED = ("Failed to allocate memory", "bad_alloc", "std::bad_alloc")
REHEARSAL_FILE = Path("metrics/rehearsal.json")  # each stage's peak at Parakeet scale (make rehearse)


def describe_memory_error(err: BaseException) -> str:
    """One line: the stage (DVC's name when DVC runs it), the project function that asked for the memory,
    and what the stage peaks at on the Parakeet-size twin."""
    module = Path(sys.argv[0]).stem
    stage = os.environ.get("DVC_STAGE") or " ".join([f"python -m stages.{module}", *sys.argv[1:]])
    root, ours = Path(__file__).resolve().parents[1], []
    for frame, line in traceback.walk_tb(err.__traceback__):  # the project's own frames, outermost first
        path = Path(frame.f_code.co_filename).resolve()
        if path.is_relative_to(root) and path != Path(__file__).resolve() and frame.f_code.co_name != "main":
            ours.append((frame.f_code.co_name, f"{path.relative_to(root)}:{line}"))
    where = f" in {' > '.join(name for name, _ in ours[-3:])} ({ours[-1][1]})" if ours else ""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        peak = json.loads(REHEARSAL_FILE.read_text())["stages"][stage.split(":")[-1] if "DVC_STAGE" in os.environ
                                                                 else module]["peak_rss_gb"]
        return (f"{stage} ran out of memory{where}; at Parakeet scale it peaks at {peak} GB of RAM "
                f"({REHEARSAL_FILE}): free memory, or run it on a machine with more")
    return f"{stage} ran out of memory{where}; free memory, or run it on a machine with more"


def release_large_blocks(threshold: int = 1 << 20) -> None:
    """Have glibc serve every block above `threshold` bytes with mmap and hand it back when freed. By default
    it raises that threshold as large blocks are freed (up to 32 MB), after which a pass's many [T, N]
    tensors come from the heap, which fragments and stays resident. On the Parakeet-size twin: diagnose's
    120 s pass 5.95 GB instead of 3.43 GB, the stock int8's 2.2 GB instead of 1.72, the same times. Every
    stage has it (run_cli). A no-op where the C library has no mallopt."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-3, threshold)  # -3: M_MMAP_THRESHOLD


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


def describe_os_error(err: OSError) -> str:
    """'<path>: <cause>; <what to do>' for an OSError raised anywhere, even deep inside a library
    (atomic_path puts the output's name on errors that carry none)."""
    path = err.filename
    cause = err.strerror or str(err) or type(err).__name__
    advice = {errno.ENOSPC: "free space on that disk (or point the repository elsewhere) and rerun",
              errno.EDQUOT: "free space within your quota and rerun",
              errno.EACCES: "make it writable (chmod u+w) or run from a copy you own, then rerun",
              errno.EPERM: "make it writable (chmod u+w) or run from a copy you own, then rerun",
              errno.EROFS: "the file system is read-only; run from a writable copy"}.get(err.errno or 0, "then rerun")
    return f"{path}: {cause}; {advice}" if path else f"{cause}; {advice}"


def stale_temps(final: Path) -> list[Path]:
    """Temporary siblings `.<name>.tmp-<pid>` of `final` left by runs that are no longer alive."""
    stale = []
    for path in final.parent.glob(f".{final.name}.tmp-*"):
        pid = path.name.rsplit("-", 1)[1]
        if not pid.isdigit() or not _alive(int(pid)):
            stale.append(path)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


@contextlib.contextmanager
def child_process(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A child in a process group of its own (its own children included, e.g. ffmpeg under yt-dlp),
    killed as a group when the block ends and when this process gets SIGTERM or SIGINT: no orphan
    keeps writing after a stage is stopped."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)

    def kill_group() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def on_signal(signum: int, frame: object) -> None:
        kill_group()
        raise Stopped(signum)  # unwinds through atomic_path, which removes the half-written output

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield proc
    finally:
        kill_group()
        proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `final` only if the block completes.

    Works for files and directories. An interrupted or failed block leaves nothing under `final`.
    Temporary siblings that a killed run left behind are removed first (those of live runs are kept);
    .dvcignore hides them all from DVC, so none is ever hashed into a neighbouring output.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temps(final):
        log.info("removing %s, left by an interrupted run", stale)
        _remove(stale)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        for attempt in range(3):  # another run of the same stage may publish between our remove and rename
            _remove(final)
            try:
                os.replace(tmp, final)
                break
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 2:
                    raise
    except OSError as err:  # a full or read-only disk: name the output, not a library's scratch or our temp
        if not err.filename or ".tmp-" in str(err.filename):
            err.filename = str(final)
        raise
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    for _ in range(5):  # another run of the same stage may swap a file or folder in meanwhile: look again
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            return
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue


def copy_file(source: Path, dest: Path) -> None:
    """Copy in the kernel (block sharing where the filesystem allows), else through Python."""
    try:
        with open(source, "rb") as src, open(dest, "wb") as dst:
            remaining = os.fstat(src.fileno()).st_size
            while remaining > 0:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), remaining)
                if copied == 0:
                    break
                remaining -= copied
        if remaining == 0:
            return
    except OSError:  # copy_file_range unsupported across these filesystems
        pass
    shutil.copyfile(source, dest)


def link_or_copy(source: Path, dest: Path) -> None:
    """dest as a hard link to source's file (a symlink is followed: the Hugging Face cache's snapshots are
    links to its blobs), else, across filesystems or where links are refused, a copy. The bytes are stored
    once, as DVC's hardlink cache stores each output (.dvc/config): a multi-GB model is not kept twice."""
    try:
        os.link(os.path.realpath(source), dest)
    except OSError:
        copy_file(source, dest)


def write_json(path: str | Path, data: Any) -> None:
    """Write stable, sorted JSON atomically (byte-identical for equal data)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def memory_bytes(field: str = "VmHWM") -> int:
    """This process's VmHWM (peak RSS since start or since reset_peak_memory()) or VmRSS, from /proc;
    ru_maxrss where /proc is absent."""
    try:
        return int(Path("/proc/self/status").read_text().split(f"{field}:", 1)[1].split()[0]) * 1024
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak_memory() -> bool:
    """Start VmHWM again from the current RSS (Linux), so that each phase gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
