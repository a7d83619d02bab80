"""Import cycles among cmf's modules, imports at any depth counted (inside functions and under
``TYPE_CHECKING`` too), ``__init__`` re-exports aside.

    python tools/import_cycles.py          # one line per cycle (a strongly connected group)
    python tools/import_cycles.py --json

tests/test_import_cycles.py fails when a cycle appears that is not in its list of known ones.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cmf")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph(root: str = ROOT, packages_too: bool = False) -> dict[str, set[str]]:
    """module -> the cmf modules it imports (``from .x import y`` resolved to ``x.y`` when
    ``y`` is a module, else ``x``). Packages' ``__init__`` modules are left out of the graph
    unless ``packages_too``: their re-exports put a package's submodules in one cycle with
    any of them that imports the package rather than the submodule."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(dirpath, n)
                files[_module_name(path)] = path
    modules = set(files)
    packages = set() if packages_too else {m for m, p in files.items() if p.endswith("__init__.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        if mod in packages:
            continue
        package = mod.rsplit(".", 1)[0]
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        out: set[str] = set()
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for t in targets:
                while t and t not in modules:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != mod and t not in packages:
                    out.add(t)
        graph[mod] = out
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--packages", action="store_true", help="count packages' __init__ re-exports too"
    )
    args = p.parse_args()
    graph = import_graph(packages_too=args.packages)
    found = cycles(graph)
    if args.json:
        print(json.dumps({"modules": len(graph), "cycles": found}, indent=2))
    else:
        print(f"{len(graph)} modules, {len(found)} import cycles")
        for group in found:
            print("  " + " <-> ".join(group))
    return 0


if __name__ == "__main__":
    sys.exit(main())
