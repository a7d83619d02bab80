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

Shared parts: where a template encodes the tensor itself (a rule's ``encoding``, the default,
or one of their ``choose`` alternatives), fit options ``{"shared": GROUP, ...}`` make every
tensor encoded by it share the parts its codec can share (``codebook``: the codebook), fitted
once on a sample of every member and stored once in the file (spec/format.md §3.5), e.g.
``{"codec": "codebook", "fit": {"k": 16, "shared": "mlp"}}``. Such a recipe needs a pre-pass
over the tensors before encoding: ``recipe = prepare(recipe, tensors.items())`` (a no-op
without shared groups); the parts template of a shared part says how the shared value is stored.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import dtypes
from ..codecs import ArraySpec, Codec, Spec, Value, codec_class, codec_from_config
from ..codecs.raw import Raw
from ..errors import CmfError, FitRefused
from ..pipeline import (
    Encoder,
    Pending,
    PendingCounted,
    PendingLeaf,
    PendingNode,
    PendingShared,
    SharedValue,
    apply,
    best_bytes,
    encode_lossless,
)

Template = Any  # str | dict, checked by check_template


def check_template(t: Template, where: str = "template", *, root: bool = True) -> None:
    """Raise CmfError unless ``t`` is a well-formed template (codec names and configs too).
    ``root``: ``t`` encodes a whole tensor (shared groups are allowed only there)."""
    if t in ("lossless", "stored"):
        return
    if isinstance(t, dict) and set(t) == {"choose"}:
        if not isinstance(t["choose"], list) or not t["choose"]:
            raise CmfError(f"{where}: 'choose' needs a non-empty list of templates")
        for i, sub in enumerate(t["choose"]):
            check_template(sub, f"{where}.choose[{i}]", root=root)
        return
    if isinstance(t, dict) and "codec" in t and set(t) <= {"codec", "config", "fit", "parts"}:
        cls = codec_class(t["codec"])
        if "fit" in t:
            if "config" in t:
                raise CmfError(f"{where}: give a codec's 'config' or its 'fit' options, not both")
            cls.check_fit(t["fit"])
        else:
            codec_from_config(t["codec"], t.get("config", {}))
        group = _group_name(t)
        if group is not None:
            if not root:
                raise CmfError(
                    f"{where}: shared group {group!r} is allowed only where a template encodes "
                    "a whole tensor (a rule's encoding, the default, or their 'choose' lists)"
                )
            if not all(hasattr(cls, a) for a in ("shared_parts", "group_sample", "fit_group")):
                raise CmfError(f"{where}: codec {cls.name!r} cannot share parts across tensors")
        parts = t.get("parts", {})
        if not isinstance(parts, dict):
            raise CmfError(f"{where}: 'parts' must be a map")
        for name, sub in parts.items():
            check_template(sub, f"{where}.parts.{name}", root=False)
        return
    raise CmfError(
        f"{where}: expected 'lossless', 'stored', {{'choose': [...]}} or "
        f"{{'codec', 'config' | 'fit', 'parts'}}, found {json.dumps(t)[:200]}"
    )


def encode_template(
    t: Template,
    value: Value,
    spec: Spec,
    level: int = 3,
    groups: Mapping[str, Group] | None = None,
    count_only: bool = False,
) -> Pending:
    """Encode ``value`` (of ``spec``) as template ``t`` says; ``groups`` are the shared groups
    ``prepare`` fitted. ``count_only``: a lossless entropy coder that can count its output
    without making it (``encoded_size``, e.g. huffman) gives a PendingCounted (its exact
    length, stored as is), which decodes but cannot be written (the planner's curves)."""
    if t == "lossless":
        if isinstance(spec, ArraySpec):
            return encode_lossless(np.asarray(value), spec, level)
        return best_bytes(value, spec, level)
    if t == "stored":
        if isinstance(spec, ArraySpec):
            return apply(Raw(), value, spec, lambda v, s: PendingLeaf(v, s))  # type: ignore[arg-type]
        return PendingLeaf(value, spec)
    if "choose" in t:
        candidates, refused = [], []
        for sub in t["choose"]:
            try:
                candidates.append(encode_template(sub, value, spec, level, groups, count_only))
            except FitRefused as exc:  # e.g. low rank would not save bytes here
                refused.append(str(exc))
        if not candidates:
            raise FitRefused("every choice declined: " + "; ".join(refused))
        return min(candidates, key=lambda p: p.stored)
    name = _group_name(t)
    group = None
    if name is not None:
        group = (groups or {}).get(name)
        if group is None:
            raise CmfError(
                f"shared group {name!r} was not prepared: call cmf.plan.recipe.prepare(recipe, "
                "tensors) before encoding"
            )
        codec = group.codec
    elif "fit" in t:
        codec, value = codec_class(t["codec"]).fit(value, spec, t["fit"])
    else:
        codec = codec_from_config(t["codec"], t.get("config", {}))
    counter = getattr(codec, "encoded_size", None) if count_only and group is None else None
    if counter is not None and codec.lossless:
        return PendingCounted(value, spec, counter(value, spec))
    part_templates = t.get("parts", {})
    part_specs = codec.resolve(spec)
    unknown = set(part_templates) - set(part_specs)
    if unknown:
        raise CmfError(f"codec {codec.name!r} has no parts {sorted(unknown)}")
    parts = codec.encode(value, spec)
    children: dict[str, Pending] = {}
    for n in part_specs:
        if group is not None and n in group.shared:
            children[n] = PendingShared(group.shared[n], part_specs[n])  # CmfError on a mismatch
        else:
            children[n] = encode_template(
                part_templates.get(n, "lossless"),
                parts[n],
                part_specs[n],
                level,
                groups,
                count_only,
            )
    return PendingNode(codec, children, spec)


