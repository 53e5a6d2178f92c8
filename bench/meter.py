"""Wall time and peak resident memory of a whole process and of named phases inside it.

The kernel's high-water mark (VmHWM, what ru_maxrss reports) can be reset by writing "5" to
/proc/self/clear_refs, which gives each phase its own exact peak even when phases run one after the
other in one process. Where that file cannot be written, phases report the process peak so far.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import platform
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from requant.common import memory_bytes, reset_peak_memory
from requant.stable import machine as kernel_machine

MB = 1e6


def machine() -> dict[str, Any]:
    """What a benchmark ran on: the CPU, its cores and memory, the instruction sets onnxruntime's kernels pick
    from (requant.stable.machine: AVX2, AVX-512 VNNI, AMX...), onnxruntime's and Python's versions."""
    kernels = kernel_machine()
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu_model": kernels["cpu"], "cpus": os.cpu_count(), "mem_gb": round(mem_kb * 1024 / 1e9, 1),
            "isa": kernels["kernel_isa"], "onnxruntime": kernels["onnxruntime"], "python": platform.python_version()}


@dataclass
class Phase:
    calls: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # user + system time of all threads: shows whether the phase had the cores
    peak_rss_bytes: int = 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Meter:
    """Peak RSS of the process and of every phase, exact across high-water resets."""

    phases: dict[str, Phase] = field(default_factory=dict)
    process_peak: int = 0
    _open: list[Phase] = field(default_factory=list)

    def _fold(self) -> None:
        """Credit the high-water mark since the last reset to the process and to every open phase."""
        peak = memory_bytes("VmHWM")
        self.process_peak = max(self.process_peak, peak)
        for phase in self._open:
            phase.peak_rss_bytes = max(phase.peak_rss_bytes, peak)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        record = self.phases.setdefault(name, Phase())
        self._fold()
        reset_peak_memory()
        self._open.append(record)
        started, cpu_started = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            record.wall_s += time.perf_counter() - started
            record.cpu_s += cpu_seconds() - cpu_started
            record.calls += 1
            self._fold()
            self._open.remove(record)

    def peak_bytes(self) -> int:
        self._fold()
        return max(self.process_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: {"calls": p.calls, "wall_s": round(p.wall_s, 4), "cpu_s": round(p.cpu_s, 4),
                       "peak_rss_mb": round(p.peak_rss_bytes / MB, 1)} for name, p in self.phases.items()}


@contextlib.contextmanager
def instrumented(meter: Meter, targets: dict[str, str]) -> Iterator[None]:
    """Record every call of the functions named "module:attribute" (or "module:Class.method") as the
    phase given by the key, by replacing the attribute for the duration of the block."""
    undo: list[tuple[Any, str, Any]] = []
    try:
        for phase_name, target in targets.items():
            module_name, _, path = target.partition(":")
            owner: Any = importlib.import_module(module_name)
            *parents, attr = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            undo.append((owner, attr, original))
            setattr(owner, attr, _timed(meter, phase_name, original))
        yield
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


def _timed(meter: Meter, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with meter.phase(name):
            return func(*args, **kwargs)

    return wrapper
