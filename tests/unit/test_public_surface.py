"""Each shared module says what it exports: ``__all__`` in protocol/, scoring/ and chain/.

``__all__`` is the contract a miner, a validator and a reader rely on; a public function or
class defined in a module but missing from it is either an export that was forgotten or a
helper that should be private (``_name``). Checked from the source (which names a module
defines) and by import (every listed name exists). Command-line modules are exempt: their
surface is the command line. Run: ``pytest tests/unit/test_public_surface.py -q``
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(p for pkg in ("protocol", "scoring", "chain") for p in (ROOT / pkg).glob("*.py")
                 if p.name not in ("__init__.py", "__main__.py", "cli.py"))


def _defined(path: Path) -> tuple[set[str], list[str] | None]:
    tree = ast.parse(path.read_text())
    defined, exported = set(), None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            defined.add(node.name)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            exported = [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    return defined, exported


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_module_declares_its_public_surface(path: Path) -> None:
    defined, exported = _defined(path)
    assert exported is not None, f"{path.relative_to(ROOT)} has no __all__"
    assert len(exported) == len(set(exported)), f"duplicates in {path.name}'s __all__"
    unlisted = sorted(defined - set(exported))
    assert not unlisted, f"{path.relative_to(ROOT)}: public but not in __all__ (export or make private): {unlisted}"
    module = importlib.import_module(f"{path.parent.name}.{path.stem}")
    absent = [name for name in exported if not hasattr(module, name)]
    assert not absent, f"{path.relative_to(ROOT)}: __all__ lists names it does not have: {absent}"
