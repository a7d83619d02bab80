"""``cmf.convert.Source`` names every source class the converters define."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing

import cmf.convert


def test_source_names_every_source():
    found = set()
    for info in pkgutil.iter_modules(cmf.convert.__path__):
        module = importlib.import_module(f"cmf.convert.{info.name}")
        found |= {
            obj
            for name, obj in vars(module).items()
            if name.endswith("Source")
            and inspect.isclass(obj)
            and obj.__module__ == module.__name__
        }
    from cmf.convert.onnx import OnnxSource  # named lazily: importing onnx is slow

    hints = typing.get_type_hints(cmf.convert.open_source, localns={"OnnxSource": OnnxSource})
    named = set(typing.get_args(hints["return"]))
    assert found and found == named
