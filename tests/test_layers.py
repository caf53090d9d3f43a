"""Imports point one way: an AST walk of every module- and function-level import in mlprof.

Each module belongs to a layer (longest matching prefix in :data:`LAYERS`); a module may
import only from its own layer or the layers below it. The first-level packages must
also form no cycle. A new package needs a line here, which is where its place in the
flow is decided.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mlprof"

LAYERS: list[tuple[str, ...]] = [
    ("mlprof.errors", "mlprof.untrusted", "mlprof.safe_write", "mlprof.interrupts", "mlprof.lazy", "mlprof.cores"),
    ("mlprof.trace",),
    ("mlprof.counters",),
    ("mlprof.analyzers",),
    ("mlprof.results",),  # types: findings, measurements, Report and its JSON schema
    ("mlprof.rules",),
    ("mlprof.whatif",),  # replay of each rule's fix: after the rules, before the analysis that calls it
    ("mlprof.analysis", "mlprof.annotate"),
    ("mlprof.engine",),
    ("mlprof.api",),  # mlprof.analyze(): the one entry point
    ("mlprof.store",),
    ("mlprof.compare",),
    ("mlprof.gates",),
    ("mlprof.report",),  # renderers of a Report (and of a comparison)
    ("mlprof.collectors",),  # in the training job; the end-of-run summary calls mlprof.analyze
    ("mlprof.dashboard",),
    ("mlprof.commands", "mlprof.cli", "mlprof.__main__"),
]
"""Lowest first. ``mlprof`` itself (the lazy public API, version) may be imported from anywhere."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), i)
    return None if best is None else best[1]


def _imports() -> list[tuple[str, str, int]]:
    """(importing module, imported mlprof module, line) for every import statement, at any depth."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    targets = [".".join([*base, node.module] if node.module else base)]
                else:
                    targets = [node.module or ""]
                # ``from mlprof import x`` names a submodule when x is one
                targets = [
                    f"{t}.{a.name}" if t == "mlprof" and _layer(f"{t}.{a.name}") is not None else t
                    for t in targets
                    for a in node.names
                ]
            else:
                continue
            found += [(module, t, node.lineno) for t in targets if t == "mlprof" or t.startswith("mlprof.")]
    return found


def test_every_module_has_a_layer() -> None:
    modules = {_module_name(p) for p in ROOT.rglob("*.py")}
    missing = sorted(m for m in modules if m != "mlprof" and _layer(m) is None)
    assert not missing, f"add these to LAYERS: {missing}"


def test_imports_point_down() -> None:
    upward = []
    for module, target, line in _imports():
        if module == "mlprof" or target == "mlprof":
            continue
        src, dst = _layer(module), _layer(target)
        assert src is not None and dst is not None, (module, target)
        if dst > src:
            upward.append(f"{module}:{line} imports {target} ({LAYERS[src][0]} -> {LAYERS[dst][0]})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(set(upward)))


def test_no_package_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for module, target, _ in _imports():
        a, b = (".".join(x.split(".")[:2]) for x in (module, target))
        if a != b and "mlprof" not in (a, b):
            graph.setdefault(a, set()).add(b)
    seen: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                pytest.fail("package cycle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])


def test_the_walk_sees_function_level_imports() -> None:
    """The check is only as good as the walk: it must see imports inside functions."""
    pairs = {(m, t) for m, t, _ in _imports()}
    assert ("mlprof.commands.report", "mlprof.api") in pairs  # imported inside the command function
