"""The drop-in release folder, in the upstream layout, with the model card as its README.

onnx-asr finds each precision by its canonical name: the plain names are the unchanged fp32 files,
`.int8` is the new SmoothQuant encoder beside the base int8 decoder, `.fp16` the fp16 pair, and
`sharded/` holds the fp32 encoder repacked into shards. What ships where: requant/variants.py. Files are
hard links to the variants' files (DVC's cache links the same bytes: the folder costs no disk), a copy only
where the filesystem refuses links. onnx.load refuses external data with several hard links ("possible
hardlink attack"); onnxruntime and onnx-asr do not, and `dvc unprotect models/release` turns the folder
into plain copies for tools that load through onnx. The folder appears whole or not at all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx

from requant.asr import decoder_file, model_files
from requant.layouts import CTC_HEAD, CTC_MODEL, ENCODER, decoder_name, join_ctc, layout_of, preprocessor_name
from requant.common import atomic_path, copy_file, fail, link_or_copy, run_cli
from requant.model_card import CARD_FILE
from requant.variants import BASE_DIR, SHIPPED, VARIANTS, ModelFile

log = logging.getLogger("pipeline.package")

OUT = Path("models/release")
PLAIN_FILES = ("config.json", "vocab.txt")  # and the preprocessor, nemo80.onnx or nemo128.onnx
SHARDED_ENCODER, SHARD_LIST = Path("sharded/encoder-model.onnx"), "shards.json"


def release_plan(root: Path) -> dict[str, Path]:
    """Release path (relative to the folder) -> source file."""
    plan: dict[str, Path] = {}

    def add(spec: ModelFile, what: str, subdir: str = "") -> None:
        # Every file keeps its name: canonical already, and external data is named inside its graph.
        plan.update({f"{subdir}{source.name}": source for source in model_files(spec, root, what)})

    layout = layout_of(root / BASE_DIR)
    for key in SHIPPED:  # what the registry ships, where it says
        variant = VARIANTS[key]
        add(variant, f"{key} encoder", subdir=variant.release)
        decoder, name = decoder_file(variant.decoder, layout), decoder_name(variant.release_decoder, layout)
        if variant.release == "" and name == decoder.name:
            add(decoder, f"{variant.decoder} decoder")
        elif variant.release == "":  # a copy under the encoder's suffix: onnx-asr pairs files by it
            plan[name] = root / decoder.folder / decoder.name
    for name in PLAIN_FILES:
        plan[name] = root / BASE_DIR / name
    plan[preprocessor_name(root / BASE_DIR) + ".onnx"] = root / BASE_DIR / f"{preprocessor_name(root / BASE_DIR)}.onnx"
    plan["README.md"] = root / CARD_FILE
    for name, source in plan.items():
        if not source.is_file():
            fail(f"{source} is missing (needed for {name}); run `dvc repro` up to the stage that makes it")
        if name.endswith(".onnx"):
            for location in sorted(external_data_locations(source)):
                if str(Path(name).parent / location).removeprefix("./") not in plan:
                    fail(f"{source} keeps weights in '{location}', which is not beside it; re-run its stage")
    return plan


def external_data_locations(path: Path) -> set[str]:
    """File names an ONNX graph's tensors point at (the graph is read without its weights)."""
    def tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                yield from ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from tensors(sub)

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # a truncated or foreign file
        fail(f"{path} is not a readable ONNX model ({str(err)[:200]}); re-run the stage that makes it")
    return {
        entry.value
        for tensor in tensors(model.graph) if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data if entry.key == "location"
    }


def package(root: Path = Path("."), out: Path = OUT) -> dict[str, Path]:
    plan = release_plan(root)
    with atomic_path(root / out) as tmp:
        for name, source in plan.items():
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            # the models (DVC outputs) linked; the card copied: git tracks it, and DVC's cache would make
            # an editor's in-place save rewrite the cached bytes too
            (link_or_copy if source.is_relative_to(root / "models") else copy_file)(source, dest)
            log.info("placed %s -> %s", source, name)
        sharded = tmp / SHARDED_ENCODER
        if layout_of(root / BASE_DIR) == "ctc":
            sharded = join_release_pairs(tmp)
        # the shards in load order, for a browser: it cannot list a folder it fetches from
        shards = sorted(external_data_locations(sharded))
        sharded.with_name(SHARD_LIST).write_text(json.dumps(shards, indent=1) + "\n")
    log.info("release folder %s: %d files", out, len(plan))
    return plan


def join_release_pairs(folder: Path) -> Path:
    """CTC: each encoder and its head joined into the one graph onnx-asr loads, `model<suffix>.onnx` (their
    external data stays beside it, named inside the graph); the two part graphs go. Returns the sharded one."""
    for encoder in sorted(folder.rglob(f"{ENCODER}*.onnx")):
        suffix = encoder.name.removeprefix(ENCODER).removesuffix(".onnx")
        head = next((h for h in (encoder.with_name(f"{CTC_HEAD}{suffix}.onnx"), folder / f"{CTC_HEAD}.onnx")
                     if h.is_file()), None)
        if head is None:
            fail(f"{encoder}: no CTC head beside it; re-run `dvc repro package`")
        join_ctc(encoder, head, encoder.with_name(f"{CTC_MODEL}{suffix}.onnx"))
    for part in [*folder.rglob(f"{ENCODER}*.onnx"), *folder.rglob(f"{CTC_HEAD}*.onnx")]:
        part.unlink()
    return folder / SHARDED_ENCODER.with_name(f"{CTC_MODEL}.onnx")


def main() -> None:
    package()


if __name__ == "__main__":
    run_cli(main)
