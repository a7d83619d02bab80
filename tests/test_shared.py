"""Shared values (spec/format.md §3.5) through the writer, reader, validator and recipes: one
codebook for a group of tensors is stored once; files without shared values are unchanged 1.0
files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cmf
import cmf.cli
import cmf.codecs.codebook  # noqa: F401  (registers the codec)
from cmf.codecs import ArraySpec
from cmf.codecs.codebook import NF4, Codebook
from cmf.codecs.raw import Raw
from cmf.dtypes import BY_NAME
from cmf.errors import CmfError
from cmf.index import SharedRef, iter_leaves, node_obj
from cmf.pipeline import (
    PendingLeaf,
    PendingNode,
    PendingShared,
    SharedValue,
    apply,
    decode_pending,
    describe,
    encode_lossless,
    shared_ref,
)
from cmf.plan.recipe import check_template, encoder_for, prepare, recipe_from_obj
from cmf.reader import CmfFile
from cmf.writer import Writer

F32 = np.float32
RNG = np.random.default_rng(11)
MLP = {"codec": "codebook", "fit": {"k": 16, "shared": "mlp"}}


def spec(dtype: str, shape) -> ArraySpec:
    return ArraySpec(BY_NAME[dtype], tuple(shape))


def minor_of(path) -> int:
    with open(path, "rb") as fh:
        return int.from_bytes(fh.read(12)[10:12], "little")


def stored(v, s):
    return PendingLeaf(v, s)


def codebook_tree(codec: Codebook, x: np.ndarray, table: PendingShared):
    """A pending codebook node whose codebook part is the shared ``table``."""
    s = spec("f32", x.shape)
    parts = codec.encode(x, s)
    idx = apply(Raw(), parts["indices"], codec.resolve(s)["indices"], stored)
    return PendingNode(codec, {"indices": idx, "codebook": table}, s)


# ----------------------------------------------------------------------------- writer / reader


def test_writer_stores_a_shared_value_once_and_the_reader_decodes_it_once(tmp_path, monkeypatch):
    table = np.linspace(-1, 1, 16).astype(F32)
    codec = Codebook(k=16, centroids=table)
    xs = {f"t{i}": RNG.uniform(-1, 1, (8, 5 + i)).astype(F32) for i in range(3)}
    path = tmp_path / "s.cmf"
    with Writer(path) as w:
        number = w.add_shared(table)
        assert number == 0
        for name, x in xs.items():
            w.add_tensor(name, x, lambda a, s: codebook_tree(codec, a, w.shared_ref(number)))
    assert minor_of(path) == 1
    fetched = []
    real = CmfFile.segment

    def counting(self, i):
        fetched.append(i)
        return real(self, i)

    monkeypatch.setattr(CmfFile, "segment", counting)
    with cmf.open(path) as f:
        assert len(f.index.shared) == 1 and f.index.shared[0].spec == spec("f32", (16,))
        (shared_leaf,) = iter_leaves(f.index.shared[0].encoding)
        for name, x in xs.items():
            node = f.entry(name).encoding
            assert node.parts["codebook"] == SharedRef(0, spec("f32", (16,)))
            assert describe(node) == "codebook(indices=raw,codebook=shared#0)"
            y = f.get_tensor(name)
            assert y.flags.writeable and np.abs(y - x).max() <= (2 / 15) / 2 + 1e-6
            assert f.entry(name).error is not None  # lossy: measured through the shared value
        assert fetched.count(shared_leaf.segment) == 1  # decoded once, kept
        cached = f.shared_value(0)
        assert not cached.flags.writeable and np.array_equal(cached, table)
    assert cmf.validate(path).valid and cmf.validate(path).warnings == []


def test_shared_value_written_lazily_before_its_first_user(tmp_path):
    value = SharedValue(NF4, label="nf4")
    path = tmp_path / "lazy.cmf"
    x = RNG.standard_normal((4, 64)).astype(F32)
    codec = Codebook(k=16, block=64, axis=-1, scale_dtype="f32", centroids=NF4)
    with Writer(path) as w:
        w.add_tensor("first", np.arange(3, dtype=np.int8))  # segment 0
        s = spec("f32", x.shape)
        for name in ("a", "b"):
            parts = codec.encode(x * (1 + len(name)), s)
            specs = codec.resolve(s)
            w.add_encoded(
                name,
                s,
                PendingNode(
                    codec,
                    {
                        "indices": encode_lossless(parts["indices"], specs["indices"]),
                        "codebook": shared_ref(value),
                        "scale": encode_lossless(parts["scale"], specs["scale"]),
                    },
                    s,
                ),
            )
        assert w.add_shared(value) == 0  # the same object: already written
    with cmf.open(path) as f:
        (leaf,) = iter_leaves(f.index.shared[0].encoding)
        first = [seg.segment for seg in iter_leaves(f.entry("a").encoding)]
        assert 0 < leaf.segment < min(first)  # after 'first', before a's own segments
        assert np.array_equal(f.shared_value(0), NF4)
        assert f.get_tensor("b").shape == x.shape


def test_files_without_shared_values_stay_1_0(tmp_path):
    path = tmp_path / "plain.cmf"
    cmf.save_file({"a": np.arange(10, dtype=F32)}, path, preset="q8")
    assert minor_of(path) == 0
    with cmf.open(path) as f:
        assert f.minor == 0 and f.index.shared == []


def test_a_whole_tensor_may_be_a_shared_reference(tmp_path):
    base = RNG.standard_normal((3, 4)).astype(F32)
    path = tmp_path / "root.cmf"
    with Writer(path, dedupe=False) as w:
        i = w.add_shared(base)
        w.add_tensor("x", base, lambda a, s: w.shared_ref(i))
        w.add_tensor("y", base, lambda a, s: w.shared_ref(i))
    with cmf.open(path) as f:
        y = f.get_tensor("y")
        assert np.array_equal(y, base) and y.flags.writeable and f.entry("y").error is None
        y[0, 0] = 5  # a copy: the cached value is untouched
        assert np.array_equal(f.get_tensor("x"), base)
    assert cmf.validate(path).valid


def test_writer_refuses_inconsistent_references(tmp_path):
    with Writer(tmp_path / "bad.cmf") as w:
        i = w.add_shared(np.zeros(8, F32))
        x = np.zeros((2, 3), F32)
        with pytest.raises(
            CmfError, match=r"tensor 'x' is f32\[2, 3\]; a shared f32\[8\] cannot stand for it"
        ):
            w.add_tensor("x", x, lambda a, s: w.shared_ref(i))
        codec = Codebook(k=16, centroids=np.zeros(16, F32))
        with pytest.raises(
            CmfError, match=r"part 'codebook' is f32\[16\]; a shared f32\[8\] cannot"
        ):
            w.add_tensor("y", x, lambda a, s: codebook_tree(codec, a, w.shared_ref(i)))
        with pytest.raises(CmfError, match="no shared value 3"):
            w.shared_ref(3)
        with pytest.raises(CmfError, match="cannot stand for"):
            PendingShared(w._shared_values[0], spec("f16", (8,)))
        w.add_tensor("z", np.zeros(8, F32), lambda a, s: w.shared_ref(i))
        assert [t.name for t in w.index.tensors] == ["z"] and len(
            w.index.segments
        ) == 1  # nothing half-written
    inner = SharedValue(np.ones(4, F32))
    with pytest.raises(CmfError, match="must not reference shared values"):
        SharedValue(np.ones(4, F32), shared_ref(inner))
    with pytest.raises(CmfError, match=r"decodes to bytes\[16\], f32\[4\] expected"):
        SharedValue(np.ones(4, F32), PendingLeaf(b"\x00" * 16, cmf.codecs.BytesSpec(16)))


def test_an_unreferenced_shared_value_is_not_written(tmp_path):
    path = tmp_path / "unused.cmf"
    w = Writer(path)
    w.add_shared(np.zeros(4, F32))
    with pytest.raises(
        CmfError, match=r"shared values \[0\] were added but no tree references them"
    ):
        w.close()
    assert not path.exists() and w.state == "aborted"


def test_writer_respects_the_shared_limits(tmp_path):
    with Writer(tmp_path / "l.cmf", limits=cmf.Limits(max_shared=1, max_shared_bytes=64)) as w:
        i = w.add_shared(np.zeros(4, F32))
        with pytest.raises(CmfError, match="more than 1 shared values"):
            w.add_shared(np.zeros(4, F32))
        w.add_tensor("t", np.zeros(4, F32), lambda a, s: w.shared_ref(i))
    with Writer(tmp_path / "m.cmf", limits=cmf.Limits(max_shared_bytes=64)) as w:
        with pytest.raises(CmfError, match="more than 64 bytes"):
            w.add_shared(np.zeros(17, F32))
        w.add_tensor("t", np.zeros(4, F32))


def test_index_round_trip_of_shared_nodes():
    assert node_obj(SharedRef(3, spec("f32", (2,)))) == {"shared": 3}


# ----------------------------------------------------------------------------- recipes


def three_tensors():
    return {
        "l0.mlp.weight": RNG.standard_normal((64, 96)).astype(F32) * 0.02,
        "l1.mlp.weight": RNG.standard_normal((96, 64)).astype(F32) * 0.03,
        "l2.mlp.weight": RNG.standard_normal((32, 128)).astype(F32) * 0.025,
        "norm": np.ones(64, F32),
    }


def test_three_tensors_share_one_codebook_end_to_end(tmp_path):
    tensors = three_tensors()
    recipe = {"rules": [{"match": "*.mlp.weight", "encoding": MLP}]}
    path = tmp_path / "group.cmf"
    cmf.save_file(tensors, path, recipe=recipe)
    with cmf.open(path) as f:
        assert f.minor == 1 and len(f.index.shared) == 1
        codebook_segments = [leaf.segment for leaf in iter_leaves(f.index.shared[0].encoding)]
        assert len(codebook_segments) == 1  # exactly one codebook segment in the file
        own = [leaf.segment for t in f.index.tensors for leaf in iter_leaves(t.encoding)]
        assert not set(codebook_segments) & set(own)
        for name, x in tensors.items():
            y = f.get_tensor(name)
            if name == "norm":
                assert np.array_equal(y, x)
                continue
            node = f.entry(name).encoding
            assert node.codec.name == "codebook" and node.parts["codebook"] == SharedRef(
                0, spec("f32", (16,))
            )
            assert node.codec.k == 16 and 0.05 < f.entry(name).error["rel_rmse"] < 0.2
            assert len(np.unique(y)) <= 16
            assert set(np.unique(y)) <= set(f.shared_value(0).tolist())
    report = cmf.validate(path)
    assert report.valid and report.warnings == [] and report.shared_checked == 1
    result = CliRunner().invoke(cmf.cli.main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        result.output.count("codebook(indices=") == 3
        and result.output.count("codebook=shared#0") == 3
    )
    assert "cmf 1.1" in result.output
    assert "shared value 0: f32 16," in result.output  # the one codebook, listed once
    result = CliRunner().invoke(cmf.cli.main, ["info", str(path), "--json"])
    shared = json.loads(result.output)["shared"]
    assert len(shared) == 1 and shared[0]["shape"] == [16] and shared[0]["raw_bytes"] == 64
    result = CliRunner().invoke(cmf.cli.main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    jsonschema = pytest.importorskip("jsonschema")
    from cmf import format as fmt
    from cmf.index import unpack

    data = path.read_bytes()
    off, length, _, _, _ = fmt.TRAILER.unpack(data[-fmt.TRAILER_SIZE :])
    index = unpack(data[off : off + length], cmf.Limits())
    assert list(index) == ["segments", "shared", "tensors"]
    schema = json.loads((Path(__file__).parents[1] / "spec" / "index.schema.json").read_text())
    assert [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(index)] == []
    index["tensors"][0]["encoding"]["parts"]["codebook"]["extra"] = 1
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(index))


def test_group_fit_is_deterministic_and_matches_prepare(tmp_path):
    tensors = three_tensors()
    recipe = recipe_from_obj({"rules": [{"match": "*.mlp.weight", "encoding": MLP}]})
    a, b = tmp_path / "a.cmf", tmp_path / "b.cmf"
    cmf.save_file(tensors, a, recipe=recipe)
    cmf.save_file(tensors, b, recipe=recipe)
    assert a.read_bytes() == b.read_bytes()
    prepared = prepare(recipe, tensors.items())
    group = prepared.groups["mlp"]
    with cmf.open(a) as f:
        assert np.array_equal(f.shared_value(0), group.shared["codebook"].value)
    # the group codebook is fitted on every member: close to a fit on all their values at once
    everything = np.concatenate([x.reshape(-1) for n, x in tensors.items() if n != "norm"])
    alone, _ = Codebook.fit(everything, spec("f32", everything.shape), {"k": 16})
    assert np.allclose(group.codec.centroids, alone.centroids, rtol=0.05, atol=2e-3)


def test_prepare_without_groups_reads_nothing():
    def boom():
        raise AssertionError("read")
        yield  # pragma: no cover

    recipe = recipe_from_obj(
        {"rules": [{"match": "*", "encoding": {"codec": "codebook", "fit": {"k": 4}}}]}
    )
    assert prepare(recipe, boom()) is recipe


def test_shared_groups_with_scales_dtypes_and_fixed_tables(tmp_path):
    import ml_dtypes

    tensors = {
        "a.attn": (RNG.standard_normal((32, 64)) * 0.1).astype(ml_dtypes.bfloat16),
        "b.attn": (RNG.standard_normal((16, 64)) * 3).astype(F32),
        "c.ffn": RNG.standard_normal((8, 128)).astype(np.float16),
        "d.ffn": RNG.standard_normal((8, 128)).astype(F32),
    }
    recipe = {
        "rules": [
            {
                "match": "*.attn",
                "encoding": {
                    "codec": "codebook",
                    "fit": {"k": 8, "block": 32, "shared": "attn"},
                    "parts": {
                        "codebook": "stored",
                        "indices": {"codec": "bitpack", "config": {"bits": 3}},
                    },
                },
            },
            {
                "match": "*.ffn",
                "encoding": {"codec": "codebook", "fit": {"fixed": "fp4", "shared": "ffn"}},
            },
        ]
    }
    path = tmp_path / "mixed.cmf"
    cmf.save_file(tensors, path, recipe=recipe)
    with cmf.open(path) as f:
        assert len(f.index.shared) == 2
        assert f.index.shared[0].encoding.codec.name == "raw"  # 'stored': raw, no zstd
        for name, x in tensors.items():
            node = f.entry(name).encoding
            assert isinstance(node.parts["codebook"], SharedRef)
            y = f.get_tensor(name)
            assert y.dtype == x.dtype and f.entry(name).error["rel_rmse"] < 0.2
        assert f.entry("a.attn").encoding.parts["codebook"].index == 0
        assert f.entry("c.ffn").encoding.parts["codebook"].index == 1
        assert f.shared_value(1).tobytes() == cmf.codecs.codebook.FP4.tobytes()
    assert cmf.validate(path).valid


def test_choose_between_a_shared_codebook_and_quantize(tmp_path):
    tensors = three_tensors()
    q4 = {
        "codec": "quantize",
        "config": {
            "bits": 4,
            "block": 32,
            "axis": -1,
            "scheme": "symmetric",
            "scale_dtype": "f16",
            "search": True,
        },
    }
    recipe = {"rules": [{"match": "*.mlp.weight", "encoding": {"choose": [MLP, q4]}}]}
    path = tmp_path / "choose.cmf"
    cmf.save_file(tensors, path, recipe=recipe)
    with cmf.open(path) as f:
        codecs = {f.entry(n).encoding.codec.name for n in tensors if n != "norm"}
        assert codecs == {"codebook"}  # 4-bit indices and no scales beat 4.5-bit q4 here
    assert cmf.validate(path).valid


@pytest.mark.parametrize(
    "recipe, match",
    [
        (
            {
                "rules": [
                    {
                        "match": "*",
                        "encoding": {
                            "codec": "codebook",
                            "fit": {"k": 16},
                            "parts": {"indices": MLP},
                        },
                    }
                ]
            },
            "allowed only where a template encodes a whole tensor",
        ),
        (
            {
                "rules": [
                    {"match": "a", "encoding": MLP},
                    {
                        "match": "b",
                        "encoding": {"codec": "codebook", "fit": {"k": 8, "shared": "mlp"}},
                    },
                ]
            },
            "shared group 'mlp' is given two different templates",
        ),
        (
            {
                "rules": [
                    {"match": "*", "encoding": {"codec": "codebook", "fit": {"k": 16, "shared": 3}}}
                ]
            },
            "non-empty group name",
        ),
    ],
)
def test_bad_shared_recipes(recipe, match):
    with pytest.raises(CmfError, match=match):
        recipe_from_obj(recipe)


def test_encoding_without_prepare_names_the_fix():
    recipe = recipe_from_obj({"rules": [{"match": "*", "encoding": MLP}]})
    x = np.ones((4, 4), F32)
    with pytest.raises(
        CmfError, match=r"shared group 'mlp' was not prepared: call cmf.plan.recipe.prepare"
    ):
        encoder_for(recipe, "w")(x, spec("f32", x.shape))
    check_template(MLP)  # fine at the root


def test_members_that_cannot_be_encoded_fail_with_a_clear_error(tmp_path):
    tensors = three_tensors()
    tensors["l1.mlp.weight"][3, 4] = np.nan
    recipe = {"rules": [{"match": "*.mlp.weight", "encoding": MLP}]}
    with pytest.raises(CmfError, match="cannot encode a non-finite value"):
        cmf.save_file(tensors, tmp_path / "nan.cmf", recipe=recipe)
    assert not (tmp_path / "nan.cmf").exists()
    prepared = prepare(recipe_from_obj(recipe), tensors.items())  # the NaN is left out of the fit
    assert np.isfinite(prepared.groups["mlp"].codec.centroids).all()


def test_cli_pack_with_a_shared_group(tmp_path):
    from cmf.convert import write_safetensors

    tensors = three_tensors()
    src = tmp_path / "model.safetensors"
    specs = [(n, spec("f32", x.shape)) for n, x in tensors.items()]
    write_safetensors(str(src), specs, tensors.__getitem__, {})
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"rules": [{"match": "*.mlp.weight", "encoding": MLP}]}))
    out = tmp_path / "model.cmf"
    result = CliRunner().invoke(
        cmf.cli.main, ["pack", str(src), "--recipe", str(recipe), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["lossy_tensors"] == 3
    with cmf.open(out) as f:
        assert len(f.index.shared) == 1 and f.minor == 1
    assert cmf.validate(out).valid
    assert os.path.getsize(out) < sum(x.nbytes for x in tensors.values()) / 5


def test_decode_pending_follows_shared_references():
    value = SharedValue(np.arange(4, dtype=F32))
    assert np.array_equal(decode_pending(shared_ref(value)), np.arange(4))
    assert describe(shared_ref(value)) == "shared"
