"""README.md and docs/: every relative link and anchor resolves, every `make` target and `python -m` module
they name exists, the README stays short, and its headline is the report stage's, not typed by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m[1] or "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = CODE.sub("", page.read_text())
    return {anchor(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(pages: list[Path]) -> list[str]:
    """'page: target' for each relative link whose file or anchor does not exist."""
    broken = []
    for page in pages:
        for target in LINK.findall(CODE.sub("", page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists() or (fragment and dest.suffix == ".md" and fragment not in anchors(dest)):
                broken.append(f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name}: {target}")
    return broken


def test_every_link_and_anchor_resolves() -> None:
    assert (ROOT / "docs" / "results.md").is_file()
    assert broken_links(PAGES) == []


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title here\n\n[ok](#title-here) [file](b.md) [gone](c.md) [bad](b.md#nope)\n"
                                   "`[not a link](x.md)`\n")
    (tmp_path / "b.md").write_text("# B\n")
    assert broken_links([tmp_path / "a.md"]) == ["a.md: c.md", "a.md: b.md#nope"]


def test_named_make_targets_and_modules_exist() -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for page in PAGES:
        text = "\n".join(CODE.findall(page.read_text()))  # commands live in code spans and blocks
        for target in re.findall(r"\bmake ([a-z][\w-]*)", text):
            assert target in targets, f"{page.name}: make {target}"
        for module in re.findall(r"python -m ((?:stages|bench|demo|requant|tools)(?:\.\w+)+)", text):
            path = ROOT / module.replace(".", "/")
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), f"{page.name}: {module}"


def test_readme_is_short_and_its_headline_is_generated() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    block = re.search(r"<!-- headline:start.*?-->\n(.*?)<!-- headline:end -->", readme, re.S)
    assert block, "README.md lost its headline markers"
    assert block[1].strip() == (ROOT / "reports" / "headline.md").read_text().strip(), "run `make readme`"


@pytest.mark.parametrize("page", PAGES[1:], ids=[p.name for p in PAGES[1:]])
def test_every_docs_page_is_linked_from_the_index(page: Path) -> None:
    if page.name != "README.md":
        assert f"({page.name})" in (ROOT / "docs" / "README.md").read_text()


LAYOUT_FOLDERS = ("stages", "tools", "requant", "demo", "bench", "web")


def layout_sections(text: str) -> dict[str, str]:
    """docs/layout.md's tree: each top-level folder -> the text that describes it."""
    tree = re.search(r"```\n(.*?)```", text, re.S)[1]
    sections, current = {}, None
    for line in tree.splitlines():
        top = re.match(r"([\w.]+)/\s", line)
        if top:
            current = top[1]
        if current:
            sections[current] = sections.get(current, "") + line + "\n"
    return sections


def layout_disagreements(root: Path) -> list[str]:
    """Modules of a folder its section does not name, and named *.py / *.mjs files that do not exist."""
    sections, problems = layout_sections((root / "docs/layout.md").read_text()), []
    for folder in LAYOUT_FOLDERS:
        text = sections.get(folder, "")
        words = set(re.findall(r"[\w-]+(?:\.(?:py|mjs|js|html))?", text))
        for path in sorted((root / folder).glob("*.*")):
            if path.suffix in (".py", ".mjs", ".js", ".html") and path.stem != "__init__":
                if path.name not in words and path.stem not in words:
                    problems.append(f"{folder}/{path.name} is not in docs/layout.md")
        for name in re.findall(r"\b([\w-]+\.(?:py|mjs))\b", text):
            if not (root / folder / name).is_file():
                problems.append(f"docs/layout.md names {folder}/{name}, which does not exist")
    return problems


def test_layout_names_every_module_and_only_modules_that_exist(tmp_path: Path) -> None:
    assert layout_disagreements(ROOT) == []
    # and it notices: a module the page does not name, a name with no module
    for folder in LAYOUT_FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/layout.md").write_text("```\nrequant/   the library: gone.py\n```\n")
    (tmp_path / "requant/unnamed.py").write_text("")
    assert layout_disagreements(tmp_path) == ["requant/unnamed.py is not in docs/layout.md",
                                              "docs/layout.md names requant/gone.py, which does not exist"]


def test_the_readme_leaves_the_docs_list_to_the_index() -> None:
    readme = (ROOT / "README.md").read_text()
    index_pages = set(re.findall(r"\]\(([\w-]+\.md)\)", (ROOT / "docs/README.md").read_text()))
    listed = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme.split("## Documentation")[-1]))
    assert listed <= index_pages | {"README.md"}, "a page the README lists but docs/README.md does not"
    assert "(docs/README.md)" in readme
