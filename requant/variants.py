"""The variant registry: one entry per encoder variant, and everything the pipeline derives from it.

An entry names the variant's folder and encoder file, its label in every table, its role, the DVC stage
that builds it, where the release folder ships it and whether the browser page offers it. From these:
dvc.yaml's evaluation list and registry-built stages, the report's rows and labels, `make compare`'s rows,
the package stage's release plan and web/asr.js's precision list (`python -m tools.sync_variants` writes
the generated parts; tests/test_variants.py fails when they drift). How to add one: docs/layout.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BASE_DIR = Path("models/base")
VARIANTS_DIR = Path("models/variants")

Role = Literal["baseline", "shipped", "comparison"]


@dataclass(frozen=True)
class ModelFile:
    """One ONNX file: where it lies and which DVC stage makes it."""

    folder: Path
    name: str
    stage: str


@dataclass(frozen=True, kw_only=True)
class Variant(ModelFile):
    """One encoder variant.

    role: "baseline" (what the others are measured against), "shipped" (in the release folder) or
    "comparison" (measured only, and built only when params.yaml compare.builds is [all]). every_run: evaluated on every run; False: only when params.yaml
    compare.rows lists it (`make compare`). release: its folder inside models/release ("" the top level),
    None when not shipped. decoder: the decoder precision it is paired with in the release folder and the
    page. browser: its name on the page's precision list, None when the page does not offer it.
    build: "module:function" for a variant built by the generic stage (stages/build.py), from the
    encoder of the `source` variant; None when a stage of its own builds it."""

    label: str
    role: Role
    every_run: bool = True
    release: str | None = None
    decoder: str = "fp32"
    browser: str | None = None
    build: str | None = None
    source: str = "fp32"

    @property
    def release_encoder(self) -> str | None:
        """The encoder's path in the release folder."""
        return None if self.release is None else f"{self.release}{self.name}"

    @property
    def release_decoder(self) -> str | None:
        """The decoder_joint file the release folder pairs with it. onnx-asr pairs files by their suffix
        (`quantization="w8"`), so a top-level encoder gets a decoder of its own suffix; one in a subfolder
        uses the top-level decoder of its precision."""
        if self.release is None:
            return None
        if self.release == "":
            return "decoder_joint-model" + self.name.removeprefix("encoder-model")
        return DECODERS[self.decoder].name


def _variant(key: str, file: str, stage: str, **fields: object) -> Variant:
    """A variant built into models/variants/<key>/<file>."""
    return Variant(VARIANTS_DIR / key, file, stage, **fields)


# The registry, in the order of every table. A new variant: one entry here, plus its build function
# (build="module:function"), then `python -m tools.sync_variants`.
REGISTRY: dict[str, Variant] = {
    "fp32": Variant(BASE_DIR, "encoder-model.onnx", "base_model", label="fp32 (unchanged)", role="baseline",
                    release="", browser="fp32"),
    "fp16": _variant("fp16", "encoder-model.fp16.onnx", "fp16", label="fp16 (naive cast)", role="shipped",
                     release="", decoder="fp16", browser="fp16"),
    "fp32_sharded": _variant("fp32_sharded", "encoder-model.onnx", "shard", label="fp32 sharded (repack)",
                             role="shipped", every_run=False, release="sharded/", browser="fp32_sharded"),
    "int8_dynamic": _variant("int8_dynamic", "encoder-model.int8.onnx", "int8_dynamic",
                             label="int8 dynamic (stock recipe)", role="baseline", every_run=False),
    "int8_smoothquant": _variant("int8_smoothquant", "encoder-model.int8.onnx", "int8",
                                 label="int8 SmoothQuant (this)", role="shipped", release="", decoder="int8",
                                 browser="int8"),
    "int8_stock": Variant(BASE_DIR, "encoder-model.int8.onnx", "base_model",
                          label="int8 stock (shipped with the base model)", role="baseline"),
    # weight-only MatMulNBits recipes, one per params.yaml nbits entry (tests keep the two lists equal)
    "nbits_w8": _variant("nbits_w8", "encoder-model.w8.onnx", "nbits@w8", label="w8 weight-only (MatMulNBits 8-bit)",
                         role="shipped", every_run=False, release="", decoder="int8", browser="w8"),
    "nbits_w4": _variant("nbits_w4", "encoder-model.w4.onnx", "nbits@w4", label="w4 weight-only (MatMulNBits 4-bit)",
                         role="shipped", every_run=False, release="", decoder="int8", browser="w4"),
    "nbits_w8_aware": _variant("nbits_w8_aware", "encoder-model.w8_aware.onnx", "nbits@w8_aware",
                               label="w8 weight-only, activation-aware scales", role="shipped", release="",
                               decoder="int8", browser="w8_aware"),
    "nbits_w4_aware": _variant("nbits_w4_aware", "encoder-model.w4_aware.onnx", "nbits@w4_aware",
                               label="w4 weight-only, activation-aware scales", role="shipped", release="",
                               decoder="int8", browser="w4_aware"),
    "nbits_w4_mixed": _variant("nbits_w4_mixed", "encoder-model.w4_mixed.onnx", "nbits@w4_mixed",
                               label="w4 weight-only, aware + GPTQ, worst MatMuls 8-bit", role="shipped",
                               release="", decoder="int8", browser="w4_mixed"),
    "int8_mixed": _variant("int8_mixed", "encoder-model.int8.onnx", "int8_mixed@all",
                           label="int8 SmoothQuant, worst MatMuls fp32 (mixed)", role="comparison", every_run=False),
    "int8_matmul_only": _variant("int8_matmul_only", "encoder-model.int8.onnx", "int8_compare@all",
                                 label="int8 SmoothQuant, MatMuls only (pointwise convs fp32)", role="comparison",
                                 every_run=False),
    "int8_subsampling": _variant("int8_subsampling", "encoder-model.int8.onnx", "int8_compare@all",
                                 label="int8 SmoothQuant + subsampling convs int8", role="comparison",
                                 every_run=False),
    # the exact long-pass rewrite of fp32 and SmoothQuant int8 (memory linear in the pass length)
    "fp32_blockwise": _variant("fp32_blockwise", "encoder-model.onnx", "blockwise",
                               label="fp32, blockwise (exact long-pass rewrite)", role="shipped", every_run=False,
                               release="blockwise/", browser="fp32_blockwise"),
    "int8_blockwise": _variant("int8_blockwise", "encoder-model.int8.onnx", "blockwise",
                               label="int8 SmoothQuant, blockwise", role="shipped", release="blockwise/",
                               decoder="int8", browser="int8_blockwise"),
    # the same with local attention (local.context): time and memory linear in the pass length
    "fp32_local": _variant("fp32_local", "encoder-model.onnx", "blockwise", label="fp32, local attention",
                           role="shipped", release="local/", browser="fp32_local"),
    "int8_local": _variant("int8_local", "encoder-model.int8.onnx", "blockwise",
                           label="int8 SmoothQuant, local attention", role="shipped", release="local/",
                           decoder="int8", browser="int8_local"),
}

