"""The modules of ``suite`` form a layered graph: no module imports (at the top or inside a
function) anything that imports it back, and the contract imports nothing of the suite."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"suite": ROOT / "suite", "suite.plugins": ROOT / "plugins", "suite.baselines": ROOT / "baselines",
            "suite.reports": ROOT / "reports"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Suite modules ``path`` imports anywhere (type-checking-only imports included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            # importing a name from a package executes only its __init__, found above
            if name and name != module:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(p, m, known) for m, p in mods.items()}


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_suite_modules_have_no_import_cycles():
    g = graph()
    assert {"suite.host", "suite.train", "suite.executors", "suite.neurons", "suite.kernels.torch"} <= set(g)
    assert g["suite.kernels.torch"] == {"suite.dynamics"}  # the graph sees real edges
    cycle = _cycle(g)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("module", ["suite.hookspecs", "suite.dynamics", "suite.surrogates", "suite.results"])
def test_bottom_modules_import_nothing_above_them(module):
    g = graph()
    allowed = {"suite.hookspecs": set(), "suite.dynamics": {"suite.surrogates"}, "suite.surrogates": set(),
               "suite.results": set()}[module]
    assert g[module] <= allowed, sorted(g[module] - allowed)
