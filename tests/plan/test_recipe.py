"""Recipes (cmf.plan.recipe): template checking, rule matching, encoding by template, fit
templates, and the fallback that keeps presets from failing on tensors lossy codecs refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cmf
from cmf.codecs import ArraySpec
from cmf.dtypes import BY_NAME
from cmf.errors import CmfError
from cmf.pipeline import decode_pending, is_lossy
from cmf.plan.presets import resolve_recipe
from cmf.plan.recipe import (
    Recipe,
    check_template,
    encode_template,
    encoder_for,
    load_recipe,
    recipe_from_obj,
)

Q8 = {
    "codec": "quantize",
    "config": {
        "bits": 8,
        "block": 0,
        "axis": -1,
        "scheme": "symmetric",
        "scale_dtype": "f16",
        "search": False,
    },
}


def spec_of(a: np.ndarray) -> ArraySpec:
    return ArraySpec(
        BY_NAME[{"float32": "f32", "float16": "f16", "int64": "i64"}[a.dtype.name]], a.shape
    )


@pytest.mark.parametrize(
    "template",
    [
        "lossless",
        "stored",
        Q8,
        {"choose": ["lossless", "stored"]},
        {"codec": "zstd", "config": {"level": 1, "literals_only": False}},
        {**Q8, "parts": {"q": {"codec": "bitpack", "config": {"bits": 8}}, "scale": "stored"}},
    ],
)
def test_good_templates_pass(template):
    check_template(template)


@pytest.mark.parametrize(
    "template, message",
    [
        ("fast", "expected 'lossless'"),
        ({"choose": []}, "non-empty"),
        ({"choose": "lossless"}, "non-empty"),
        ({"codec": "nope", "config": {}}, "unknown codec 'nope'"),
        ({"codec": "zstd", "config": {"level": 1}}, "lacks required keys"),
        ({**Q8, "parts": []}, "'parts' must be a map"),
        ({**Q8, "parts": {"q": "fast"}}, "parts.q"),
        ({**Q8, "extra": 1}, "expected 'lossless'"),
        ({"codec": "raw", "config": {}, "fit": {}}, "not both"),
        ({"codec": "raw", "fit": {}}, "takes no fit options"),
        (7, "expected 'lossless'"),
    ],
)
def test_bad_templates_are_named(template, message):
    with pytest.raises(CmfError, match=message):
        check_template(template)


def test_encode_by_template_and_choose_keeps_the_smallest():
    a = np.zeros((64, 64), np.float32)
    spec = spec_of(a)
    stored = encode_template("stored", a, spec)
    lossless = encode_template("lossless", a, spec)
    chosen = encode_template({"choose": ["stored", "lossless"]}, a, spec)
    assert stored.stored == a.nbytes and lossless.stored < 200
    assert chosen.stored == lossless.stored
    for p in (stored, lossless, chosen):
        assert not is_lossy(p)
        assert np.array_equal(decode_pending(p), a)


def test_quantize_template_is_lossy_and_parts_follow_their_templates():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((32, 128)).astype(np.float32)
    t = {**Q8, "parts": {"q": "stored", "scale": "stored"}}
    p = encode_template(t, a, spec_of(a))
    assert is_lossy(p)
    assert p.parts["q"].codec.name == "raw" and p.parts["q"].stored == a.size  # u8 codes, stored
    err = np.abs(decode_pending(p) - a).max()
    assert 0 < err < 0.02 * np.abs(a).max()


def test_template_naming_a_part_the_codec_lacks():
    a = np.ones((8, 8), np.float32)
    with pytest.raises(CmfError, match="has no parts"):
        encode_template({**Q8, "parts": {"codes": "stored"}}, a, spec_of(a))


def test_rules_first_match_wins_with_filters():
    recipe = recipe_from_obj(
        {
            "rules": [
                {"match": ["*.bias", "*norm*"], "encoding": "stored"},
                {
                    "match": "*",
                    "dtypes": ["f32"],
                    "min_rank": 2,
                    "min_elements": 100,
                    "encoding": Q8,
                },
            ],
            "default": {"choose": ["lossless"]},
        }
    )
    f32 = lambda *shape: ArraySpec(BY_NAME["f32"], shape)  # noqa: E731
    assert recipe.template_for("l.bias", f32(10, 10)) == "stored"
    assert recipe.template_for("l.norm.weight", f32(100, 100)) == "stored"
    assert recipe.template_for("l.weight", f32(10, 10)) == Q8
    assert recipe.template_for("l.weight", f32(5, 10)) == {"choose": ["lossless"]}  # too small
    assert recipe.template_for("l.weight", f32(1000)) == {"choose": ["lossless"]}  # rank 1
    assert recipe.template_for("l.weight", ArraySpec(BY_NAME["f16"], (10, 10))) == {
        "choose": ["lossless"]
    }


@pytest.mark.parametrize(
    "obj, message",
    [
        ([], "must be a map"),
        ({"rules": [], "extra": 1}, "must be a map"),
        ({"rules": [{"match": "*"}]}, "needs 'match' and 'encoding'"),
        (
            {"rules": [{"match": "*", "encoding": "lossless", "when": 1}]},
            "needs 'match' and 'encoding'",
        ),
        ({"rules": [{"match": [], "encoding": "lossless"}]}, "glob or a list"),
        ({"rules": [{"match": [3], "encoding": "lossless"}]}, "glob or a list"),
        ({"rules": [{"match": "*", "encoding": "nope"}]}, "recipe rule 0"),
        ({"default": "nope"}, "recipe default"),
    ],
)
def test_bad_recipes(obj, message):
    with pytest.raises(CmfError, match=message):
        recipe_from_obj(obj)


def test_load_recipe_from_json(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"rules": [{"match": "*", "encoding": Q8}]}))
    r = load_recipe(path)
    assert isinstance(r, Recipe) and r.name == "r.json" and len(r.rules) == 1
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CmfError, match="cannot read recipe"):
        load_recipe(tmp_path / "bad.json")
    with pytest.raises(CmfError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.json")


def test_resolve_recipe_sources(tmp_path):
    assert resolve_recipe()[0].name == "lossless"
    r, fallback = resolve_recipe(preset="q8")
    assert r.name == "q8" and fallback
    r, fallback = resolve_recipe(recipe={"rules": []})
    assert not fallback
    assert resolve_recipe(recipe=r)[0] is r
    with pytest.raises(CmfError, match="not both"):
        resolve_recipe(preset="q8", recipe={"rules": []})
    with pytest.raises(CmfError, match="unknown preset 'q3'"):
        resolve_recipe(preset="q3")


def test_fallback_stores_what_the_lossy_codec_refuses():
    a = np.ones((64, 64), np.float32)
    a[3, 3] = np.nan
    recipe = recipe_from_obj({"rules": [{"match": "*", "encoding": Q8}]})
    with pytest.raises(CmfError, match="(?i)finite|nan"):
        encoder_for(recipe, "w")(a, spec_of(a))
    p = encoder_for(recipe, "w", fallback=True)(a, spec_of(a))
    assert not is_lossy(p)
    out = decode_pending(p)
    assert out.tobytes() == a.tobytes()  # NaN payload kept


def test_recipe_through_save_file_records_error(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {
        "w": rng.standard_normal((64, 256)).astype(np.float32),
        "b": np.arange(5, dtype=np.int64),
    }
    path = tmp_path / "m.cmf"
    cmf.save_file(tensors, path, recipe={"rules": [{"match": "w", "encoding": Q8}]})
    with cmf.open(path) as f:
        entries = {e.name: e for e in f.index.tensors}
        assert entries["b"].error is None
        err = entries["w"].error
        w = f.get_tensor("w")
    assert set(err) == {"rel_rmse", "max_abs", "sqnr_db"}
    rel = np.linalg.norm(w - tensors["w"]) / np.linalg.norm(tensors["w"])
    assert err["rel_rmse"] == pytest.approx(rel, rel=1e-6)
    assert err["max_abs"] == pytest.approx(np.abs(w - tensors["w"]).max(), rel=1e-6)
    assert 35 < err["sqnr_db"] < 50  # 8-bit codes: about 6 dB per bit minus the range factor
