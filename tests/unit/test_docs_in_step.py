"""README.md and docs/ say what the tree holds: the layout list names every module of the product and the lab,
and every repository path or Python module a document names in backticks exists."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _layout() -> dict[str, str]:
    """README's layout block: folder -> the words listed for it."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    out: dict[str, str] = {}
    folder = ""
    for line in block.splitlines():
        if line and not line.startswith(" "):
            folder, _, rest = line.partition(" ")
            out[folder] = rest
        elif folder:
            out[folder] += " " + line.strip()
    return out


def test_readme_layout_names_every_module() -> None:
    layout = _layout()
    for folder in layout:
        assert (ROOT / folder).exists(), f"README's layout lists {folder}, which does not exist"
    for pkg in ("netinit", "netinit_cni", "injector", "lab"):
        for module in (ROOT / pkg).rglob("*.py"):
            if module.name == "__init__.py":
                continue
            folder = module.parent.relative_to(ROOT).as_posix() + "/"
            assert folder in layout, f"README's layout has no line for {folder}"
            assert re.search(rf"\b{re.escape(module.stem)}\b", layout[folder]), (
                f"README's layout line for {folder} does not name {module.stem}"
            )


_PATH = re.compile(r"`((?:netinit|netinit_cni|injector|lab|tests|bench|docs|manifests|scripts)/[A-Za-z0-9_./-]*)`")
_MODULE = re.compile(r"`((?:netinit_cni|netinit|injector|lab)(?:\.[a-z_]+)+)`")


def _importable(dotted: str) -> bool:
    """A module, or an attribute of one (`netinit.rules.save.parse_save`)."""
    head, _, attr = dotted.rpartition(".")
    try:
        if importlib.util.find_spec(dotted) is not None:
            return True
    except ModuleNotFoundError:
        pass
    try:
        return (
            bool(head) and importlib.util.find_spec(head) is not None and hasattr(importlib.import_module(head), attr)
        )
    except ModuleNotFoundError:
        return False


def test_paths_and_modules_named_in_docs_exist() -> None:
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for path in _PATH.findall(text):
            if not (ROOT / path.rstrip("/")).exists():
                missing.append(f"{doc.name}: {path}")
        for dotted in _MODULE.findall(text):
            if not _importable(dotted):
                missing.append(f"{doc.name}: {dotted}")
    assert not missing, "documents name things that do not exist:\n" + "\n".join(missing)
