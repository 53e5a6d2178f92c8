"""The release folder's layout, links and errors (stages/package.py), on placeholder files.

Loading a real release folder with onnx-asr is covered in tests/test_evaluate.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from requant import onnx_graph as og
from requant.common import StageError
from stages.package import OUT, package

SOURCES = {
    "models/base": ["config.json", "vocab.txt", "nemo128.onnx", "encoder-model.onnx", "encoder-model.onnx.data",
                    "encoder-model.int8.onnx", "decoder_joint-model.onnx", "decoder_joint-model.int8.onnx"],
    "models/variants/fp16": ["encoder-model.fp16.onnx", "decoder_joint-model.fp16.onnx"],
    "models/variants/fp32_sharded": ["encoder-model.onnx", "encoder-model.onnx.data.000",
                                     "encoder-model.onnx.data.001"],
    "models/variants/int8_smoothquant": ["encoder-model.int8.onnx"],
    "models/variants/int8_dynamic": ["encoder-model.int8.onnx"],
    "models/variants/nbits_w8": ["encoder-model.w8.onnx"],
    "models/variants/nbits_w4": ["encoder-model.w4.onnx"],
    "models/variants/nbits_w8_aware": ["encoder-model.w8_aware.onnx"],
    "models/variants/nbits_w4_aware": ["encoder-model.w4_aware.onnx"],
    "models/variants/nbits_w4_mixed": ["encoder-model.w4_mixed.onnx"],
    "models/variants/fp32_blockwise": ["encoder-model.onnx", "encoder-model.onnx.data"],
    "models/variants/int8_blockwise": ["encoder-model.int8.onnx"],
    "models/variants/fp32_local": ["encoder-model.onnx", "encoder-model.onnx.data"],
    "models/variants/int8_local": ["encoder-model.int8.onnx"],
    "reports": ["MODEL_CARD.md"],
}
EXPECTED = {
    "config.json": "models/base/config.json",
    "vocab.txt": "models/base/vocab.txt",
    "nemo128.onnx": "models/base/nemo128.onnx",
    "encoder-model.onnx": "models/base/encoder-model.onnx",
    "encoder-model.onnx.data": "models/base/encoder-model.onnx.data",
    "decoder_joint-model.onnx": "models/base/decoder_joint-model.onnx",
    "encoder-model.int8.onnx": "models/variants/int8_smoothquant/encoder-model.int8.onnx",
    "decoder_joint-model.int8.onnx": "models/base/decoder_joint-model.int8.onnx",
    "encoder-model.fp16.onnx": "models/variants/fp16/encoder-model.fp16.onnx",
    "decoder_joint-model.fp16.onnx": "models/variants/fp16/decoder_joint-model.fp16.onnx",
    "sharded/encoder-model.onnx": "models/variants/fp32_sharded/encoder-model.onnx",
    "sharded/encoder-model.onnx.data.000": "models/variants/fp32_sharded/encoder-model.onnx.data.000",
    "sharded/encoder-model.onnx.data.001": "models/variants/fp32_sharded/encoder-model.onnx.data.001",
    "encoder-model.w8.onnx": "models/variants/nbits_w8/encoder-model.w8.onnx",
    "decoder_joint-model.w8.onnx": "models/base/decoder_joint-model.int8.onnx",  # paired by suffix for onnx-asr
    "encoder-model.w4.onnx": "models/variants/nbits_w4/encoder-model.w4.onnx",
    "decoder_joint-model.w4.onnx": "models/base/decoder_joint-model.int8.onnx",
    "encoder-model.w8_aware.onnx": "models/variants/nbits_w8_aware/encoder-model.w8_aware.onnx",
    "decoder_joint-model.w8_aware.onnx": "models/base/decoder_joint-model.int8.onnx",
    "encoder-model.w4_aware.onnx": "models/variants/nbits_w4_aware/encoder-model.w4_aware.onnx",
    "decoder_joint-model.w4_aware.onnx": "models/base/decoder_joint-model.int8.onnx",
    "encoder-model.w4_mixed.onnx": "models/variants/nbits_w4_mixed/encoder-model.w4_mixed.onnx",
    "decoder_joint-model.w4_mixed.onnx": "models/base/decoder_joint-model.int8.onnx",
    "blockwise/encoder-model.onnx": "models/variants/fp32_blockwise/encoder-model.onnx",
    "blockwise/encoder-model.onnx.data": "models/variants/fp32_blockwise/encoder-model.onnx.data",
    "blockwise/encoder-model.int8.onnx": "models/variants/int8_blockwise/encoder-model.int8.onnx",
    "local/encoder-model.onnx": "models/variants/fp32_local/encoder-model.onnx",
    "local/encoder-model.onnx.data": "models/variants/fp32_local/encoder-model.onnx.data",
    "local/encoder-model.int8.onnx": "models/variants/int8_local/encoder-model.int8.onnx",
    "README.md": "reports/MODEL_CARD.md",
}


def write_graph(path: Path, locations: list[str | None]) -> None:
    """A tiny ONNX graph with one 4-float weight per entry: inline (None) or in the named external file."""
    weights = []
    for i, location in enumerate(locations):
        weight = helper.make_tensor(f"w{i}", TensorProto.FLOAT, [4], np.arange(4, dtype=np.float32) + i)
        if location is not None:
            data = weight.float_data
            (path.parent / location).write_bytes(np.asarray(data, dtype=np.float32).tobytes())
            weight.ClearField("float_data")
            weight.data_location = TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", "0"), ("length", "16")):
                weight.external_data.add(key=key, value=value)
        weights.append(weight)
    nodes = [helper.make_node("Add", ["x", w.name], [f"y{i}"]) for i, w in enumerate(weights)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [4]) for i in range(len(weights))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])], outputs,
                              weights)
    onnx.save_model(helper.make_model(graph), path)


def write_sources(root: Path) -> None:
    """Every file the release plan reads, tiny; files already there are kept."""
    for folder, names in SOURCES.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            path = root / folder / name
            if path.exists():
                continue
            if name.endswith(".onnx"):
                write_graph(path, sorted(n for n in names if n.startswith(name + ".")) or [None])
            elif name == "config.json":  # the package reads the layout from it
                path.write_text('{"model_type": "nemo-conformer-tdt", "features_size": 128}')
            else:
                path.write_text(f"{folder}/{name}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_sources(tmp_path)
    return tmp_path


def test_release_layout_and_contents(root: Path):
    package(root)
    release = root / OUT
    found = {str(p.relative_to(release)) for p in release.rglob("*") if p.is_file()}
    assert found == set(EXPECTED) | {"sharded/shards.json"}
    # the shard list a browser fetches by (it cannot list a folder over HTTP), in load order
    assert json.loads((release / "sharded/shards.json").read_text()) == ["encoder-model.onnx.data.000",
                                                                          "encoder-model.onnx.data.001"]
    for name, source in EXPECTED.items():
        assert (release / name).read_bytes() == (root / source).read_bytes(), name
    # The models hard-linked, not copied (the folder costs no disk); the card, which git tracks, copied.
    for name, source in EXPECTED.items():
        assert (release / name).samefile(root / source) == source.startswith("models/"), name
    data = release / "encoder-model.onnx.data"
    assert data.stat().st_nlink == 2 and len(og.load_graph(release / "encoder-model.onnx").graph.initializer) == 1
    assert not list(root.glob("models/.release.tmp-*"))


def test_a_missing_variant_names_the_stage_and_leaves_the_old_folder(root: Path):
    package(root)
    (root / "models/variants/int8_smoothquant/encoder-model.int8.onnx").unlink()
    (root / "reports/new.md").write_text("new card")
    os.replace(root / "reports/new.md", root / "reports/MODEL_CARD.md")  # as the report stage writes it
    with pytest.raises(StageError, match=r"int8_smoothquant/encoder-model.int8.onnx is missing; run `dvc repro int8`"):
        package(root)
    assert (root / OUT / "README.md").read_text() == "reports/MODEL_CARD.md"  # untouched, not half-written


def test_external_data_goes_with_its_own_graph_only(root: Path):
    write_graph(root / "models/variants/int8_smoothquant/encoder-model.int8.onnx", ["encoder-model.int8.onnx.data"])
    (root / "models/base/encoder-model.int8.onnx.data").write_text("not shipped: stock int8 is not released")
    package(root)
    shipped = (root / OUT / "encoder-model.int8.onnx.data").read_bytes()
    assert shipped == (root / "models/variants/int8_smoothquant/encoder-model.int8.onnx.data").read_bytes()


def test_weights_the_graph_points_at_must_be_shipped(root: Path):
    # External data under a name that does not follow the graph's own name would be left behind.
    write_graph(root / "models/variants/fp16/encoder-model.fp16.onnx", ["weights.bin"])
    with pytest.raises(StageError, match="keeps weights in 'weights.bin'"):
        package(root)