# Decoder/joint per eval.decoder precision; the evaluation pairs the same one with every encoder.
DECODERS: dict[str, ModelFile] = {
    "fp32": ModelFile(BASE_DIR, "decoder_joint-model.onnx", "base_model"),
    "int8": ModelFile(BASE_DIR, "decoder_joint-model.int8.onnx", "base_model"),
    "fp16": ModelFile(VARIANTS_DIR / "fp16", "decoder_joint-model.fp16.onnx", "fp16"),
}

# --- Views derived from the registry ---------------------------------------------------------------

VARIANTS: dict[str, Variant] = REGISTRY
LABELS: dict[str, str] = {key: v.label for key, v in REGISTRY.items()}
EVERY_RUN: tuple[str, ...] = tuple(key for key, v in REGISTRY.items() if v.every_run)
COMPARISON_ROWS: tuple[str, ...] = tuple(key for key, v in REGISTRY.items() if not v.every_run)
# the comparison encoders: built only when params.yaml compare.builds is [all] (`make compare`)
BUILT_ON_REQUEST: tuple[str, ...] = tuple(key for key, v in REGISTRY.items() if v.role == "comparison")
SHIPPED: tuple[str, ...] = tuple(key for key, v in REGISTRY.items() if v.release is not None)
REGISTRY_BUILT: tuple[str, ...] = tuple(key for key, v in REGISTRY.items() if v.build is not None)


def evaluated_folders(keys: tuple[str, ...]) -> dict[str, str]:
    """variant -> the folder holding its encoder: dvc.yaml's evaluate list, params.yaml's compare.rows."""
    return {key: REGISTRY[key].folder.as_posix() for key in keys}


def browser_precisions() -> dict[str, dict[str, str]]:
    """The page's precision list (web/asr.js PRECISIONS): name -> its encoder and decoder in the release."""
    return {v.browser: {"encoder": v.release_encoder, "decoder": v.release_decoder}
            for v in REGISTRY.values() if v.browser is not None and v.release is not None}


def check_registry() -> list[str]:
    """What is inconsistent in the registry itself, one line each (tests/test_variants.py)."""
    problems = []
    for key, v in REGISTRY.items():
        if v.role == "shipped" and v.release is None:
            problems.append(f"{key}: shipped, but no release folder")
        if key in BUILT_ON_REQUEST and (v.release is not None or v.every_run):
            problems.append(f"{key}: a comparison is neither shipped nor evaluated on every run")
        if v.browser is not None and v.release is None:
            problems.append(f"{key}: the page can only offer what the release folder ships")
        if v.decoder not in DECODERS:
            problems.append(f"{key}: decoder '{v.decoder}' is not one of {', '.join(DECODERS)}")
        if v.build is not None and (v.stage != f"build@{key}" or v.source not in REGISTRY):
            problems.append(f"{key}: a registry-built variant has stage build@{key} and a registered source")
    releases = [v.release_encoder for v in REGISTRY.values() if v.release is not None]
    problems += [f"two variants ship as {path}" for path in sorted({p for p in releases if releases.count(p) > 1})]
    return problems
