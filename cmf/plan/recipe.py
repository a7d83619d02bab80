"""Recipes: tensor-name globs -> codec-tree templates (first match wins).

A recipe is JSON::

    {"rules": [{"match": "*.weight", "min_rank": 2, "min_elements": 4096,
                "dtypes": ["f32", "f16", "bf16"], "encoding": TEMPLATE}, ...],
     "default": TEMPLATE}                       # default: "lossless"

A TEMPLATE says how to encode one value (the tensor, or a part of a codec):

* ``"lossless"`` — the choose-the-smallest lossless rule (pipeline.encode_lossless / best_bytes);
* ``"stored"``   — bytes kept as they are (arrays go through ``raw``);
* ``{"codec": NAME, "config": {...}, "parts": {PART: TEMPLATE}}`` — apply a codec, then each
  part by its template (parts not listed: ``"lossless"``);
* ``{"codec": NAME, "fit": {...}, "parts": {...}}`` — the same, with the config chosen from the
  data by the codec's ``fit`` (e.g. ``{"codec": "lowrank", "fit": {"rel_error": 0.05}}``);
* ``{"choose": [TEMPLATE, ...]}`` — encode with each, keep the smallest.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..codecs import ArraySpec, Spec, Value, codec_class, codec_from_config
from ..codecs.raw import Raw
from ..errors import CmfError
from ..pipeline import Encoder, Pending, PendingLeaf, PendingNode, apply, best_bytes, encode_lossless

Template = Any  # str | dict, checked by check_template


def check_template(t: Template, where: str = "template") -> None:
    """Raise CmfError unless ``t`` is a well-formed template (codec names and configs too)."""
    if t in ("lossless", "stored"):
        return
    if isinstance(t, dict) and set(t) == {"choose"}:
        if not isinstance(t["choose"], list) or not t["choose"]:
            raise CmfError(f"{where}: 'choose' needs a non-empty list of templates")
        for i, sub in enumerate(t["choose"]):
            check_template(sub, f"{where}.choose[{i}]")
        return
    if isinstance(t, dict) and "codec" in t and set(t) <= {"codec", "config", "fit", "parts"}:
        if "fit" in t:
            if "config" in t:
                raise CmfError(f"{where}: give a codec's 'config' or its 'fit' options, not both")
            codec_class(t["codec"]).check_fit(t["fit"])
        else:
            codec_from_config(t["codec"], t.get("config", {}))
        parts = t.get("parts", {})
        if not isinstance(parts, dict):
            raise CmfError(f"{where}: 'parts' must be a map")
        for name, sub in parts.items():
            check_template(sub, f"{where}.parts.{name}")
        return
    raise CmfError(
        f"{where}: expected 'lossless', 'stored', {{'choose': [...]}} or "
        f"{{'codec', 'config' | 'fit', 'parts'}}, found {json.dumps(t)[:200]}"
    )


def encode_template(t: Template, value: Value, spec: Spec, level: int = 3) -> Pending:
    """Encode ``value`` (of ``spec``) as template ``t`` says."""
    if t == "lossless":
        if isinstance(spec, ArraySpec):
            return encode_lossless(np.asarray(value), spec, level)
        return best_bytes(value, spec, level)
    if t == "stored":
        if isinstance(spec, ArraySpec):
            return apply(Raw(), value, spec, lambda v, s: PendingLeaf(v, s))  # type: ignore[arg-type]
        return PendingLeaf(value, spec)
    if "choose" in t:
        candidates = [encode_template(sub, value, spec, level) for sub in t["choose"]]
        return min(candidates, key=lambda p: p.stored)
    if "fit" in t:
        codec, value = codec_class(t["codec"]).fit(value, spec, t["fit"])
    else:
        codec = codec_from_config(t["codec"], t.get("config", {}))
    part_templates = t.get("parts", {})
    part_specs = codec.resolve(spec)
    unknown = set(part_templates) - set(part_specs)
    if unknown:
        raise CmfError(f"codec {codec.name!r} has no parts {sorted(unknown)}")
    parts = codec.encode(value, spec)
    return PendingNode(
        codec,
        {
            n: encode_template(part_templates.get(n, "lossless"), parts[n], part_specs[n], level)
            for n in part_specs
        },
        spec,
    )


@dataclass(frozen=True)
class Rule:
    match: tuple[str, ...]
    encoding: Template
    dtypes: tuple[str, ...] | None = None
    min_rank: int = 0
    min_elements: int = 0

    def applies(self, name: str, spec: ArraySpec) -> bool:
        return (
            any(fnmatch.fnmatchcase(name, pattern) for pattern in self.match)
            and (self.dtypes is None or spec.dtype.name in self.dtypes)
            and len(spec.shape) >= self.min_rank
            and spec.numel >= self.min_elements
        )


@dataclass(frozen=True)
class Recipe:
    rules: tuple[Rule, ...] = ()
    default: Template = "lossless"
    name: str = "custom"
    extra: dict = field(default_factory=dict)

    def template_for(self, name: str, spec: ArraySpec) -> Template:
        for rule in self.rules:
            if rule.applies(name, spec):
                return rule.encoding
        return self.default


_RULE_KEYS = {"match", "encoding", "dtypes", "min_rank", "min_elements"}


def recipe_from_obj(obj: Any, name: str = "custom") -> Recipe:
    """Build and check a recipe from parsed JSON."""
    if not isinstance(obj, dict) or not set(obj) <= {"rules", "default"}:
        raise CmfError("recipe must be a map with 'rules' and optionally 'default'")
    rules = []
    for i, r in enumerate(obj.get("rules", [])):
        if not isinstance(r, dict) or not {"match", "encoding"} <= set(r) <= _RULE_KEYS:
            raise CmfError(f"recipe rule {i}: needs 'match' and 'encoding', may have {sorted(_RULE_KEYS)}")
        match = (r["match"],) if isinstance(r["match"], str) else tuple(r["match"])
        if not match or not all(isinstance(m, str) for m in match):
            raise CmfError(f"recipe rule {i}: 'match' must be a glob or a list of globs")
        check_template(r["encoding"], f"recipe rule {i}")
        dts = r.get("dtypes")
        rules.append(Rule(
            match=match,
            encoding=r["encoding"],
            dtypes=tuple(dts) if dts is not None else None,
            min_rank=int(r.get("min_rank", 0)),
            min_elements=int(r.get("min_elements", 0)),
        ))
    default = obj.get("default", "lossless")
    check_template(default, "recipe default")
    return Recipe(tuple(rules), default, name)


def load_recipe(path: str | os.PathLike) -> Recipe:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CmfError(f"cannot read recipe {path}: {exc}") from None
    return recipe_from_obj(obj, os.path.basename(os.fspath(path)))


def encoder_for(recipe: Recipe, name: str, level: int = 3, fallback: bool = False) -> Encoder:
    """The encoder for tensor ``name``. With ``fallback`` (presets), a tensor the chosen lossy
    codecs refuse (e.g. NaN or Inf values) is stored losslessly instead of failing the pack."""

    def encode(array: np.ndarray, spec: ArraySpec) -> Pending:
        template = recipe.template_for(name, spec)
        try:
            return encode_template(template, array, spec, level)
        except CmfError:
            if not fallback or template == "lossless":
                raise
            return encode_lossless(array, spec, level)

    return encode


def resolve_recipe(preset: str | None = None, recipe: Any = None) -> tuple[Recipe, bool]:
    """(recipe, fallback) from a preset name, a recipe (object, dict or JSON path), or neither."""
    from .presets import preset as preset_recipe

    if preset is not None and recipe is not None:
        raise CmfError("give a preset or a recipe, not both")
    if recipe is None:
        return preset_recipe(preset or "lossless"), True
    if isinstance(recipe, Recipe):
        return recipe, False
    if isinstance(recipe, (str, os.PathLike)):
        return load_recipe(recipe), False
    return recipe_from_obj(recipe), False
