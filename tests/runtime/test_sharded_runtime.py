"""``cmf run`` / ``cmf eval`` / cmf.runtime on sharded sets (spec/sharding.md): a set named by its
``model.cmf.index.json`` or by its directory runs exactly like the single .cmf of the same model
(BERT, Llama, ONNX), with config/tokenizer/skeleton attachments from the last shard; a bad set
is one CmfError line."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil

import numpy as np
import onnx
import pytest

import cmf
from cmf import cli as cmf_cli
from cmf.errors import CmfError
from cmf.runtime import load_runner, open_model

from . import helpers
from .helpers import TEXTS, assert_one_error_line, mlp_onnx, write_bert_dir, write_llama_dir

cli = helpers.cli  # the fixture: ``cli(*args)`` runs the console entry point in-process

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("cmf.runtime.llama") is None, reason="no decoder runner"
)
INDEX = "model.cmf.index.json"


def _pack(*args) -> None:
    """``cmf pack`` in-process for the module fixture (the ``cli`` fixture is per test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cmf_cli.run(["pack", *map(str, args), "-q"])
        except SystemExit as exc:
            assert not exc.code, err.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each model as one .cmf (``<name>.cmf``) and as a sharded set (``<name>-set/``)."""
    root = tmp_path_factory.mktemp("sharded-runtime")
    write_bert_dir(root / "bert")
    write_llama_dir(root / "llama")
    onnx.save_model(mlp_onnx(), str(root / "mlp.onnx"))
    for name, src in (("bert", "bert"), ("llama", "llama"), ("mlp", "mlp.onnx")):
        _pack(root / src, "-o", root / f"{name}.cmf")
        _pack(root / src, "-o", f"{root / name}-set/", "--shard-size", "20KB")
        with open(root / f"{name}-set" / INDEX) as fh:
            shards = json.load(fh)["shards"]
        assert len(shards) > 1, (name, shards)
        for shard in shards[
            :-1
        ]:  # attachments (config, tokenizer, skeleton) are in the last shard only
            with cmf.open(root / f"{name}-set" / shard) as f:
                assert f.attachments() == []
    return root


def _names(root, name: str) -> list[str]:
    """The sharded set of ``name`` as its index and as its directory."""
    return [str(root / f"{name}-set" / INDEX), str(root / f"{name}-set")]


def test_open_model_reads_a_set_as_one_model(models):
    with open_model(models / "bert.cmf") as one:
        for path in _names(models, "bert"):
            with open_model(path) as src:
                assert src.origin == "cmf" and src.keys() == one.keys()
                assert src.metadata == one.metadata
                assert src.attachment_names() == one.attachment_names()
                assert src.attachment("tokenizer.json") == one.attachment("tokenizer.json")
                name = "encoder.layer.1.output.dense.weight"
                assert np.array_equal(src.get_tensor(name), one.get_tensor(name))


def test_bert_run_and_eval(models, cli, tmp_path):
    args = ("--text", TEXTS[0], "--text", TEXTS[2], "--text", TEXTS[6])
    assert cli("run", models / "bert.cmf", *args, "-o", tmp_path / "one.npy").code == 0
    want = np.load(tmp_path / "one.npy")
    for k, path in enumerate(_names(models, "bert")):
        r = cli("run", path, *args, "-o", tmp_path / f"set{k}.npy", "--json")
        assert r.code == 0, r.err
        assert (
            r.json()["kind"] == "encoder" and r.json()["normalized"] is True
        )  # modules.json found
        assert np.array_equal(np.load(tmp_path / f"set{k}.npy"), want)
        rep = cli("eval", models / "bert.cmf", path, "--json").json()
        assert rep["kind"] == "encoder" and rep["identical"] and rep["max_abs_error"] == 0
    rep = cli(
        "eval", models / "bert", _names(models, "bert")[1], "--json"
    ).json()  # the original vs the set
    assert rep["identical"] and rep["samples"] == 40
    by_api = load_runner(_names(models, "bert")[0]).embed(TEXTS)
    assert np.array_equal(by_api, load_runner(models / "bert.cmf").embed(TEXTS))


@needs_llama
def test_llama_run_and_eval(models, cli, tmp_path):
    args = ("--prompt", "the cat sat on the", "-n", "8")
    r = cli("run", models / "llama.cmf", *args, "-o", tmp_path / "one.npz", "--json")
    assert r.code == 0, r.err
    want = r.json()
    for k, path in enumerate(_names(models, "llama")):
        r = cli("run", path, *args, "-o", tmp_path / f"set{k}.npz", "--json")
        assert r.code == 0, r.err
        got = r.json()
        assert got["kind"] == "decoder"
        assert (got["prompt_ids"], got["ids"], got["text"]) == (
            want["prompt_ids"],
            want["ids"],
            want["text"],
        )
        with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / f"set{k}.npz") as b:
            assert np.array_equal(a["ids"], b["ids"]) and np.array_equal(
                a["prompt_ids"], b["prompt_ids"]
            )
        rep = cli("eval", models / "llama.cmf", path, "--json", "--max-tokens", "48").json()
        assert rep["kind"] == "decoder" and rep["identical"] and rep["kl_mean"] == 0.0
        assert rep["perplexity_original"] == rep["perplexity_compressed"]
    ids = load_runner(models / "llama.cmf").encode(" ".join(TEXTS))
    logits = load_runner(_names(models, "llama")[1]).logits(ids)
    assert np.array_equal(logits, load_runner(models / "llama.cmf").logits(ids))


def test_onnx_run_and_eval(models, cli, tmp_path):
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert (
        cli(
            "run", models / "mlp.cmf", "--input", tmp_path / "x.npy", "-o", tmp_path / "one.npz"
        ).code
        == 0
    )
    for k, path in enumerate(_names(models, "mlp")):
        r = cli(
            "run", path, "--input", tmp_path / "x.npy", "-o", tmp_path / f"set{k}.npz", "--json"
        )
        assert r.code == 0, r.err
        assert r.json()["kind"] == "onnx"
        with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / f"set{k}.npz") as b:
            assert a.files == b.files == ["logits", "probs", "label"]
            assert all(np.array_equal(a[n], b[n]) and a[n].dtype == b[n].dtype for n in a.files)
        rep = cli("eval", models / "mlp.onnx", path, "--json").json()
        assert rep["kind"] == "onnx" and rep["identical"] and rep["samples"] == 8


def _copy_set(models, tmp_path, name: str = "mlp") -> str:
    directory = str(tmp_path / f"{name}-set")
    shutil.copytree(models / f"{name}-set", directory)
    return directory


def test_index_naming_a_missing_shard(models, cli, tmp_path):
    directory = _copy_set(models, tmp_path)
    with open(os.path.join(directory, INDEX)) as fh:
        first = json.load(fh)["shards"][0]
    os.unlink(os.path.join(directory, first))
    for path in (os.path.join(directory, INDEX), directory):
        with pytest.raises(CmfError, match=f"shard '{first}' is missing from"):
            load_runner(path)
        assert_one_error_line(cli("run", path), f"shard '{first}' is missing from")
        assert_one_error_line(cli("eval", models / "mlp.onnx", path), f"shard '{first}' is missing")


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        (
            '{"format": "cmf.shards", "version": 1, "shards": ["../mlp.cmf"], "weight_map": {}}',
            "not a path",
        ),
        ('{"format": "safetensors"}', "'format' must be 'cmf.shards'"),
    ],
)
def test_a_bad_index_is_one_error_line(models, cli, tmp_path, text, message):
    directory = _copy_set(models, tmp_path)
    with open(os.path.join(directory, INDEX), "w") as fh:
        fh.write(text)
    for path in (os.path.join(directory, INDEX), directory):
        assert_one_error_line(cli("run", path), message)
    assert_one_error_line(cli("eval", directory, models / "mlp.cmf"), message)


def test_a_directory_with_two_indexes_is_refused(models, cli, tmp_path):
    directory = _copy_set(models, tmp_path)
    shutil.copy(os.path.join(directory, INDEX), os.path.join(directory, "other.cmf.index.json"))
    assert_one_error_line(cli("run", directory), "model.cmf.index.json, other.cmf.index.json")
    assert (
        cli("run", os.path.join(directory, INDEX), "--json").code == 0
    )  # naming the index is fine
