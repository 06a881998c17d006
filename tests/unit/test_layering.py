"""Architecture rules: the shared protocol and the pure scoring code stay free of upward and I/O imports."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
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


PRODUCTION = ("protocol", "scoring", "chain", "miner", "validator", "gauntlet")

#: The test harness (simulators, adversaries, fault hooks). The layers below never import it;
#: the console script's package (gauntlet/) may only inside a command that runs test processes.
HARNESS = "testing"
NEVER_HARNESS = ("protocol", "miner", "validator", "scoring", "chain")


def test_production_imports_nothing_from_testing() -> None:
    """Lazy imports count: a production loop that can reach test code is not the code that was tested."""
    for package in NEVER_HARNESS:
        for path, names in _imports(package).items():
            assert HARNESS not in names, f"{path} imports {HARNESS}"


def _module_level_imports(path: Path) -> set[str]:
    """Top-level packages imported when the module loads (function bodies excluded: they import on call)."""
    names: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text())]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        pending.extend(ast.iter_child_nodes(node))
    return names


def test_console_script_loads_no_testing_code() -> None:
    """``gauntlet`` (miner, validator, API, ...) never loads the harness; only ``gauntlet localnet`` does, on call."""
    for path in sorted((ROOT / "gauntlet").rglob("*.py")):
        assert HARNESS not in _module_level_imports(path), f"{path.relative_to(ROOT)} imports {HARNESS} at load"
    lazy = sorted(path for path, names in _imports("gauntlet").items() if HARNESS in names)
    assert lazy == ["gauntlet/localnet.py"], lazy
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["gauntlet"]
    module, _, attr = script.partition(":")
    code = (f"import sys; from {module} import {attr} as app\n"
            "for cmd in (['miner', 'run'], ['validator', 'run'], ['localnet']):\n"
            "    app([*cmd, '--help'], prog_name='gauntlet', standalone_mode=False)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] == {HARNESS!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:]


def _module_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere in the file (lazy imports count too)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for pkg in PRODUCTION for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    deps.add(target)
        graph[name] = deps
    return graph


def test_no_import_circle() -> None:
    """A circle (even through a lazy import) means two modules cannot be read or tested apart."""
    graph = _module_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(dep):], dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


MAX_LINES = 600
LINE_CHECKED = (*PRODUCTION, "testing", "tests", "benchmarks")


def test_no_file_over_600_lines() -> None:
    """A file past 600 lines holds more than one idea; split it along a seam before it grows further (issue 14)."""
    offenders: dict[str, int] = {}
    for pkg in LINE_CHECKED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > MAX_LINES:
                offenders[str(path.relative_to(ROOT))] = n
    print("\n".join(f"{path}: {n} lines" for path, n in offenders.items()))
    assert not offenders, f"files over {MAX_LINES} lines: {offenders}"


#: Most functions fit on a screen: the 95th percentile of function lengths in production code.
P95_FUNCTION_LINES = 30


def test_functions_stay_short() -> None:
    """p95 of function lengths <= 30 lines (issue 14): long functions are where untested branches hide."""
    lengths = sorted(
        node.end_lineno - node.lineno + 1  # type: ignore[operator]
        for pkg in PRODUCTION for path in (ROOT / pkg).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    )
    p95 = lengths[int(0.95 * (len(lengths) - 1))]
    assert p95 <= P95_FUNCTION_LINES, f"p95 function length {p95} lines over {len(lengths)} functions"


def test_validator_context_is_typed() -> None:
    """Every field of the validator's context has a real type: no ``Any`` seams (issue 14)."""
    import typing

    from validator.window import ValidatorContext

    hints = typing.get_type_hints(ValidatorContext)
    untyped = [name for name, hint in hints.items() if hint is typing.Any or "Any" in str(hint).split("[")[0]]
    assert not untyped, f"ValidatorContext fields typed Any: {untyped}"
