"""The variant registry (requant/variants.py) decides the stage list, the report's rows, the release folder
and the page's precisions; and the house has no import loops."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from requant import variants
from tests.test_experiments import copy_project
from tools.sync_variants import sync

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("requant", "stages", "tools", "demo", "bench")  # packages of the project, lowest first is requant
TIMEOUT_S = 300


def test_registry_is_consistent_and_generated_parts_follow_it():
    assert variants.check_registry() == []
    assert sync(ROOT, check=True) == [], "run `python -m tools.sync_variants` after changing requant/variants.py"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["evaluate"]["foreach"] == variants.evaluated_folders(variants.EVERY_RUN)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert {f"nbits_{r}" for r in params["nbits"]} == {v for v in variants.REGISTRY if v.startswith("nbits_")}


def test_a_broken_registry_is_named():
    broken = {**variants.REGISTRY, "odd": variants.Variant(Path("x"), "e.onnx", "s", label="odd", role="comparison",
                                                           browser="odd")}
    original = variants.REGISTRY
    try:
        variants.REGISTRY = broken
        problems = variants.check_registry()
    finally:
        variants.REGISTRY = original
    assert any("odd" in p for p in problems)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in it, functions included)."""
    modules = {f"{pkg}.{p.stem}".removesuffix(".__init__"): p for pkg in FLOORS for p in sorted((ROOT / pkg).glob("*.py"))}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module, *(f"{node.module}.{a.name}" for a in node.names)] \
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            edges[module] |= {n for n in names if n in modules and n != module}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_loops_and_the_library_imports_nothing_above_it():
    edges = import_graph()
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])
    upward = {m: sorted(e for e in deps if not e.startswith("requant")) for m, deps in edges.items()
              if m.startswith("requant")}
    assert {m: d for m, d in upward.items() if d} == {}
    # stages share library code, not each other: what two stages need lives in requant/
    sideways = {m: sorted(e for e in deps if e.startswith("stages")) for m, deps in edges.items() if m.startswith("stages")}
    assert {m: d for m, d in sideways.items() if d} == {}
    # the checker finds a loop when there is one
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


MADE_UP = '''    "fp32_copy": Variant(VARIANTS_DIR / "fp32_copy", "encoder-model.copy.onnx", "build@fp32_copy",
                         label="fp32, copied (made up)", role="shipped", release="", browser="copy",
                         build="requant.made_up:copy_encoder"),
}

# Decoder/joint'''
BUILD_FUNCTION = '''from pathlib import Path

import onnx


def copy_encoder(src: Path, dst: Path) -> None:
    onnx.save(onnx.load(src), dst)
'''
CHECK = '''
import json, sys
from pathlib import Path
from tests.test_package import write_sources
from requant.variants import EVERY_RUN, LABELS, browser_precisions
from stages.package import package
root = Path(sys.argv[1])
write_sources(root)
plan = package(root)
print(json.dumps({"label": LABELS["fp32_copy"], "every_run": "fp32_copy" in EVERY_RUN,
                  "browser": browser_precisions()["copy"], "release": {k: str(v.relative_to(root)) for k, v in plan.items()}}))
'''


def test_a_made_up_variant_is_one_registry_entry_and_one_build_function(tmp_path: Path):
    from tests.encoder_graph import build_encoder, save_encoder, write_windows

    project = tmp_path / "project"
    copy_project(project)
    shutil.copytree(ROOT / "tools", project / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "web").mkdir()
    shutil.copyfile(ROOT / "web/asr.js", project / "web/asr.js")
    registry = project / "requant/variants.py"
    registry.write_text(registry.read_text().replace("}\n\n# Decoder/joint", MADE_UP, 1))
    (project / "requant/made_up.py").write_text(BUILD_FUNCTION)
    env = {**os.environ, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}"}

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    run(sys.executable, "-m", "tools.sync_variants")
    run("git", "init", "-q")
    stage_list = run(sys.executable, "-m", "dvc", "stage", "list")
    assert "build@fp32_copy" in stage_list and "evaluate@fp32_copy" in stage_list
    assert 'copy: { encoder: "encoder-model.copy.onnx", decoder: "decoder_joint-model.copy.onnx" }' in \
        (project / "web/asr.js").read_text()
    # the generic stage builds it with the registered function
    save_encoder(build_encoder(), project / "models/base")
    write_windows(project / "data/windows")
    run(sys.executable, "-m", "stages.build", "fp32_copy")
    built = project / "models/variants/fp32_copy/encoder-model.copy.onnx"
    assert built.is_file()
    # the report's rows, the release folder and the page follow
    found = json.loads(run(sys.executable, "-c", CHECK, str(project)).splitlines()[-1])
    assert found["label"] == "fp32, copied (made up)" and found["every_run"]
    assert found["release"]["encoder-model.copy.onnx"] == "models/variants/fp32_copy/encoder-model.copy.onnx"
    assert found["release"]["decoder_joint-model.copy.onnx"] == "models/base/decoder_joint-model.onnx"
