"""Presets: named recipes that need no planning (issue: lossless, q8, q4)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import CmfError, UsageError
from .recipe import Recipe, load_recipe, recipe_from_obj

# Quantize only what is worth it: float matrices (and conv kernels) with enough elements that
# per-block scales are cheap; norms, biases and small tensors stay lossless.
_FLOATS = ["f32", "f16", "bf16", "f64"]
_MIN_ELEMENTS = 4096


# Huffman codes up to 16 bits long: the table only grows when the codes need it (wide, heavy-tailed
# codes of importance-scaled steps: 0.2 bits per code smaller than a 12-bit limit on MiniLM's MLP
# weights), and the C decoder still runs at ~140 M symbols/s with a 2^16-entry table.
CODES_HUFFMAN = {"codec": "huffman", "config": {"chunk": 1024, "max_length": 16}}


def codes_template(bits: int) -> Any:
    """Entropy coding of quantized codes: the smallest of zstd literals (Huffman in C), cmf's
    Huffman and plain bit packing."""
    return {
        "choose": [
            {
                "codec": "raw",
                "parts": {"data": {"codec": "zstd", "config": {"level": 1, "literals_only": True}}},
            },
            CODES_HUFFMAN,
            {"codec": "bitpack", "config": {"bits": bits}},
        ]
    }


def _quantized(bits: int, block: int) -> dict[str, Any]:
    return {
        "codec": "quantize",
        "config": {
            "bits": bits,
            "block": block,
            "axis": -1,
            "scheme": "symmetric",
            "scale_dtype": "f16",
            "search": True,
        },
        "parts": {"q": codes_template(bits)},
    }


PRESETS: dict[str, dict[str, Any]] = {
    "lossless": {"rules": [], "default": "lossless"},
    # 8-bit, one scale per output channel (row), entropy-coded codes
    "q8": {
        "rules": [
            {
                "match": "*",
                "dtypes": _FLOATS,
                "min_rank": 2,
                "min_elements": _MIN_ELEMENTS,
                "encoding": _quantized(8, 0),
            }
        ]
    },
    # 4-bit, groups of 32 along each row, entropy-coded codes
    "q4": {
        "rules": [
            {
                "match": "*",
                "dtypes": _FLOATS,
                "min_rank": 2,
                "min_elements": _MIN_ELEMENTS,
                "encoding": _quantized(4, 32),
            }
        ]
    },
}


def preset(name: str) -> Recipe:
    """The recipe called ``name``; CmfError naming the choices otherwise."""
    if name not in PRESETS:
        raise CmfError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return recipe_from_obj(PRESETS[name], name)


_preset_recipe = preset  # resolve_recipe's parameter shadows the name


def resolve_recipe(preset: str | None = None, recipe: Any = None) -> tuple[Recipe, bool]:
    """(recipe, fallback) from a preset name, a recipe (object, dict or JSON path), or neither."""
    if preset is not None and recipe is not None:
        raise UsageError("give a preset or a recipe, not both")
    if recipe is None:
        return _preset_recipe(preset or "lossless"), True
    if isinstance(recipe, Recipe):
        return recipe, False
    if isinstance(recipe, (str, os.PathLike)):
        return load_recipe(recipe), False
    return recipe_from_obj(recipe), False
