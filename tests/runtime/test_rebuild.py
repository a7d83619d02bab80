"""Rebuilding (cmf.runtime.rebuild): one view of .cmf files and originals (safetensors file,
model directory, .onnx, .gguf), side files read as attachments, the model's kind told from its
metadata and config, tensors decoded lazily, dispatch to the decoder runner."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import onnx
import pytest

import cmf
from cmf.errors import CmfError
from cmf.reader import CmfFile
from cmf.runtime import detect_kind, evaluate, load_runner, open_model
from cmf.runtime import rebuild as rebuild_module
from cmf.runtime.bert import BertEncoder

from . import helpers
from .helpers import llama_config, mlp_onnx, write_bert_dir, write_llama_dir

cli = helpers.cli  # the fixture: ``cli(*args)`` runs the console entry point in-process

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    base = tmp_path_factory.mktemp("rebuild")
    path, tensors = write_bert_dir(base / "bert")
    from cmf.cli import run

    run(["pack", str(path), "-o", str(base / "bert.cmf"), "-q"])  # returns on success
    return str(path), str(base / "bert.cmf"), tensors


def test_every_origin_gives_the_same_tensors_and_side_files(bert):
    directory, packed, tensors = bert
    for path, origin in (
        (packed, "cmf"),
        (directory, "hfdir"),
        (os.path.join(directory, "model.safetensors"), "safetensors"),
    ):
        with open_model(path) as src:
            assert src.origin == origin
            assert sorted(src.keys()) == sorted(tensors)
            for name in ("embeddings.word_embeddings.weight", "embeddings.position_ids"):
                got = src.get_tensor(name)
                assert got.dtype == tensors[name].dtype and got.tobytes() == tensors[name].tobytes()
            with pytest.raises(CmfError, match="no tensor named"):
                src.get_tensor("nope")
            if origin != "safetensors":
                assert {
                    "config.json",
                    "tokenizer.json",
                    "modules.json",
                    "1_Pooling/config.json",
                } <= set(src.attachment_names())
                assert src.json("config.json")["model_type"] == "bert"
            else:
                assert src.attachment_names() == [] and src.json("config.json") is None


def test_borrowing_side_files(bert):
    directory, packed, _ = bert
    bare, donor = open_model(os.path.join(directory, "model.safetensors")), open_model(packed)
    bare.borrow(donor)
    donor.borrow(bare)  # both ways: no loop
    assert (
        "config.json" in bare.attachment_names()
        and bare.json("config.json")["model_type"] == "bert"
    )
    assert detect_kind(bare)[0] == "encoder"
    assert isinstance(load_runner(bare), BertEncoder)


def test_tensors_are_decoded_lazily_one_at_a_time(bert, monkeypatch):
    _, packed, tensors = bert
    decoded = []
    original = CmfFile.get_tensor

    def spy(self, name):
        decoded.append(name)
        return original(self, name)

    monkeypatch.setattr(CmfFile, "get_tensor", spy)
    load_runner(packed)
    assert len(decoded) == len(set(decoded))  # each at most once
    unused = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    assert set(decoded) == set(tensors) - unused


def test_kinds(tmp_path, bert):
    onnx.save_model(mlp_onnx(), str(tmp_path / "m.onnx"))
    with open_model(tmp_path / "m.onnx") as src:
        assert src.origin == "onnx" and detect_kind(src) == ("onnx", {})
        assert "w1" in src.keys() and src.get_tensor("w1").shape == (64, 128)
    assert detect_kind(open_model(bert[1]))[0] == "encoder"
    for model_type in ("roberta", "xlm-roberta"):
        cmf.save_file(
            {"w": np.ones(2, np.float32)},
            tmp_path / "r.cmf",
            attachments={"config.json": json.dumps({"model_type": model_type}).encode()},
        )
        assert detect_kind(open_model(tmp_path / "r.cmf"))[0] == "encoder"


@pytest.mark.parametrize(
    "attachments, message",
    [
        ({}, "has no config.json"),
        ({"config.json": b'{"model_type": "gpt2"}'}, "no runner for model_type 'gpt2'"),
        ({"config.json": b"[1, 2]"}, "not a JSON object"),
        ({"config.json": b"{nope"}, "config.json is not valid JSON"),
    ],
)
def test_unknown_models_are_refused(tmp_path, attachments, message):
    cmf.save_file({"w": np.ones(2, np.float32)}, tmp_path / "x.cmf", attachments=attachments)
    with pytest.raises(CmfError, match=message):
        load_runner(tmp_path / "x.cmf")


def test_missing_paths_and_non_models(tmp_path):
    with pytest.raises(CmfError, match="no such file"):
        open_model(tmp_path / "missing.cmf")
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(CmfError):
        open_model(tmp_path / "junk.bin")


def test_decoder_dispatch_without_the_llama_runner(tmp_path, monkeypatch):
    path, _ = write_llama_dir(tmp_path / "llama")
    monkeypatch.setattr(rebuild_module, "_llama", lambda: None)
    with pytest.raises(CmfError, match="no runner for model_type 'llama'"):
        load_runner(path)


@pytest.mark.skipif(
    importlib.util.find_spec("cmf.runtime.llama") is None, reason="no decoder runner"
)
def test_decoder_dispatch(tmp_path, cli):
    path, _ = write_llama_dir(tmp_path / "llama")
    assert cli("pack", path, "-o", tmp_path / "llama.cmf", "-q").code == 0
    dec = load_runner(tmp_path / "llama.cmf")
    ids = dec.encode("the cat sat on the mat")
    assert ids[0] == 1 and len(ids) == 7  # <s> + six words
    logits = dec.logits(ids)
    assert logits.shape == (7, llama_config()["vocab_size"]) and logits.dtype == np.float32
    new = dec.generate(ids, 5)
    assert 1 <= len(new) <= 5
    # greedy: each new token is the argmax after the ones before it
    full = ids + new
    np.testing.assert_array_equal(np.argmax(dec.logits(full[:-1])[len(ids) - 1 :], -1), new)
    assert dec.generate(ids, 0) == []


@pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None
    or importlib.util.find_spec("cmf.runtime.llama") is None,
    reason="needs gguf and the decoder runner",
)
def test_gguf_original_against_its_cmf(tmp_path, cli):
    """A qwen2-architecture GGUF (F32 tensors and one Q8_0 matrix) and the .cmf packed from it:
    the GGUF original is read by gguf-py and runs through the same decoder."""
    import gguf

    from cmf.runtime import llama

    config = llama_config(model_type="qwen2")
    _, tensors = write_llama_dir(tmp_path / "hf", config)
    rng = np.random.default_rng(3)
    d, kv = (
        config["hidden_size"],
        config["num_key_value_heads"] * config["hidden_size"] // config["num_attention_heads"],
    )
    for i in range(config["num_hidden_layers"]):
        for proj, rows in (("q", d), ("k", kv), ("v", kv)):
            tensors[f"model.layers.{i}.self_attn.{proj}_proj.bias"] = (
                rng.standard_normal(rows) / 10
            ).astype(np.float32)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "qwen2")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_eos_token_id(2)
    for name, array in tensors.items():
        gname = (
            llama.hf_to_gguf_name(name)
            or {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
            }[name]
        )
        if name.endswith("mlp.up_proj.weight"):
            blocks = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(
                gname, blocks, raw_shape=blocks.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
        else:
            w.add_tensor(gname, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = cli(
        "pack",
        tmp_path / "m.gguf",
        "-o",
        tmp_path / "m.cmf",
        "-q",
        "--attach",
        tmp_path / "hf" / "tokenizer.json",
    )
    assert r.code == 0, r.err
    with open_model(tmp_path / "m.gguf") as src, cmf.open(tmp_path / "m.cmf") as f:
        assert src.origin == "gguf" and detect_kind(src)[0] == "decoder"
        for name in src.keys():
            assert src.get_tensor(name).tobytes() == f.get_tensor(name).tobytes(), name
    rep = evaluate(tmp_path / "m.gguf", tmp_path / "m.cmf", ["the cat sat on the mat"])
    assert rep["kind"] == "decoder" and rep["identical"] and rep["kl_mean"] == 0.0
