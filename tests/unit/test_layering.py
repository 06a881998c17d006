"""Architecture rules: the shared protocol and the pure scoring code stay free of upward and I/O imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UPPER = {"miner", "validator", "chain", "scoring", "gauntlet"}
IO_MODULES = {"sqlalchemy", "redis", "fastapi", "requests", "httpx", "boto3", "socket", "subprocess", "bittensor"}


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_protocol_imports_no_upper_layer() -> None:
    for path, names in _imports("protocol").items():
        assert not names & UPPER, f"{path} imports {names & UPPER}"


def test_scoring_is_pure() -> None:
    for path, names in _imports("scoring").items():
        bad = names & (IO_MODULES | UPPER - {"scoring"})
        assert not bad, f"{path} imports {bad}"
