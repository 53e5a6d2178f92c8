"""The fp32 encoder repacked into several external data files, each under a byte budget.

A browser (wasm32 ArrayBuffers, blob fetches) cannot ingest one file over 2 GB; shards of at most
shard.budget_mb each can. Only each tensor's location/offset/length changes: its bytes are copied
untouched, so the outputs must be bit-identical to the single-file model's (checked here).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant.common import atomic_path, fail, run_cli
from requant.params import load_params

log = logging.getLogger(__name__)

SOURCE = Path("models/base/encoder-model.onnx")
WINDOWS = Path("data/windows")
OUT_DIR = Path("models/variants/fp32_sharded")
MB = 1_000_000  # decimal megabytes: a shard under budget_mb MB is under budget_mb MiB too


def shard_encoder(src: Path, dst_dir: Path, budget_bytes: int, check_audio: np.ndarray,
                  allow_oversize: bool = False) -> list[Path]:
    """Write dst_dir/<src name> + <src name>.data.000, ... atomically; return the shard files."""
    if budget_bytes < 1:
        fail(f"shard budget {budget_bytes} bytes must be positive (shard.budget_mb)")
    model = og.load_graph(src)
    largest = max((t for t in model.graph.initializer if og.is_external(t)), key=og.tensor_nbytes, default=None)
    if largest is not None and og.tensor_nbytes(largest) > budget_bytes and not allow_oversize:
        fail(f"shard.budget_mb={budget_bytes / MB:g} is below the largest tensor ({largest.name}, "
             f"{og.tensor_nbytes(largest) / MB:.2f} MB): raise the budget, or set shard.allow_oversize: true "
             "to give such tensors a shard of their own (over the budget)")
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir()
        shards = og.write_model(model, src.parent, tmp / src.name, shard_budget=budget_bytes)
        single, sharded = (_run_all_outputs(path, check_audio) for path in (src, tmp / src.name))  # one at a time
        for name, a, b in zip((o.name for o in model.graph.output), single, sharded):
            if a.shape != b.shape or a.tobytes() != b.tobytes():
                fail(f"sharded encoder output '{name}' is not bit-identical to the single-file fp32; nothing written")
        names = [p.name for p in shards]
    sizes = [(dst_dir / n).stat().st_size for n in names]
    log.info("%d shards (budget %d bytes): %s", len(names), budget_bytes, dict(zip(names, sizes)))
    return [dst_dir / n for n in names]


def _run_all_outputs(path: Path, audio: np.ndarray) -> list[np.ndarray]:
    session = runs.open_session(path)
    return session.run(None, runs.encoder_feed(session, audio))


def main() -> None:
    params = load_params()
    check_audio = runs.Windows(WINDOWS, "heldout")[0]
    shard_encoder(SOURCE, OUT_DIR, int(params.shard.budget_mb * MB), check_audio, params.shard.allow_oversize)


if __name__ == "__main__":
    run_cli(main)