# ----------------------------------------------------------------------------- shared groups


@dataclass(frozen=True)
class Group:
    """A prepared shared group: the codec every member is encoded with, and the values of the
    parts they share (each stored once)."""

    codec: Codec
    shared: Mapping[str, SharedValue]


def _group_name(t: Template) -> str | None:
    if isinstance(t, dict) and isinstance(t.get("fit"), dict):
        name = t["fit"].get("shared")
        return name if isinstance(name, str) else None
    return None


def _root_groups(t: Template) -> list[dict]:
    """The templates with a shared group where ``t`` encodes a whole tensor."""
    if isinstance(t, dict) and "choose" in t:
        return [g for sub in t["choose"] for g in _root_groups(sub)]
    return [t] if _group_name(t) is not None else []


def shared_groups(recipe: Recipe) -> dict[str, dict]:
    """Group name -> its template; CmfError if a name is used with different templates."""
    found: dict[str, dict] = {}
    for t in [r.encoding for r in recipe.rules] + [recipe.default]:
        for g in _root_groups(t):
            name = _group_name(g)
            if name in found and found[name] != g:
                raise CmfError(
                    f"shared group {name!r} is given two different templates; a group has one "
                    "codec, one set of fit options and one encoding of its shared parts"
                )
            found[name] = g
    return found


def prepare(recipe: Recipe, items: Iterable[tuple[str, Any]], level: int = 3) -> Recipe:
    """Fit the recipe's shared groups on ``(name, array)`` pairs (the tensors to be packed, in
    any order; values that are not numpy arrays, such as pre-encoded GGUF blocks, are skipped)
    and return the recipe with them. Each member contributes a bounded sample, so memory stays
    about one tensor. Without shared groups, ``items`` is not read and the recipe is returned."""
    templates = shared_groups(recipe)
    if not templates:
        return recipe
    samples: dict[str, list] = {name: [] for name in templates}
    for name, value in items:
        if not isinstance(value, np.ndarray):
            continue
        try:
            spec = ArraySpec(dtypes.of_array(value), tuple(int(d) for d in value.shape))
        except CmfError:
            continue  # the writer names the problem when it gets there
        for t in _root_groups(recipe.template_for(name, spec)):
            try:
                sample = codec_class(t["codec"]).group_sample(value, spec, t["fit"])
            except CmfError:
                continue  # this member cannot be encoded so; encoding it reports why
            samples[_group_name(t)].append(sample)
    groups: dict[str, Group] = dict(recipe.groups)
    for name, t in templates.items():
        if not samples[name]:
            continue  # no member: nothing to share
        codec = codec_class(t["codec"]).fit_group(samples[name], t["fit"])
        shared = {}
        for part, value in codec.shared_values().items():
            array = np.asarray(value)
            spec = ArraySpec(dtypes.of_array(array), array.shape)
            encoding = encode_template(t.get("parts", {}).get(part, "lossless"), array, spec, level)
            shared[part] = SharedValue(array, encoding, label=f"{name}/{part}")
        groups[name] = Group(codec, shared)
    return dataclasses.replace(recipe, groups=groups)


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
    groups: Mapping[str, Group] = field(default_factory=dict, compare=False)  # from prepare()

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
            raise CmfError(
                f"recipe rule {i}: needs 'match' and 'encoding', may have {sorted(_RULE_KEYS)}"
            )
        match = (r["match"],) if isinstance(r["match"], str) else tuple(r["match"])
        if not match or not all(isinstance(m, str) for m in match):
            raise CmfError(f"recipe rule {i}: 'match' must be a glob or a list of globs")
        check_template(r["encoding"], f"recipe rule {i}")
        dts = r.get("dtypes")
        rules.append(
            Rule(
                match=match,
                encoding=r["encoding"],
                dtypes=tuple(dts) if dts is not None else None,
                min_rank=int(r.get("min_rank", 0)),
                min_elements=int(r.get("min_elements", 0)),
            )
        )
    default = obj.get("default", "lossless")
    check_template(default, "recipe default")
    recipe = Recipe(tuple(rules), default, name)
    shared_groups(recipe)  # one template per group name
    return recipe


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
            return encode_template(template, array, spec, level, recipe.groups)
        except CmfError:
            if not fallback or template == "lossless":
                raise
            return encode_lossless(array, spec, level)

    return encode
