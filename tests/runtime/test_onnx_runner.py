"""ONNX runner (cmf.runtime.onnx_runner): the skeleton + decoded weights rebuilt in memory and run
by onnxruntime (or the ONNX reference evaluator); a losslessly packed model gives bit-identical
outputs, and ``evaluate`` says so."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import cmf
from cmf.convert.onnx import SKELETON
from cmf.errors import CmfError
from cmf.runtime import evaluate, load_runner
from cmf.runtime import onnx_runner as onnx_runner_module

from . import helpers
from .helpers import bert_config, bert_onnx, bert_tensors, embed_onnx, mlp_onnx

cli = helpers.cli  # the fixture: ``cli(*args)`` runs the console entry point in-process

ort = pytest.importorskip("onnxruntime")


def original_outputs(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


@pytest.fixture
def mlp(tmp_path, cli):
    path = tmp_path / "mlp.onnx"
    onnx.save_model(mlp_onnx(), str(path))
    assert cli("pack", path, "-o", tmp_path / "mlp.cmf", "-q").code == 0
    return path, tmp_path / "mlp.cmf"


def test_lossless_outputs_are_bit_identical(mlp):
    orig, packed = mlp
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)}
    want = original_outputs(orig, feeds)
    for model in (packed, orig):  # the .cmf and the original through the same loader
        runner = load_runner(model)
        assert runner.engine == "onnxruntime" and runner.output_names == [
            "logits",
            "probs",
            "label",
        ]
        got = runner.run(feeds)
        for name in want:
            assert (
                got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes()
            )


def test_reference_engine_and_fallback(mlp, monkeypatch):
    orig, packed = mlp
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)}
    want = original_outputs(orig, feeds)
    runner = load_runner(packed, engine="reference")
    assert runner.engine == "reference"
    got = runner.run(feeds)
    np.testing.assert_allclose(got["probs"], want["probs"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got["label"], want["label"])
    monkeypatch.setattr(onnx_runner_module, "_has_ort", lambda: False)
    assert load_runner(packed).engine == "reference"


def test_external_data_original(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        mlp_onnx(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    feeds = {"x": np.ones((2, 64), np.float32)}
    got = load_runner(path).run(feeds)
    want = original_outputs(path, feeds)
    assert got["logits"].tobytes() == want["logits"].tobytes()


def test_sample_inputs_fit_the_graph(tmp_path, cli):
    path = tmp_path / "embed.onnx"
    onnx.save_model(embed_onnx(), str(path))
    assert cli("pack", path, "-o", tmp_path / "embed.cmf", "-q").code == 0
    runner = load_runner(tmp_path / "embed.cmf")
    specs = {s.name: s for s in runner.input_specs()}
    assert specs["ids"].shape == ("batch", "seq") and specs["ids"].dtype == np.int64
    for seed in range(5):
        feeds = runner.sample_inputs(seed)
        assert feeds["ids"].shape == feeds["mask"].shape == (1, 16)  # batch 1, a sequence of 16
        assert 0 <= feeds["ids"].min() and feeds["ids"].max() < 50  # inside the Gather table
        assert (feeds["mask"] == 1).all()
        assert runner.run(feeds)["pooled"].shape == (1, 16)


def test_eval_lossless_and_q8(mlp, tmp_path, cli):
    orig, packed = mlp
    rep = evaluate(orig, packed)
    assert rep["kind"] == "onnx" and rep["samples"] == 8 and rep["identical"] is True
    assert rep["cosine_mean"] == rep["cosine_min"] == 1.0 and rep["max_abs_error"] == 0.0
    assert rep["outputs"]["logits"]["top1_agreement"] == 1.0
    assert rep["outputs"]["label"] == {
        "shape": [1],
        "dtype": "int64",
        "max_abs_error": 0.0,
        "identical": True,
        "equal_fraction": 1.0,
    }
    q8 = tmp_path / "mlp-q8.cmf"
    assert cli("pack", orig, "-o", q8, "--preset", "q8", "-q").code == 0
    feeds = [
        {"x": np.random.default_rng(s).standard_normal((16, 64)).astype(np.float32)}
        for s in range(4)
    ]
    rep = evaluate(orig, q8, feeds)
    assert rep["samples"] == 4 and rep["identical"] is False
    assert 0.999 < rep["cosine_min"] <= rep["cosine_mean"] < 1.0
    assert rep["outputs"]["logits"]["top1_agreement"] > 0.9
    assert 0 < rep["outputs"]["logits"]["max_abs_error"] < 0.1


def test_bert_graph_packed_and_run(tmp_path, cli):
    """A realistic graph (the tiny BERT of helpers.py): dynamic batch and sequence, int64 ids."""
    config = bert_config()
    model = bert_onnx(bert_tensors(config), config)
    path = tmp_path / "bert.onnx"
    onnx.save_model(model, str(path))
    assert cli("pack", path, "-o", tmp_path / "bert.cmf", "-q").code == 0
    ids = np.array([[2, 7, 8, 9, 3, 0]], np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": (ids > 0).astype(np.int64),
        "token_type_ids": np.zeros_like(ids),
    }
    got = load_runner(tmp_path / "bert.cmf").run(feeds)
    want = original_outputs(path, feeds)
    assert got["sentence_embedding"].tobytes() == want["sentence_embedding"].tobytes()
    rep = evaluate(path, tmp_path / "bert.cmf", [feeds])
    assert rep["identical"] and rep["cosine_min"] == 1.0


def test_run_checks_inputs(mlp):
    runner = load_runner(mlp[1])
    with pytest.raises(CmfError, match="no input 'y'"):
        runner.run({"x": np.ones((1, 64), np.float32), "y": np.ones(1)})
    with pytest.raises(CmfError, match="input 'x' is missing"):
        runner.run({})
    with pytest.raises(CmfError, match=r"shape \[1, 63\]"):
        runner.run({"x": np.ones((1, 63), np.float32)})
    with pytest.raises(CmfError, match="wants float32"):
        runner.run({"x": np.ones((1, 64), np.complex64)})
    assert (
        runner.run({"x": np.ones((1, 64), np.float64)})["logits"].dtype == np.float32
    )  # same kind: cast


def _skeleton_file(tmp_path, tensors):
    model = onnx.ModelProto()
    with cmf.open(tmp_path / "mlp.cmf") as f:
        model.ParseFromString(f.get_attachment(SKELETON))
        meta = f.metadata()
    cmf.save_file(
        tensors,
        tmp_path / "bad.cmf",
        metadata=meta,
        attachments={SKELETON: model.SerializeToString()},
    )
    return tmp_path / "bad.cmf"


def test_skeleton_markers_are_checked(mlp, tmp_path):
    good = cmf.load_file(mlp[1])
    missing = {k: v for k, v in good.items() if k != "w2"}
    with pytest.raises(CmfError, match="'w2'"):
        load_runner(_skeleton_file(tmp_path, missing))
    wrong = dict(good, w2=np.zeros((10, 128), np.float32))
    with pytest.raises(CmfError, match=r"graph wants \[128, 10\]"):
        load_runner(_skeleton_file(tmp_path, wrong))
    wrong = dict(good, w2=good["w2"].astype(np.float16))
    with pytest.raises(CmfError, match="FLOAT"):
        load_runner(_skeleton_file(tmp_path, wrong))


def test_a_broken_skeleton_is_an_error(mlp, tmp_path):
    tensors = cmf.load_file(mlp[1])
    cmf.save_file(
        tensors,
        tmp_path / "b.cmf",
        metadata={"cmf.source_format": "onnx"},
        attachments={SKELETON: b"\x08\x07garbage"},
    )
    with pytest.raises(CmfError, match="not .*ONNX model"):
        load_runner(tmp_path / "b.cmf")
