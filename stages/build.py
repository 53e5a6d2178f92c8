"""Stage `build@<variant>`: a variant that the registry builds with a function of its own.

requant/variants.py names the function ("module:function") and the source variant. The function takes the
source encoder's path and the path to write, and returns nothing; this stage gives it a temporary folder
that becomes models/variants/<variant> only when the encoder it wrote gives finite outputs.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import numpy as np

from requant import encoder_runs as runs
from requant.common import atomic_path, fail, run_cli
from requant.variants import REGISTRY, REGISTRY_BUILT

log = logging.getLogger("pipeline.build")

WINDOWS = Path("data/windows")


def build(key: str, root: Path = Path(".")) -> Path:
    """Build the variant into its folder (atomically); return its encoder's path."""
    variant = REGISTRY[key]
    module, _, function = (variant.build or "").partition(":")
    try:
        build_encoder = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as err:
        fail(f"requant/variants.py: {key}'s build '{variant.build}' is not an importable function ({err})")
    source = REGISTRY[variant.source]
    src = root / source.folder / source.name
    if not src.is_file():
        fail(f"{src} is missing; run `dvc repro {source.stage}` first")
    with atomic_path(root / variant.folder) as tmp:
        tmp.mkdir(parents=True)
        build_encoder(src, tmp / variant.name)
        outputs = runs.encoder_outputs(tmp / variant.name, runs.Windows(root / WINDOWS, "heldout", limit=1), key)
        if not all(np.isfinite(o).all() for o in outputs):
            fail(f"{key}: the encoder its build function wrote gives NaN or infinite outputs; nothing written")
    log.info("built %s from %s", key, variant.source)
    return root / variant.folder / variant.name


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in REGISTRY_BUILT:
        fail(f"usage: python -m stages.build <variant>, variant one of {', '.join(REGISTRY_BUILT) or '(none yet)'}")
    build(sys.argv[1])


if __name__ == "__main__":
    run_cli(main)
