"""Sharded sets (spec/sharding.md, cmf.shards): ``cmf pack --shard-size`` writes shards + a
shard index that ``cmf.open`` / ``load_file`` / ``cmf info`` / ``validate`` / ``unpack`` read as
one model; hostile shard indexes each give one clear CmfError.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file as st_load
from safetensors.numpy import save_file as st_save

import cmf
from cmf import cli
from cmf.shards import ShardedWriter, check_shard_name, set_paths
from cmf.sizes import parse_size
from tests.test_parallel import model_tensors


def run(*args) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[str, dict]:
    tensors = model_tensors(4)
    path = tmp_path_factory.mktemp("src") / "model.safetensors"
    st_save(tensors, str(path), metadata={"format": "pt"})
    return str(path), tensors


@pytest.fixture(scope="module")
def packed(source, tmp_path_factory) -> str:
    """A sharded set (several shards) in its own directory; returns the index path."""
    out = tmp_path_factory.mktemp("set") / "model.cmf"
    attach = tmp_path_factory.mktemp("att") / "config.json"
    attach.write_text('{"a": 1}')
    code, _, err = run(
        "pack", source[0], "-o", out, "-q", "--shard-size", "40KB", "--attach", attach
    )
    assert code == 0, err
    return str(out) + ".index.json"


def test_layout_and_index(packed):
    directory = os.path.dirname(packed)
    with open(packed) as fh:
        index = json.load(fh)
    n = len(index["shards"])
    assert n > 3 and index["format"] == "cmf.shards" and index["version"] == 1
    assert index["shards"] == [f"model-{i:05d}-of-{n:05d}.cmf" for i in range(1, n + 1)]
    assert sorted(os.listdir(directory)) == sorted(index["shards"] + ["model.cmf.index.json"])
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in model_tensors(4).values())
    for name in index["shards"][:-1]:  # model-level data only in the last shard
        with cmf.CmfFile(os.path.join(directory, name)) as f:
            assert f.metadata() == {} and f.attachments() == []


def test_round_trip_open_load_info_validate_unpack(packed, source, tmp_path):
    tensors = source[1]
    from cmf.convert import open_source

    st_names = open_source(source[0]).names()
    for path in (packed, os.path.dirname(packed)):
        with cmf.open(path) as f:
            assert f.keys() == st_names  # the source's order
            assert f.metadata() == {"format": "pt"} and f.attachments() == ["config.json"]
            assert f.get_attachment("config.json") == b'{"a": 1}'
            for name, want in tensors.items():
                got = f.get_tensor(name)
                assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
        loaded = cmf.load_file(path)
        assert list(loaded) == st_names
        report = cmf.validate(path)
        assert report.valid, report.errors
        with cmf.open(path) as f:  # ties across shards are stored again: fewer aliases
            stored = [n for n in f.keys() if f.entry(n).alias is None]
        assert report.tensors_checked == len(stored) and len(tensors) - 3 <= len(stored) < len(
            tensors
        )
    code, out, _ = run("info", packed, "--json")
    info = json.loads(out)
    assert code == 0 and info["tensors"] == len(tensors) and len(info["shards"]) > 3
    assert {r["shard"] for r in info["tensor_list"]} == set(info["shards"])
    code, out, _ = run("info", packed)
    assert code == 0 and "shards" in out
    code, out, _ = run("validate", packed)
    assert code == 0 and "valid" in out
    code, _, err = run("unpack", packed, "-o", tmp_path / "out.safetensors")
    assert code == 0, err
    back = st_load(str(tmp_path / "out.safetensors"))
    assert all(back[k].tobytes() == v.tobytes() for k, v in tensors.items())
    code, _, err = run("unpack", os.path.dirname(packed), "-o", str(tmp_path / "dir") + "/")
    assert code == 0, err
    assert (tmp_path / "dir" / "config.json").read_bytes() == b'{"a": 1}'


def test_jobs_2_writes_the_same_set(source, tmp_path):
    for jobs in (1, 2):
        (tmp_path / str(jobs)).mkdir()
        code, _, err = run(
            "pack",
            source[0],
            "-o",
            tmp_path / str(jobs) / "m.cmf",
            "-q",
            "--shard-size",
            "40KB",
            "--jobs",
            jobs,
            "--preset",
            "q4",
        )
        assert code == 0, err
    names = sorted(os.listdir(tmp_path / "1"))
    assert len(names) > 2 and names == sorted(os.listdir(tmp_path / "2"))
    for name in names:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


def test_tied_weights_across_shards_are_stored_again(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    tensors = {
        "a": w,
        "big": rng.standard_normal((64, 64)).astype(np.float32),
        "b": w.copy(),
        "c": w.copy(),
    }
    with ShardedWriter(tmp_path / "t.cmf", 16 << 10) as sw:  # one matrix per shard
        for name, array in tensors.items():
            from cmf.parallel import EncodeSettings, InlineExecutor, pack_tasks
            from cmf.plan.presets import resolve_recipe

            recipe, fallback = resolve_recipe("lossless")
            pack_tasks(sw, [(name, array)], EncodeSettings(recipe, 3, fallback), InlineExecutor())
    with cmf.open(tmp_path / "t.cmf.index.json") as f:
        assert len(f.shards) == 3
        assert f.entry("c").alias == "b" and f.entry("b").alias is None
        assert f.get_tensor("c").tobytes() == w.tobytes()


def test_a_larger_shard_size_gives_one_shard(source, tmp_path):
    code, _, err = run("pack", source[0], "-o", str(tmp_path) + "/", "-q", "--shard-size", "1GB")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["model-00001-of-00001.cmf", "model.cmf.index.json"]


def test_sizes_and_names():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("512MiB") == 512 << 20
    assert parse_size("1000") == 1000 and parse_size("1.5kb") == 1500
    for bad in ("", "GB", "-1GB", "2 parsecs", "0"):
        with pytest.raises(cmf.CmfError):
            parse_size(bad)
    assert set_paths("/x/model.cmf") == ("/x", "model")
    assert set_paths("/x/m.cmf.index.json") == ("/x", "m")
    assert set_paths("/x/dir/") == ("/x/dir", "model")


# ----------------------------------------------------------------------------- hostile


def tampered(packed: str, tmp_path, edit=None, text: str | None = None) -> str:
    """A copy of the set with its index replaced (``edit(index)`` in place, or raw ``text``)."""
    directory = tmp_path / "copy"
    shutil.copytree(os.path.dirname(packed), directory)
    path = directory / "model.cmf.index.json"
    if text is None:
        index = json.loads(path.read_text())
        edit(index)
        text = json.dumps(index)
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return str(path)


def _first(index) -> str:
    return index["shards"][0]


def _rename(index, old: str, new: str) -> None:
    index["shards"] = [new if s == old else s for s in index["shards"]]
    index["weight_map"] = {k: new if v == old else v for k, v in index["weight_map"].items()}


HOSTILE = {
    "traversal": (lambda i: i["shards"].__setitem__(0, "../" + _first(i)), "not a path"),
    "absolute": (lambda i: i["shards"].__setitem__(0, "/etc/" + _first(i)), "not a path"),
    "backslash": (lambda i: i["shards"].__setitem__(0, "..\\" + _first(i)), "not a path"),
    "hidden": (lambda i: i["shards"].__setitem__(0, ".x.cmf"), "must not start with"),
    "drive": (lambda i: i["shards"].__setitem__(0, "C:x.cmf"), "drive"),
    "not .cmf": (lambda i: i["shards"].__setitem__(0, "x.json"), "end with '.cmf'"),
    "missing shard": (lambda i: _rename(i, _first(i), "gone.cmf"), "missing"),
    "shard twice": (
        lambda i: i["shards"].append(_first(i).upper().replace(".CMF", ".cmf")),
        "listed twice",
    ),
    "no shards": (lambda i: i.__setitem__("shards", []), "1 to"),
    "wrong format": (lambda i: i.__setitem__("format", "safetensors"), "'format'"),
    "future version": (lambda i: i.__setitem__("version", 2), "version 2"),
    "bool version": (lambda i: i.__setitem__("version", True), "integer"),
    "map to unknown shard": (
        lambda i: i["weight_map"].__setitem__("ids", "other.cmf"),
        "not in 'shards'",
    ),
    "tensor in wrong shard": (
        lambda i: i["weight_map"].__setitem__("ids", i["shards"][-1]),
        "the weight_map says",
    ),
    "tensor not mapped": (lambda i: i["weight_map"].pop("ids"), "not in the weight_map"),
    "mapped tensor missing": (
        lambda i: i["weight_map"].__setitem__("ghost", _first(i)),
        "no such tensor",
    ),
    "bad tensor name": (lambda i: i["weight_map"].__setitem__("", _first(i)), "bad tensor name"),
    "weight_map not a map": (lambda i: i.__setitem__("weight_map", []), "must be an object"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_index_is_one_clear_error(packed, tmp_path, case):
    edit, needle = HOSTILE[case]
    path = tampered(packed, tmp_path, edit)
    with pytest.raises(cmf.CmfError, match=needle if needle.isidentifier() else None) as info:
        cmf.open(path)
    assert needle in str(info.value), str(info.value)
    report = cmf.validate(path)
    assert not report.valid and any(needle in e for e in report.errors), report.errors
    for command in ("info", "validate"):
        code, out, err = run(command, path)
        assert code == 1
        assert command == "validate" or (len(err.strip().splitlines()) == 1 and needle in err)


RAW = {
    "duplicate tensor": (
        b'{"format": "cmf.shards", "version": 1, "shards": ["a.cmf"], '
        b'"weight_map": {"t": "a.cmf", "t": "a.cmf"}}',
        "duplicate key",
    ),
    "nan": (
        b'{"format": "cmf.shards", "version": 1, "shards": ["a.cmf"], "weight_map": {}, '
        b'"metadata": {"x": NaN}}',
        "NaN",
    ),
    "bom": ("\ufeff{}".encode(), "byte order mark"),
    "not utf-8": (b'{"format": "\xff"}', "UTF-8"),
    "not json": (b"{", "not valid JSON"),
    "not an object": (b"[]", "JSON object"),
    "deep": (b"[" * 100000 + b"]" * 100000, "nesting"),
}


@pytest.mark.parametrize("case", sorted(RAW))
def test_malformed_index_text_is_one_clear_error(packed, tmp_path, case):
    text, needle = RAW[case]
    path = tampered(packed, tmp_path, text=text)
    with pytest.raises(cmf.CmfError) as info:
        cmf.open(path)
    assert needle in str(info.value), str(info.value)
    assert not cmf.validate(path).valid


def test_shard_that_is_not_cmf(packed, tmp_path):
    path = tampered(packed, tmp_path, lambda i: None)
    with open(path) as fh:
        first = json.load(fh)["shards"][0]
    with open(os.path.join(os.path.dirname(path), first), "wb") as fh:
        fh.write(b"PK\x03\x04 not a cmf file at all" * 10)
    with pytest.raises(cmf.CmfError, match=f"shard '{first}': not a cmf file"):
        cmf.open(path)
    report = cmf.validate(path)
    assert not report.valid and any(e.startswith(f"shard '{first}'") for e in report.errors)


def test_symlinked_shard_is_refused(packed, tmp_path):
    path = tampered(packed, tmp_path, lambda i: None)
    directory = os.path.dirname(path)
    with open(path) as fh:
        first = json.load(fh)["shards"][0]
    os.rename(os.path.join(directory, first), tmp_path / "elsewhere.cmf")
    os.symlink(tmp_path / "elsewhere.cmf", os.path.join(directory, first))
    with pytest.raises(cmf.CmfError, match="symlink"):
        cmf.open(path)
    assert not cmf.validate(path).valid


def test_metadata_in_a_shard_other_than_the_last(packed, tmp_path):
    path = tampered(packed, tmp_path, lambda i: None)
    directory = os.path.dirname(path)
    with open(path) as fh:
        first = json.load(fh)["shards"][0]
    shard = os.path.join(directory, first)
    with cmf.open(shard) as f:
        tensors = {n: f.get_tensor(n) for n in f.keys()}
    cmf.save_file(tensors, shard, metadata={"sneaky": True})
    with pytest.raises(cmf.CmfError, match="only the last shard may"):
        cmf.open(path)


def test_directory_without_one_index(tmp_path):
    with pytest.raises(cmf.CmfError, match="found none"):
        cmf.open(tmp_path)
    (tmp_path / "a.cmf.index.json").write_text("{}")
    (tmp_path / "b.cmf.index.json").write_text("{}")
    with pytest.raises(cmf.CmfError, match="a.cmf.index.json, b.cmf.index.json"):
        cmf.open(tmp_path)


def test_oversized_index_is_refused_before_reading(packed, tmp_path):
    path = tampered(packed, tmp_path, lambda i: None)
    with pytest.raises(cmf.LimitError, match="over the limit"):
        cmf.open(path, limits=cmf.Limits(max_index_bytes=100))


def test_check_shard_name():
    assert check_shard_name("model-00001-of-00002.cmf") == "model-00001-of-00002.cmf"
    for bad in ("", "a/b.cmf", "..", "a.cmf\x00", "x" * 300 + ".cmf", 3, "\ud800.cmf"):
        with pytest.raises(cmf.CmfError):
            check_shard_name(bad)
