"""Write the parts of dvc.yaml and web/asr.js that the variant registry (requant/variants.py) decides:
the evaluate stage's list, the registry-built stages and the page's precision list.

    python -m tools.sync_variants           # rewrite them
    python -m tools.sync_variants --check   # list what differs, exit 1 if anything does (tests do this)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from requant.common import fail, run_cli
from requant.variants import EVERY_RUN, REGISTRY, REGISTRY_BUILT, browser_precisions, evaluated_folders

DVC_YAML, ASR_JS = Path("dvc.yaml"), Path("web/asr.js")
# the generated blocks: a foreach mapping after its marker comment, up to the `do:` line
FOREACH = re.compile(r"(    foreach:  # (evaluate|build) list: generated from requant/variants.py\n)((?:      .*\n)*)")
PRECISIONS = re.compile(r"(export const PRECISIONS = \{\n)((?:  .*\n)*)(\};)")


def build_items() -> dict[str, dict[str, str]]:
    """Each registry-built variant: its build function's file, its source's folder, its own folder."""
    items = {}
    for key in REGISTRY_BUILT:
        variant = REGISTRY[key]
        module = variant.build.split(":")[0]
        items[key] = {"module": module.replace(".", "/") + ".py", "source": REGISTRY[variant.source].folder.as_posix(),
                      "folder": variant.folder.as_posix()}
    return items


def foreach_lines(items: dict[str, object]) -> str:
    if not items:
        return "      {}\n"  # DVC takes an empty mapping: no stage
    return "".join(f"      {key}: {json.dumps(value) if isinstance(value, dict) else value}\n"
                   for key, value in items.items())


def synced_dvc_yaml(text: str) -> str:
    lists = {"evaluate": evaluated_folders(EVERY_RUN), "build": build_items()}
    found = {m[2] for m in FOREACH.finditer(text)}
    if found != set(lists):
        fail(f"{DVC_YAML}: the generated foreach lists {sorted(set(lists) - found)} lost their marker comment; "
             "restore it from git")
    return FOREACH.sub(lambda m: m[1] + foreach_lines(lists[m[2]]), text)


def synced_asr_js(text: str) -> str:
    if not PRECISIONS.search(text):
        fail(f"{ASR_JS}: no `export const PRECISIONS = {{` block to write; restore it from git")
    lines = "".join(f'  {name}: {{ encoder: "{files["encoder"]}", decoder: "{files["decoder"]}" }},\n'
                    for name, files in browser_precisions().items())
    return PRECISIONS.sub(lambda m: m[1] + lines + m[3], text, count=1)


def sync(root: Path = Path("."), check: bool = False) -> list[Path]:
    """The files whose generated parts differ from the registry; written unless check."""
    stale = []
    for path, synced in ((DVC_YAML, synced_dvc_yaml), (ASR_JS, synced_asr_js)):
        text = (root / path).read_text()
        new = synced(text)
        if new != text:
            stale.append(path)
            if not check:
                (root / path).write_text(new)
    return stale


def main() -> None:
    check = "--check" in sys.argv[1:]
    stale = sync(check=check)
    for path in stale:
        print(f"{path}: {'differs from' if check else 'rewritten from'} requant/variants.py")
    if check and stale:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
