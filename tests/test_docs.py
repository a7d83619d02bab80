"""The docs a new user reads point to everything: README links every spec page and
docs/reliability.md; tools/README.md lists every tool."""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as fh:
        return fh.read()


def test_readme_links_every_spec_page_and_the_reliability_report():
    readme = _read("README.md")
    pages = ["docs/reliability.md", "spec/index.schema.json", "spec/vectors/README.md"]
    for root, _, files in os.walk(os.path.join(ROOT, "spec")):
        pages += [os.path.relpath(os.path.join(root, f), ROOT) for f in files if f.endswith(".md")]
    missing = [p for p in pages if f"]({p})" not in readme]
    assert missing == []


def test_tools_readme_lists_every_tool():
    text = _read("tools", "README.md")
    tools = [
        f
        for f in os.listdir(os.path.join(ROOT, "tools"))
        if f.endswith(".py") and f != "__init__.py"
    ]
    assert len(tools) >= 20
    assert [t for t in tools if f"| `{t}` |" not in text] == []
