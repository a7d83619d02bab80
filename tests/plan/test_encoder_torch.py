"""The encoder harness on torch (cmf.plan.encoder_torch) against the numpy reference
(cmf.runtime.bert): outputs, output errors of replaced tensors (runs restarted from the kept
activations included) and input moments agree to float32 rounding; CMF_PLAN_ENGINE chooses."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cmf.errors import CmfError
from cmf.plan import encoder_torch
from cmf.plan import harness as harness_mod
from cmf.plan.harness import EncoderHarness
from cmf.runtime.bert import Pipeline

from ..runtime.helpers import TEXTS, bert_config, bert_tensors, wordpiece_tokenizer_json

pytest.importorskip("tokenizers")

# more sentences than one batch of 32, of every length: several batches, padding in each
SENTENCES = [" ".join(TEXTS[i % 8].split()[: 1 + (i * 7) % 9]) for i in range(70)] + TEXTS


def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_str(wordpiece_tokenizer_json())


def pair(config=None, pipeline=None, prefix="", texts=SENTENCES, seed=0):
    """(reference harness, torch harness) of one random BERT."""
    pytest.importorskip("torch")
    config = config or bert_config(num_hidden_layers=3)
    tensors = bert_tensors(config, seed, prefix)
    pipeline = pipeline or Pipeline(modes=("mean",), normalize=True)
    ref, got = (
        EncoderHarness(tensors, config, pipeline, tokenizer(), texts, engine=engine)
        for engine in ("reference", "torch")
    )
    assert ref.engine == "reference" and got.engine == "torch"
    return ref, got


def noisy(h, name, seed=0, scale=0.05):
    x = h.tensors[name]
    rng = np.random.default_rng(seed)
    return (x + scale * x.std() * rng.standard_normal(x.shape)).astype(np.float32)


# names whose runs restart at each stage of a layer, and the embeddings (a full run)
REPLACED = [
    ("embeddings.word_embeddings.weight", None),
    ("embeddings.position_embeddings.weight", None),
    ("embeddings.LayerNorm.weight", None),
    ("encoder.layer.0.attention.self.query.weight", (0, 0)),
    ("encoder.layer.1.attention.self.value.bias", (1, 0)),
    ("encoder.layer.1.attention.output.dense.weight", (1, 1)),
    ("encoder.layer.2.attention.output.LayerNorm.bias", (2, 1)),
    ("encoder.layer.1.intermediate.dense.weight", (1, 2)),
    ("encoder.layer.2.output.dense.weight", (2, 2)),
    ("encoder.layer.2.output.LayerNorm.weight", (2, 2)),
    ("pooler.dense.weight", None),
]


def test_torch_outputs_and_errors_match_the_reference():
    ref, got = pair()
    np.testing.assert_allclose(got.reference, ref.reference, rtol=0, atol=2e-6)
    for k, (name, entry) in enumerate(REPLACED):
        over = {name: noisy(ref, name, k)}
        assert got._torch.entry(list(over)) == entry, name
        a, b = ref.run(over), got.run(over)
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-6, err_msg=name)
        e_ref, e_got = ref.error(over), got.error(over)
        assert abs(e_got - e_ref) <= 1e-3 * e_ref + 1e-9, (name, e_ref, e_got)
    # tensors of two layers: the run restarts at the earlier one
    two = {n: noisy(ref, n) for n in (REPLACED[7][0], REPLACED[5][0])}
    assert got._torch.entry(list(two)) == (1, 1)
    np.testing.assert_allclose(got.run(two), ref.run(two), rtol=0, atol=2e-6)
    # every tensor replaced (a verification round): a full run; stats agree
    every = {n: noisy(ref, n, 3, 0.01) for n in ref.tensors if ref.tensors[n].dtype.kind == "f"}
    assert got._torch.entry(list(every)) is None
    s_ref, s_got = ref.stats(every), got.stats(every)
    assert s_got["error"] == pytest.approx(s_ref["error"], rel=1e-3)
    assert s_got["cosine_min"] == pytest.approx(s_ref["cosine_min"], abs=1e-6)


def test_torch_input_moments_match_the_reference():
    ref, got = pair()
    m_ref, m_got = ref.input_moments(), got.input_moments()
    assert list(m_got) == list(m_ref)
    np.testing.assert_allclose(got.reference, ref.reference, rtol=0, atol=2e-6)  # from moments
    for name, want in m_ref.items():
        have = m_got[name]
        assert have[0] == want[0], name
        np.testing.assert_allclose(have[1], want[1], rtol=2e-5, atol=1e-9, err_msg=name)
        if want[2] is None:
            assert have[2] is None, name
        else:
            for x, y in zip(have[2], want[2], strict=True):
                np.testing.assert_allclose(x, y, rtol=0, atol=2e-5 * np.abs(y).max())
        assert len(have) == len(want), name  # token rows: (axis, importance, None)
        if len(want) > 3 and want[3] is None:
            assert have[3] is None, name
        elif len(want) > 3:
            np.testing.assert_allclose(have[3], want[3], rtol=0, atol=2e-5 * np.abs(want[3]).max())
    # the qkv weights share one input: the same arrays
    q = "encoder.layer.0.attention.self."
    assert m_got[q + "query.weight"][1] is m_got[q + "value.weight"][1]


def test_fold_one_rows_kept_as_the_reference_keeps_them():
    # few sentences, wide inputs: fold 1 has at most half as many rows as channels
    ref, got = pair(texts=TEXTS[:4])
    m_ref, m_got = ref.input_moments(), got.input_moments()
    name = "encoder.layer.1.output.dense.weight"
    assert m_ref[name][3] is not None and m_got[name][3].shape == m_ref[name][3].shape
    np.testing.assert_allclose(m_got[name][3], m_ref[name][3], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "model_type, act, modes, prefix, types",
    [
        ("roberta", "gelu_new", ("cls", "max"), "roberta.", 1),
        ("bert", "relu", ("mean_sqrt_len",), "bert.", 2),
        ("bert", "gelu", ("mean", "max"), "", 0),  # no token-type embeddings
    ],
)
def test_variants_match_the_reference(model_type, act, modes, prefix, types):
    config = bert_config(num_hidden_layers=2, model_type=model_type, hidden_act=act)
    if model_type == "roberta":
        config["pad_token_id"] = 1
    if types:
        config["type_vocab_size"] = types
    ref, got = pair(config, Pipeline(modes=modes, normalize=False), prefix, seed=2)
    if not types:
        for h in (ref, got):
            del h.tensors[prefix + "embeddings.token_type_embeddings.weight"]
        ref, got = (
            EncoderHarness(h.tensors, config, h.pipeline, tokenizer(), SENTENCES, engine=h.engine)
            for h in (ref, got)
        )
    np.testing.assert_allclose(got.reference, ref.reference, rtol=0, atol=2e-5)
    name = prefix + "encoder.layer.1.attention.output.dense.weight"
    over = {name: noisy(ref, name)}
    assert got._torch.entry(list(over)) == (1, 1)
    np.testing.assert_allclose(got.run(over), ref.run(over), rtol=0, atol=2e-5)


def test_chunks_and_a_small_activation_budget(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(encoder_torch, "CHUNK_TOKENS", 100)  # several chunks of batches
    monkeypatch.setattr(encoder_torch, "MAX_CACHE_BYTES", 3 * 64 * 4 * 700)  # the last layer
    ref, got = pair()
    assert len(got._torch.chunks) > 1 and got._torch.cached_layers == {2}
    m_ref, m_got = ref.input_moments(), got.input_moments()
    for name, want in m_ref.items():
        np.testing.assert_allclose(m_got[name][1], want[1], rtol=2e-5, atol=1e-9, err_msg=name)
    early, late = REPLACED[5][0], REPLACED[8][0]
    assert got._torch.entry([early]) is None and got._torch.entry([late]) == (2, 2)
    for name in (early, late):
        over = {name: noisy(ref, name)}
        np.testing.assert_allclose(got.run(over), ref.run(over), rtol=0, atol=2e-6)


def test_plan_engine_variable(monkeypatch):
    monkeypatch.setenv("CMF_PLAN_ENGINE", "reference")
    assert harness_mod.plan_engine() == "reference"
    monkeypatch.setenv("CMF_PLAN_ENGINE", "numpy")
    with pytest.raises(CmfError, match="CMF_PLAN_ENGINE='numpy': expected one of auto"):
        harness_mod.plan_engine()
    monkeypatch.delenv("CMF_PLAN_ENGINE")
    has_torch = importlib.util.find_spec("torch") is not None
    assert harness_mod.plan_engine() == ("torch" if has_torch else "reference")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    assert harness_mod.plan_engine() == "reference"  # auto without torch
    monkeypatch.setenv("CMF_PLAN_ENGINE", "torch")
    with pytest.raises(CmfError, match="PyTorch is not installed"):
        harness_mod.plan_engine()


def test_reference_engine_runs_without_the_torch_pass(monkeypatch, bert_dir):
    def refuse(*args, **kwargs):
        raise AssertionError("the torch pass ran")

    monkeypatch.setattr(encoder_torch.TorchEncoderPass, "run", refuse)
    monkeypatch.setenv("CMF_PLAN_ENGINE", "reference")
    h = harness_mod.open_harness(bert_dir, list(TEXTS))
    assert h.engine == "reference" and h._torch is None
    name = "encoder.layer.1.output.dense.weight"
    assert h.error({name: noisy(h, name)}) > 0
    assert name in h.input_moments()


def test_planner_modules_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, cmf.plan.harness, cmf.plan.encoder_torch, cmf.plan.planner; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
