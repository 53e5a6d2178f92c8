"""Write a rewritten encoder whole, and only once it computes what its source computes (the exactness gate
of the pointwise, smoothquant and activation-aware nbits stages)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from requant import stable
from requant.common import atomic_path
from requant.encoder_runs import write_equivalent

log = logging.getLogger("pipeline.gated")


def write_gated(model: onnx.ModelProto, src: Path, dst_dir: Path, name: str, replace: dict,
                heldout: Sequence[np.ndarray], max_rel_error: float, what: str) -> dict[str, int | float]:
    """dst_dir/name (weights streamed from src's folder, `replace`d where given), published only if it equals
    src on the held-out windows within max_rel_error (relative); else the stage fails naming `what` and
    dst_dir is left as it was. Returns the gate's figures as committed metrics keep them: the error in a
    form any CPU reproduces (requant/stable.py)."""
    with atomic_path(dst_dir) as tmp:
        tmp.mkdir()
        check = write_equivalent(model, src, tmp / name, replace, heldout, max_rel_error, what)
    log.info("%s vs its source on %d held-out windows: %s", what, len(heldout), check)
    return {"heldout_windows": len(heldout), "heldout_rel_error_max": stable.stable_error(check["rel_error_max"])}
