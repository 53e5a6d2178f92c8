"""Every stage runs with glibc returning large blocks when they are freed (requant.common.run_cli): without it,
glibc raises its mmap threshold once a large block is freed, and the [T, N] tensors of a long pass then come
from a heap that fragments and stays resident (diagnose's 120 s pass on the twin: 5.95 GB instead of 3.43)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# 800 MB in 20 MB blocks, a small live block after each (the heap cannot shrink past them), after one 30 MB
# block freed (which raises glibc's threshold past 20 MB); prints the MB that freeing the 800 MB gave back
PROGRAM = """
import sys
import numpy as np
from requant.common import memory_bytes, run_cli

def main():
    big = np.ones(30 << 20, np.uint8)
    del big
    keep, small = [], []
    for _ in range(40):
        keep.append(np.ones(20 << 20, np.uint8))
        small.append(np.ones(1000, np.uint8))
    before = memory_bytes("VmRSS")
    del keep
    print(round((before - memory_bytes("VmRSS")) / 2**20))

run_cli(main) if sys.argv[1] == "stage" else main()
"""


def returned_mb(how: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROGRAM, how], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_a_stage_gives_freed_tensors_back_to_the_system() -> None:
    assert returned_mb("stage") >= 760  # all of it, give or take a page table
    assert returned_mb("plain") < 100  # the same code outside run_cli keeps them: what the stage avoids
