"""The house rule: imports run one way, ``cli -> public API -> labels / dense / patches -> segment, run -> io -> grid``.

Walks every module of the package (and ``plugins/``) with ``ast`` and fails on
an import that runs the other way, naming the file and the import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# room -> the rooms it may import (its own room is always allowed)
ALLOWED = {
    "grid": set(),
    "io": {"grid"},
    "run": {"io", "grid"},
    "segment": {"run", "io", "grid"},
    "labels": {"segment", "run", "io", "grid"},
    "dense": {"run", "io", "grid"},
    "patches": {"run", "io", "grid"},
    "api": {"labels", "dense", "patches", "segment", "run", "io", "grid", "compat"},
    "compat": {"api", "grid"},
    "testing": {"api", "labels", "dense", "patches", "segment", "run", "io", "grid"},
    "demo": {"api", "testing"},
    "plugins": {"api", "labels", "segment", "run", "io", "grid"},
    "cli": {"api", "testing", "demo", "plugins", "labels", "dense", "patches", "segment", "run", "io", "grid"},
    "main": {"cli"},
}
ROOMS_BY_NAME = {"grid": "grid", "io": "io", "run": "run", "segment": "segment", "labels": "labels",
                 "dense": "dense", "patches": "patches", "compat": "compat", "plugins": "plugins",
                 "cli": "cli", "testing": "testing", "_demo": "demo", "__main__": "main", "__init__": "api"}


def _module_files():
    yield from sorted((ROOT / "patchworks").rglob("*.py"))
    yield from sorted((ROOT / "plugins").rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "plugins":
        parts = ["patchworks", "plugins"] + parts[1:]
    return ".".join(parts)


def _room(module: str) -> str | None:
    """The room of an absolute module name inside patchworks (None: outside the package)."""
    parts = module.split(".")
    if parts[0] != "patchworks":
        return None
    if len(parts) == 1:
        return "api"
    return ROOMS_BY_NAME.get(parts[1], "api")


def _imports(path: Path):
    """(line, absolute module imported, source text) for each import of ours in a file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            text = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
            if node.module is None or _room(module) == "api":
                # ``from . import x`` / ``from patchworks import x``: x may itself be a room
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}" if _room(f"{module}.{alias.name}") != "api" \
                        else module, text
            else:
                yield node.lineno, module, text


def _violations():
    found = []
    for path in _module_files():
        mine = _room(_module_name(path))
        for line, module, text in _imports(path):
            theirs = _room(module)
            if theirs is None or theirs == mine:
                continue
            if theirs not in ALLOWED[mine]:
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r} makes room {mine!r} import {theirs!r}")
    return found


def test_imports_run_one_way():
    assert _violations() == []


def test_every_module_belongs_to_a_room():
    for path in _module_files():
        assert _room(_module_name(path)) in ALLOWED, path


def test_every_room_says_what_it_does():
    for init in sorted((ROOT / "patchworks").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(ROOT)} has no docstring"
        assert 2 <= len(doc.strip().splitlines()) <= 5, f"{init.relative_to(ROOT)}: say it in 2 to 5 lines"


@pytest.mark.parametrize("bad, room", [
    ("from ..labels._merge import plan_relabel", "dense"),
    ("import patchworks", "grid"),
    ("from patchworks.cli import main", "labels"),
    ("from ..dense._tile_map import tile_map", "patches"),
])
def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch, bad, room):
    """The checker itself must fail on a wrong import (a test that cannot fail proves nothing)."""
    fake_root = tmp_path
    (fake_root / "plugins").mkdir()
    pkg = fake_root / "patchworks"
    (pkg / room).mkdir(parents=True)
    if room == "grid":
        target = pkg / "grid.py"
    else:
        (pkg / room / "__init__.py").write_text('"""A room.\n\nIt does things."""\n')
        target = pkg / room / "_mod.py"
    target.write_text(bad + "\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    found = _violations()
    assert len(found) == 1 and bad in found[0] and target.name in found[0]
