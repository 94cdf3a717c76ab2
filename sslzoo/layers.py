"""The package's layers, lowest first: a module imports only modules of its own layer or lower ones.

This table is the one statement of the rule; ``tests/test_layers.py`` enforces it (and the
absence of import cycles) with :func:`violations`, and ``python -m sslzoo.layers`` prints
what breaks it. Imports are read from the source (every ``import`` statement, at module
level or inside functions), so a lazy import counts as much as an eager one.

One deliberate exception, by name only: the registry (base layer) imports the built-in
component packages listed in ``sslzoo.registry._BUILTIN_MODULES`` by their names on first
lookup, the way it loads entry-point plugins: discovery, not a dependency of its code.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("sslzoo.version", "sslzoo.errors", "sslzoo.paths", "sslzoo.io", "sslzoo.registry",
              "sslzoo.distributed", "sslzoo.ramps", "sslzoo.checkpoint", "sslzoo.device", "sslzoo.layers")),
    ("data", ("sslzoo.data",)),                              # data sets, caches, splits, views, batches
    ("models", ("sslzoo.models",)),                          # backbones and their weights
    ("pretraining", ("sslzoo.pretrain",)),                   # recipes that build backbone weights
    ("policies", ("sslzoo.policy", "sslzoo.policies")),      # which unlabeled samples are trusted
    ("algorithms", ("sslzoo.algorithm", "sslzoo.mixup", "sslzoo.algorithms")),   # policy + unlabeled loss
    ("training", ("sslzoo.config", "sslzoo.factory", "sslzoo.ema", "sslzoo.optim", "sslzoo.evaluation",
                  "sslzoo.meter", "sslzoo.callbacks", "sslzoo.run_record", "sslzoo.trainer")),
    ("api", ("sslzoo.api", "sslzoo.runs", "sslzoo.predict", "sslzoo.flags")),  # what a Python user calls
    ("bench", ("sslzoo.bench",)),                            # grids of runs, tables, plots
    ("benchmarks", ("sslzoo.benchmarks",)),                  # throughput, augmentation, memory, GPU check
    ("cli", ("sslzoo.cli", "sslzoo.__main__", "sslzoo")),    # the command line; "sslzoo" is the package facade
)

# Source folders of the installed package (setup.cfg's package_dir).
SOURCES = {"sslzoo": "sslzoo", "sslzoo.algorithms": "algorithms", "sslzoo.benchmarks": "benchmarks"}


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix that names ``module``'s layer."""
    best, depth = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = i, prefix.count(".")
    if best < 0:
        raise KeyError(f"module {module} has no layer in sslzoo/layers.py: add it to LAYERS")
    return best


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package (dotted name -> file), from the repository at ``root``."""
    found: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (resolved to the longest known module name)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{a.name}" for a in node.names] + [stem]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports(m, p, known) for m, p in known.items()}


def violations(root: Path) -> list[str]:
    """Upward imports and import cycles, as readable lines (empty when the layering holds)."""
    g = graph(root)
    problems = []
    for module, targets in sorted(g.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                problems.append(f"upward import: {module} ({LAYERS[layer_of(module)][0]}) imports "
                                f"{target} ({LAYERS[layer_of(target)][0]})")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in _cycles(g)]
    return problems


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(g) + 100))
    try:
        for v in g:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


if __name__ == "__main__":
    lines = violations(Path(__file__).resolve().parent.parent)
    print("\n".join(lines) or "layering holds: no upward import, no cycle")
    sys.exit(1 if lines else 0)
