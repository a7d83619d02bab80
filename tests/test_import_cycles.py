"""No import cycles among cmf's modules, imports at any depth counted (function-level and
``TYPE_CHECKING`` imports too; tools/import_cycles.py prints the graph's cycles)."""

from __future__ import annotations

import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)

import import_cycles  # noqa: E402


def test_no_import_cycles():
    graph = import_cycles.import_graph()
    assert len(graph) > 50  # the walk found the package
    assert "cmf.plan.rounds" in graph["cmf.plan.planner"]  # and reads imports
    assert import_cycles.cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}}
    assert import_cycles.cycles(graph) == [["a", "b", "c"], ["e", "f"]]
