"""Weight-only MatMulNBits recipes: the packed graph, onnxruntime's kernels, closeness to fp32, and the
three lists (params.yaml nbits, the variants, dvc.yaml's evaluate) kept equal."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import yaml

from demo.fastconformer import TINY, build_random_model
from requant import encoder_runs as runs
from requant import onnx_graph as og
from requant import patterns
from requant.variants import COMPARISON_ROWS, VARIANTS
from stages.nbits import build_nbits
from requant.params import NbitsRecipe, load_params
from tests.encoder_graph import hard_linked_copy, speechlike

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"w8": NbitsRecipe(8, 32, True, 4), "w4": NbitsRecipe(4, 32, True, 4)}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nbits")
    build_random_model(root / "base", TINY.replace(n_layers=2), seed=4)
    paths = {"base": root / "base" / "encoder-model.onnx"}
    for name, recipe in RECIPES.items():
        build_nbits(paths["base"], root / name, f"encoder-model.{name}.onnx", recipe)
        paths[name] = root / name / f"encoder-model.{name}.onnx"
    return paths


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_weighted_matmul_is_packed_with_its_bits_and_block(built: dict[str, Path], name: str) -> None:
    base = og.load_graph(built["base"]).graph
    model = onnx.load(str(built[name]))
    packed = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    kinds = og.classify_matmuls(base)
    assert len(packed) == sum(kind == "weighted" for kind in kinds.values())
    assert sorted(n.name for n in model.graph.node if n.op_type == "MatMul") == sorted(patterns.fp32_matmuls(base))
    for node in packed:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == RECIPES[name].bits and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    size = len(model.SerializeToString())  # convolutions stay fp32; 1/32 of a scale per weight
    assert size < (0.45 if name == "w8" else 0.3) * og.model_size(built["base"])


@pytest.mark.parametrize("name", list(RECIPES))
def test_onnxruntime_runs_matmulnbits_kernels(built: dict[str, Path], name: str, tmp_path: Path) -> None:
    """Not a DequantizeLinear back to fp32 weights followed by a plain MatMul."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(built[name]), options, providers=["CPUExecutionProvider"])
    ops = og.op_counts(onnx.load(str(tmp_path / "optimized.onnx")).graph)
    assert ops.get("MatMulNBits", 0) == og.op_counts(og.load_graph(built[name]).graph)["MatMulNBits"]
    assert "DequantizeLinear" not in ops


def test_close_to_fp32_and_rebuilt_byte_identical(built: dict[str, Path], tmp_path: Path) -> None:
    window = [speechlike(6.0, seed=8)]
    reference = runs.encoder_outputs(built["base"], window, "fp32")
    w8 = runs.compare(reference, runs.encoder_outputs(built["w8"], window, "w8"))
    w4 = runs.compare(reference, runs.encoder_outputs(built["w4"], window, "w4"))
    assert w8["cosine_min"] > 0.9999 and w4["cosine_min"] > 0.98  # random weights: no outliers, no training
    assert w8["rel_error_max"] < w4["rel_error_max"]  # 8 bits are closer than 4
    build_nbits(built["base"], tmp_path / "again", "encoder-model.w8.onnx", RECIPES["w8"])
    assert (tmp_path / "again" / "encoder-model.w8.onnx").read_bytes() == built["w8"].read_bytes()
    # a source DVC's hardlink cache links (onnx, which the quantizer loads through, refuses it): the same bytes
    linked = hard_linked_copy(built["base"], tmp_path / "linked")
    assert linked.with_name(f"{linked.name}.data").stat().st_nlink == 2
    build_nbits(linked, tmp_path / "w4", "encoder-model.w4.onnx", RECIPES["w4"])
    assert (tmp_path / "w4" / "encoder-model.w4.onnx").read_bytes() == built["w4"].read_bytes()


def test_recipes_variants_and_evaluations_agree() -> None:
    recipes = set(load_params(ROOT / "params.yaml").nbits)
    variants = {v.removeprefix("nbits_") for v in VARIANTS if v.startswith("nbits_")}
    evaluated = {v.removeprefix("nbits_") for v in [*yaml.safe_load((ROOT / "dvc.yaml").read_text())
                 ["stages"]["evaluate"]["foreach"], *COMPARISON_ROWS] if v.startswith("nbits_")}
    assert recipes == variants == evaluated, "add a new nbits recipe to requant/asr.py VARIANTS and dvc.yaml too"
