"""The dress rehearsal's Hugging Face cache: huggingface_hub, offline, resolves the twin placed there,
and the base_model stage builds models/base from it exactly as it would from a download."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.rehearse import REPO_ID, REVISION, place_twin_in_hf_cache
from demo.fastconformer import TINY, build_random_model
from demo.export import quantize_stock
from requant.common import sha256_file

ROOT = Path(__file__).resolve().parents[1]
BUILD = f"""
from pathlib import Path
from stages.base_model import build_base_model
from requant.params import ModelParams
build_base_model(ModelParams(hf_repo="{REPO_ID}", hf_revision="{REVISION}", demo_dir="unused"), is_demo=False,
                 out_dir=Path("base"))
"""


def test_the_twin_resolves_offline_from_a_hub_cache(tmp_path: Path) -> None:
    from bench.twin import nemo128

    model = build_random_model(tmp_path / "twin", TINY.replace(n_layers=1))
    quantize_stock(model)
    (model / "nemo128.onnx").write_bytes(nemo128().read_bytes())
    digests = {p.name: sha256_file(p) for p in model.iterdir()}
    snapshot = place_twin_in_hf_cache(model, tmp_path / "hf")
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(digests) and all(
        p.is_symlink() for p in snapshot.iterdir())
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", BUILD], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"revision {REVISION} is not pinned here: sha256 sums are not checked" in done.stderr
    assert {p.name: sha256_file(p) for p in (tmp_path / "base").iterdir()} == digests
    assert not any(p.is_symlink() for p in (tmp_path / "base").iterdir())  # copies, not links into the cache
