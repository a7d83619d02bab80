"""The torch engine of ``cmf run`` / ``cmf eval`` (cmf.runtime.torch_engine) against the numpy
reference runners: the same sentence embeddings (every pooling the module configs select), the
same logits and greedy tokens, close ``cmf eval`` numbers; engine choices checked per model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from cmf.errors import UsageError
from cmf.runtime.evaluate import cosine
from cmf.runtime.rebuild import ModelSource, load_runner, pick_engine

from . import helpers
from .helpers import (
    TEXTS,
    assert_one_error_line,
    bert_config,
    mlp_onnx,
    write_bert_dir,
    write_llama_dir,
)

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

cli = helpers.cli
PROMPTS = ["the cat sat on", "a big red house near the river", "music", "night day light dark"]


def _pack(src, out, *more: str) -> None:
    from cmf import cli as cmf_cli

    try:
        cmf_cli.run(["pack", str(src), "-o", str(out), "-q", *more])
    except SystemExit as exc:
        assert not exc.code, exc.code


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch-engine")
    write_bert_dir(root / "bert")
    write_bert_dir(
        root / "bert-cls-max",
        pooling={"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True},
    )
    write_bert_dir(
        root / "bert-plain",
        bert_config(model_type="roberta", pad_token_id=1, max_position_embeddings=72),
        modules=False,
    )
    write_llama_dir(root / "llama")
    for name in ("bert", "bert-cls-max", "bert-plain", "llama"):
        _pack(root / name, root / f"{name}.cmf")
    _pack(root / "llama", root / "llama-q8.cmf", "--preset", "q8")
    return root


@pytest.mark.parametrize("name", ["bert", "bert-cls-max", "bert-plain"])
def test_embeddings_agree_with_reference(models, name):
    torch_enc = load_runner(models / f"{name}.cmf", engine="torch")
    ref = load_runner(models / f"{name}.cmf", engine="reference")
    assert (torch_enc.engine, ref.engine) == ("torch", "reference")
    assert torch_enc.pipeline == ref.pipeline and torch_enc.dim == ref.dim
    a, b = torch_enc.embed(TEXTS), ref.embed(TEXTS)
    assert a.shape == b.shape == (len(TEXTS), ref.dim) and a.dtype == np.float32
    assert min(cosine(x, y) for x, y in zip(a, b, strict=True)) > 0.99999
    assert np.max(np.abs(a - b)) < 1e-5
    # the original directory through transformers' own config (no cmf.transformers): same numbers
    orig = load_runner(models / name, engine="torch").embed(TEXTS)
    assert np.array_equal(orig, a)


def test_pooling_follows_the_module_configs(models):
    """cls+max pooling doubles the width, no modules.json: mean and not normalised."""
    e = load_runner(models / "bert-cls-max.cmf", engine="torch")
    assert e.pipeline.modes == ("cls", "max") and e.embed(TEXTS[:2]).shape == (2, 128)
    plain = load_runner(models / "bert-plain.cmf", engine="torch").embed(TEXTS)
    assert not np.allclose(np.linalg.norm(plain, axis=1), 1.0)
    normed = load_runner(models / "bert.cmf", engine="torch").embed(TEXTS)
    assert np.allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-6)


def test_llama_logits_and_greedy_tokens_agree(models):
    t = load_runner(models / "llama.cmf", engine="torch")
    r = load_runner(models / "llama.cmf", engine="reference")
    assert t.runner.vocab_size == r.runner.vocab_size
    for prompt in PROMPTS:
        ids = t.encode(prompt)
        new = t.generate(ids, 12)
        assert new == r.generate(ids, 12) and len(new) == 12
        full = ids + new
        lt, lr = t.logits(full), r.logits(full)
        assert lt.shape == lr.shape == (len(full), r.runner.vocab_size)
        assert np.max(np.abs(lt - lr)) < 1e-4
        # the KV-cached steps pick what the whole sequence's logits pick
        assert np.argmax(lt[len(ids) - 1 : -1], axis=-1).tolist() == new


def test_llama_stops_at_eos_and_checks_ids(models):
    t = load_runner(models / "llama.cmf", engine="torch")
    ids = t.encode(PROMPTS[0])
    first = t.runner.generate(ids, 1)[0]
    assert t.runner.generate(ids, 10, eos_token_id=first) == [first]
    assert t.runner.generate(ids, 0) == []
    from cmf.errors import CmfError

    with pytest.raises(CmfError, match="values in"):
        t.runner.logits([1, 10_000])


def test_cli_run_reports_the_engine(models, cli):
    r = cli("run", models / "bert.cmf", "--text", TEXTS[0], "--text", TEXTS[1], "--json")
    assert r.code == 0, r.err
    default = r.json()
    assert default["engine"] == "torch"
    r = cli(
        "run",
        models / "bert.cmf",
        "--text",
        TEXTS[0],
        "--text",
        TEXTS[1],
        "--json",
        "--engine",
        "reference",
    )
    ref = r.json()
    assert ref["engine"] == "reference"
    assert np.max(np.abs(np.array(default["embeddings"]) - np.array(ref["embeddings"]))) < 1e-5
    outs = []
    for engine in ("torch", "reference"):
        r = cli(
            "run",
            models / "llama.cmf",
            "--prompt",
            PROMPTS[1],
            "-n",
            "8",
            "--json",
            "--engine",
            engine,
        )
        assert r.code == 0 and r.json()["engine"] == engine, r.err
        outs.append(r.json()["ids"])
    assert outs[0] == outs[1]


def test_cli_eval_numbers_close_between_engines(models, cli):
    reports = {}
    for engine in ("torch", "reference"):
        r = cli(
            "eval",
            models / "llama",
            models / "llama-q8.cmf",
            "--max-tokens",
            "64",
            "--json",
            "--engine",
            engine,
        )
        assert r.code == 0, r.err
        reports[engine] = r.json()
        assert reports[engine]["engines"] == {"original": engine, "compressed": engine}
    t, ref = reports["torch"], reports["reference"]
    for key in ("perplexity_original", "perplexity_compressed"):
        assert t[key] == pytest.approx(ref[key], rel=1e-4)
    assert t["kl_mean"] == pytest.approx(ref["kl_mean"], rel=1e-2, abs=1e-7)
    assert t["top1_agreement"] == ref["top1_agreement"]
    r = cli("eval", models / "bert", models / "bert.cmf", "--json")
    assert r.code == 0 and r.json()["engines"]["compressed"] == "torch" and r.json()["identical"]


def test_engine_mismatches_are_usage_errors(models, cli, tmp_path):
    onnx.save_model(mlp_onnx(), str(tmp_path / "mlp.onnx"))
    _pack(tmp_path / "mlp.onnx", tmp_path / "mlp.cmf")
    assert_one_error_line(
        cli("run", tmp_path / "mlp.cmf", "--engine", "torch"), "ONNX graph", "not torch", code=2
    )
    assert_one_error_line(
        cli("eval", tmp_path / "mlp.onnx", tmp_path / "mlp.cmf", "--engine", "torch"),
        "ONNX graph",
        code=2,
    )
    assert_one_error_line(
        cli("run", models / "bert.cmf", "--text", "x", "--engine", "onnxruntime"),
        "text model",
        "torch or reference",
        code=2,
    )
    r = cli("run", tmp_path / "mlp.cmf", "--engine", "reference", "--json")
    assert r.code == 0 and r.json()["engine"] == "reference"


def test_a_model_without_config_json_stays_on_the_reference():
    """No config.json and no GGUF metadata to build one from: the default is the reference, torch
    a usage error (GGUF imports run on torch: tests/test_transformers_gguf.py)."""

    class NoConfig(ModelSource):
        pass

    src = NoConfig("model.gguf")
    assert pick_engine("decoder", src, "auto") == "reference"
    assert pick_engine("decoder", src, None) == "reference"
    with pytest.raises(UsageError, match="no config.json"):
        pick_engine("decoder", src, "torch")
    with pytest.raises(UsageError, match="not one of"):
        pick_engine("decoder", src, "tensorflow")


def test_cmf_and_its_cli_do_not_import_torch():
    code = (
        "import sys, cmf, cmf.cli, cmf.cli_runtime, cmf.runtime.rebuild, "
        "cmf.runtime.torch_engine; "
        "from click.testing import CliRunner; CliRunner().invoke(cmf.cli.main, ['--help']); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
