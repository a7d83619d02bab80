"""``cmf run`` and ``cmf eval`` (cmf/cli_runtime.py): inputs from .npy/.npz, outputs saved,
--json, text and prompt modes, and one ``cmf: error:`` line for every bad input."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest

from . import helpers
from .helpers import (
    TEXTS,
    assert_one_error_line,
    embed_onnx,
    mlp_onnx,
    write_bert_dir,
    write_llama_dir,
)

cli = helpers.cli  # the fixture: ``cli(*args)`` runs the console entry point in-process

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("cmf.runtime.llama") is None, reason="no decoder runner"
)


@pytest.fixture
def models(tmp_path, cli):
    onnx.save_model(mlp_onnx(), str(tmp_path / "mlp.onnx"))
    onnx.save_model(embed_onnx(), str(tmp_path / "embed.onnx"))
    for name in ("mlp", "embed"):
        assert (
            cli("pack", tmp_path / f"{name}.onnx", "-o", tmp_path / f"{name}.cmf", "-q").code == 0
        )
    return tmp_path


def test_run_onnx_with_npy_npz_and_named_inputs(models, cli):
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.save(models / "x.npy", x)
    np.savez(models / "x.npz", x=x)
    outs = []
    for k, arg in enumerate([models / "x.npy", models / "x.npz", f"x={models / 'x.npy'}"]):
        r = cli("run", models / "mlp.cmf", "--input", arg, "--json", "-o", models / f"out-{k}.npz")
        assert r.code == 0, r.err
        out = r.json()
        assert out["kind"] == "onnx" and out["generated_inputs"] is False
        assert [o["name"] for o in out["outputs"]] == ["logits", "probs", "label"]
        assert out["outputs"][0]["shape"] == [3, 10] and out["inputs"] == {
            "x": {"dtype": "float32", "shape": [3, 64]}
        }
        with np.load(models / f"out-{k}.npz") as saved:
            outs.append({k: saved[k] for k in saved.files})
    for o in outs[1:]:
        for k in o:
            assert o[k].tobytes() == outs[0][k].tobytes()
    assert outs[0]["logits"][0, :6].tolist() == pytest.approx(out["outputs"][0]["first"])


def test_run_onnx_text_output_and_generated_inputs(models, cli):
    r = cli("run", models / "embed.cmf")
    assert r.code == 0, r.err
    assert "generated inputs ids int64 [1, 16], mask int64 [1, 16]" in r.out
    assert "pooled: float32 [1, 16]" in r.out and "onnxruntime" in r.out
    r = cli("run", models / "embed.onnx", "--engine", "reference", "--json")  # the original, too
    assert r.code == 0 and r.json()["engine"] == "reference"


def test_run_errors_are_one_line(models, cli, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 64), np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "wrong.npz", y=np.ones((2, 64), np.float32))
    cases = [
        (("run", tmp_path / "missing.cmf"), "no such file"),
        (("run", models / "mlp.cmf", "--text", "hello"), "takes --input, not --text"),
        (("run", models / "mlp.cmf", "--prompt", "hi"), "takes --input"),
        (("run", models / "mlp.cmf", "--input", tmp_path / "nope.npy"), "nope.npy"),
        (("run", models / "mlp.cmf", "--input", tmp_path / "obj.npy"), "plain arrays"),
        (("run", models / "mlp.cmf", "--input", tmp_path / "wrong.npz"), "no input 'y'"),
        (("run", models / "embed.cmf", "--input", tmp_path / "x.npy"), "2 inputs"),
        (
            (
                "run",
                models / "mlp.cmf",
                "--input",
                tmp_path / "x.npy",
                "--input",
                f"x={tmp_path / 'x.npy'}",
            ),
            "given twice",
        ),
        (("run", models / "mlp.cmf", "--input", f"x={tmp_path / 'wrong.npz'}"), "takes a .npy"),
        (("run", models / "mlp.cmf", "-o", tmp_path / "o.npy"), "one .npy"),
        (
            ("eval", models / "mlp.onnx", models / "embed.cmf"),
            "different models: inputs (ids int64, mask int64)",
        ),
        (("run", models / "mlp.cmf", "--input", "x=/dev/null"), "EOFError"),
        (("eval", models / "mlp.onnx", models / "mlp.cmf", "--data", tmp_path / "x.txt"), "x.txt"),
    ]
    (tmp_path / "x.txt").write_text("a text\n")
    for args, fragment in cases[:-1]:
        assert_one_error_line(cli(*args), fragment)
    assert_one_error_line(cli(*cases[-1][0]), "ONNX")


def test_eval_onnx(models, cli, tmp_path):
    r = cli("eval", models / "mlp.onnx", models / "mlp.cmf")
    assert r.code == 0, r.err
    assert "an ONNX model, 8 samples (built-in)" in r.out
    assert (
        "logits float32 [1, 10]: cosine mean 1.000000 min 1.000000, max abs error 0, "
        "top-1 agreement 100.00%"
    ) in r.out
    assert "label int64 [1]: max abs error 0, equal 100.00%" in r.out
    assert r.out.rstrip().endswith(
        "bit-identical outputs; cosine mean 1.000000 min 1.000000, max abs error 0"
    )
    np.savez(tmp_path / "in.npz", x=np.ones((4, 64), np.float32))
    r = cli(
        "eval", models / "mlp.onnx", models / "mlp.cmf", "--data", tmp_path / "in.npz", "--json"
    )
    rep = r.json()
    assert rep["samples"] == 1 and rep["outputs"]["logits"]["shape"] == [4, 10] and rep["identical"]


def test_run_and_eval_text_encoder(tmp_path, cli):
    path, _ = write_bert_dir(tmp_path / "bert")
    assert cli("pack", path, "-o", tmp_path / "bert.cmf", "-q").code == 0
    r = cli("run", tmp_path / "bert.cmf", "--text", TEXTS[0], "--text", "x" * 60)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("embeddings: 2 x 64 (mean pooling, L2-normalised)")
    assert lines[1].endswith("'the cat sat on the mat'") and lines[2].endswith("...'")
    assert_one_error_line(cli("run", tmp_path / "bert.cmf"), "--text")
    assert_one_error_line(cli("run", tmp_path / "bert.cmf", "--input", "x.npy"), "takes --text")
    np.savez(tmp_path / "in.npz", x=np.ones(3))
    assert_one_error_line(
        cli("eval", path, tmp_path / "bert.cmf", "--data", tmp_path / "in.npz"), "text model"
    )
    onnx.save_model(mlp_onnx(), str(tmp_path / "mlp.onnx"))
    assert_one_error_line(
        cli("eval", tmp_path / "mlp.onnx", tmp_path / "bert.cmf"),
        "mlp.onnx is an ONNX model but",
        "bert.cmf is a BERT-family encoder",
    )
    r = cli("eval", path, tmp_path / "bert.cmf")
    assert (
        r.code == 0
        and "a BERT-family encoder, 40 samples (built-in)" in r.out
        and "bit-identical" in r.out
    )


@needs_llama
def test_run_and_eval_decoder(tmp_path, cli):
    path, _ = write_llama_dir(tmp_path / "llama")
    assert cli("pack", path, "-o", tmp_path / "llama.cmf", "-q").code == 0
    r = cli("run", tmp_path / "llama.cmf", "--prompt", "the cat sat", "-n", "6", "--json")
    assert r.code == 0, r.err
    out = r.json()
    assert out["kind"] == "decoder" and out["prompt_ids"][0] == 1 and len(out["prompt_ids"]) == 4
    assert 1 <= len(out["ids"]) <= 6 and isinstance(out["text"], str)
    r = cli(
        "run",
        tmp_path / "llama.cmf",
        "--prompt",
        "the cat sat",
        "-n",
        "6",
        "-o",
        tmp_path / "ids.npz",
    )
    assert r.code == 0 and r.out.startswith("the cat sat")
    with np.load(tmp_path / "ids.npz") as saved:
        assert saved["ids"].tolist() == out["ids"]
    assert_one_error_line(cli("run", tmp_path / "llama.cmf"), "--prompt")
    rep = cli("eval", path, tmp_path / "llama.cmf", "--json").json()
    assert (
        rep["kind"] == "decoder"
        and rep["identical"]
        and rep["kl_mean"] == 0.0
        and rep["top1_agreement"] == 1.0
    )
    assert rep["perplexity_original"] == rep["perplexity_compressed"] > 1
    assert cli("pack", path, "-o", tmp_path / "q4.cmf", "--preset", "q4", "-q").code == 0
    r = cli("eval", path, tmp_path / "q4.cmf", "--max-tokens", "64")
    assert r.code == 0, r.err
    assert "a Llama-family decoder, 64 tokens (built-in)" in r.out and "KL mean" in r.out
    rep = cli("eval", path, tmp_path / "q4.cmf", "--json", "--max-tokens", "64").json()
    assert rep["tokens"] == 64 and rep["kl_mean"] > 0 and not rep["identical"]
    assert rep["perplexity_compressed"] != rep["perplexity_original"]
