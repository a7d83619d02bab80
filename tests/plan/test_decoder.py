"""The streamed decoder harness: runs one block at a time, moments per block, Fisher
sensitivities."""

from __future__ import annotations

import numpy as np
import pytest

from cmf.plan.decoder import DecoderHarness, block_of
from cmf.plan.harness import open_harness
from cmf.plan.harness_base import output_error
from cmf.runtime import llama
from cmf.runtime.evaluate import compare_logits

from ..runtime import helpers
from ..runtime.helpers import write_llama_dir


def _harness(tmp_path, **config) -> DecoderHarness:
    from safetensors.numpy import load_file, save_file

    path, _ = write_llama_dir(tmp_path / "llama", helpers.llama_config(**config))
    if not helpers.llama_config(**config)["tie_word_embeddings"]:  # a head of its own
        st = str(tmp_path / "llama" / "model.safetensors")
        t = load_file(st)
        rng = np.random.default_rng(5)
        t["lm_head.weight"] = (
            rng.standard_normal(t["model.embed_tokens.weight"].shape) * 0.5
        ).astype(np.float32)
        save_file(t, st)
    h = open_harness(str(path))
    assert isinstance(h, DecoderHarness)
    return h


def test_block_of_names():
    assert block_of("model.layers.12.mlp.up_proj.weight") == 12
    assert block_of("blk.3.attn_q.weight") == 3
    assert block_of("lm_head.weight") is None and block_of("model.layers.x.y") is None


def test_a_run_started_at_a_late_block_equals_the_whole_pass(tmp_path):
    h = _harness(tmp_path, num_hidden_layers=3)
    rng = np.random.default_rng(1)
    name = "model.layers.2.mlp.down_proj.weight"
    noisy = h.tensors[name] + rng.standard_normal(h.tensors[name].shape).astype(np.float32) * 0.05
    _ = h.reference
    assert h._first_block({name: noisy}) == 2
    assert h._first_block({"model.embed_tokens.weight": noisy}) == 0
    streamed = h.run({name: noisy})
    fresh = _harness(tmp_path / "again", num_hidden_layers=3)  # no cached block inputs
    fresh._inputs = None
    whole = fresh._run(lambda n: noisy if n == name else fresh.tensors[n])
    assert np.array_equal(streamed, whole)
    assert not np.array_equal(streamed, h.reference)


def test_lazy_layers_fetch_each_block_once_per_pass_and_agree(tmp_path):
    path = write_llama_dir(tmp_path / "l", helpers.llama_config(num_hidden_layers=3))
    tensors, config = path[1], helpers.llama_config(num_hidden_layers=3)
    fetched: list[str] = []

    def get(name):
        fetched.append(name)
        return tensors[name]

    ids = np.arange(10) % config["vocab_size"]
    eager = llama.LlamaRunner.from_tensors(tensors.__getitem__, config).logits(ids)
    runner = llama.LlamaRunner.from_tensors(get, config, lazy=True)
    before = len(fetched)
    assert not any("layers" in n for n in fetched)  # nothing of the blocks fetched yet
    assert np.array_equal(runner.logits(ids), eager)
    per_pass = [n for n in fetched[before:] if "layers.1." in n]
    assert len(per_pass) == len(set(per_pass)) == 9  # q k v o gate up down + two norms, once each


def test_decoder_error_is_the_mean_kl_cmf_eval_reports(tmp_path):
    h = _harness(tmp_path)
    rng = np.random.default_rng(2)
    name = "model.layers.0.self_attn.v_proj.weight"
    over = {
        name: h.tensors[name]
        * (1 + 0.2 * rng.standard_normal(h.tensors[name].shape)).astype(np.float32)
    }
    stats = h.stats(over)
    report = compare_logits(h.ids, h.reference, h.run(over))
    assert stats["error"] == pytest.approx(report["kl_mean"], rel=1e-9)
    assert stats["error"] == pytest.approx(
        output_error("decoder", h.reference, h.run(over)), rel=1e-12
    )
    assert stats["top1_agreement"] == pytest.approx(report["top1_agreement"])
    assert stats["perplexity"] == pytest.approx(report["perplexity_compressed"], rel=1e-9)
    assert h.stats()["error"] == 0.0


def test_moments_are_computed_a_block_at_a_time_and_equal_the_whole_pass(tmp_path, monkeypatch):
    h = _harness(tmp_path, num_hidden_layers=2, tie_word_embeddings=False)
    m = h.input_moments()
    name = "model.layers.1.mlp.down_proj.weight"
    assert name in m and "model.layers.0.self_attn.q_proj.weight" in m and "lm_head.weight" in m
    seen: list[np.ndarray] = []
    runner = llama.LlamaRunner.from_tensors(h.tensors.__getitem__, h.config)
    w_down = runner.layers[1].w_down
    original = llama.linear

    def linear(x, w, b=None):
        if w is w_down:
            seen.append(x.reshape(-1, x.shape[-1]).astype(np.float64))
        return original(x, w, b)

    monkeypatch.setattr(llama, "linear", linear)
    runner.logits(np.asarray(h.ids))
    monkeypatch.undo()
    x = np.concatenate(seen)
    axis, diag, folds, factor = m[name]
    assert axis == 1 and np.allclose(diag, np.mean(x * x, axis=0), rtol=1e-6)
    assert folds is not None and folds[0].shape == (x.shape[1], x.shape[1])
    if factor is not None:  # fold 1's rows, kept while fewer than half the channels
        assert factor.shape[1] == x.shape[1] and factor.shape[0] <= x.shape[1] // 2
        assert np.allclose(
            factor.T.astype(np.float64) @ factor,
            folds[1],
            rtol=1e-4,
            atol=1e-6 * np.abs(folds[1]).max(),
        )
    assert m._cached[0] == 1  # one block kept
    _ = m["model.layers.0.mlp.up_proj.weight"]
    assert m._cached[0] == 0


def test_torch_block_equals_the_reference_block(tmp_path):
    torch = pytest.importorskip("torch")
    from cmf.plan.fisher import _block

    h = _harness(tmp_path, num_attention_heads=4, num_key_value_heads=2)
    runner = h._runner(h.tensors.__getitem__)
    x = np.random.default_rng(3).standard_normal((7, runner.config.hidden_size)).astype(np.float32)
    layer = runner.layers[0]
    cos, sin = llama.rope_cos_sin(np.arange(7), runner.inv_freq)
    want = llama.block(x, layer, runner.config, cos, sin)
    w = {a: torch.from_numpy(getattr(layer, a)) for a in ("w_qkv", "w_o", "w_gate_up", "w_down")}
    got = _block(
        torch,
        torch.from_numpy(x),
        w,
        layer,
        runner.config,
        torch.from_numpy(cos),
        torch.from_numpy(sin),
        torch.from_numpy(llama.causal_mask(7, 0, None)),
    )
    assert np.allclose(got.numpy(), want, atol=1e-5)


def test_fisher_trace_of_the_output_head_matches_the_exact_trace(tmp_path):
    """For the head W (logits z = W h): tr F = sum over positions |h|^2 (1 - sum p^2)."""
    torch = pytest.importorskip("torch")
    from cmf.plan.fisher import fisher_traces

    h = _harness(tmp_path, tie_word_embeddings=False)
    runner = h._runner(h.tensors.__getitem__)
    traces = fisher_traces(torch, h, 64, 7)
    hid = llama.rms_norm(h._inputs[-1], runner.norm, runner.config.rms_norm_eps).astype(np.float64)
    p = np.exp(llama.log_softmax(h.reference.astype(np.float64)))
    exact = float(np.sum(np.sum(hid * hid, axis=1) * (1 - np.sum(p * p, axis=1))))
    assert traces["lm_head.weight"] == pytest.approx(exact, rel=0.15)
    assert set(traces) >= {"model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"}


def test_fisher_sensitivities_predict_the_measured_noise_effect(tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841
    from cmf.plan import sensitivity

    h = _harness(tmp_path, hidden_size=128, num_hidden_layers=2)
    items = [
        (n, x, None, None, float(np.sum(np.square(x, dtype=np.float64))))
        for n, x in h.tensors.items()
        if x.ndim == 2
    ]
    fisher = h.sensitivities(items)
    noise = sensitivity.measured(h, items, rel=0.003)
    ratios = [fisher[n]["sensitivity"] / noise[n]["sensitivity"] for n, *_ in items]
    assert 0.5 < float(np.median(ratios)) < 2.0


def test_a_failing_fisher_pass_falls_back_to_noise_with_a_warning(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from cmf.plan import fisher

    h = _harness(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(fisher, "fisher_traces", broken)
    items = [(n, x, None, None, 1.0) for n, x in h.tensors.items() if x.ndim == 2]
    assert h.sensitivities(items) is None and "shape mismatch" in h.fisher_note


def test_fisher_square_sum_matches_float64():
    torch = pytest.importorskip("torch")
    from cmf.plan.fisher import _square_sum

    g = torch.from_numpy(np.random.default_rng(3).standard_normal((300, 700)).astype(np.float32))
    want = float((g.double() ** 2).sum())
    assert _square_sum(torch, g) == pytest.approx(want, rel=1e-5)
    assert _square_sum(torch, g[10:20]) == pytest.approx(
        float((g[10:20].double() ** 2).sum()), rel=1e-5
    )
    assert _square_sum(torch, g[0]) == pytest.approx(float((g[0].double() ** 2).sum()), rel=1e-5)


def test_ggml_activations_round_runs_by_the_overrides_types_and_price_each_tensor(tmp_path):
    """With ``ggml_activations`` (--gguf), a run whose overrides carry GGML types rounds each
    matrix product's input as llama.cpp does; the moments carry each tensor's activation errors,
    and the Fisher sensitivities times those errors predict the KL the rounding adds."""
    pytest.importorskip("torch")
    from cmf.plan.lazy import LazyMapping
    from cmf.runtime.ggml_acts import activation_errors

    h = _harness(tmp_path, num_hidden_layers=2, tie_word_embeddings=False)
    names = [n for n, x in h.tensors.items() if x.ndim == 2]
    same = LazyMapping(names, h.tensors.__getitem__)
    same.ggml_types = {n: "Q8_0" for n in names}
    assert h.error(same) == 0.0  # not simulating: the original weights give the original outputs
    plain_moments = h.input_moments()
    assert len(plain_moments["lm_head.weight"]) == 4
    h.ggml_activations = True
    q8 = h.error(same)
    assert q8 > 0
    same.ggml_types = {n: "F16" for n in names}
    assert 0 < h.error(same) < q8 / 100
    assert h.error(LazyMapping(names, h.tensors.__getitem__)) == 0.0  # no types: F32, no rounding

    m = h.input_moments()
    runner = h._runner(h.tensors.__getitem__)
    final = llama.rms_norm(h._inputs[-1], runner.norm, runner.config.rms_norm_eps)
    assert m["lm_head.weight"][4] == activation_errors(final, h.tensors["lm_head.weight"])
    products = [n for n in names if n in m and n != "model.embed_tokens.weight"]
    if "model.embed_tokens.weight" in m:  # token-prior rows (wordfreq installed): a lookup,
        assert len(m["model.embed_tokens.weight"]) == 3  # its rows are never rounded
    assert all(set(m[n][4]) >= {"F16", "BF16", "Q8_0"} for n in products)
    items = [(n, h.tensors[n], m[n][0], None, 1.0) for n in products]
    sens = h.sensitivities(items)
    predicted = sum(sens[n]["sensitivity"] * m[n][4]["Q8_0"] for n, *_ in items)
    same.ggml_types = {n: "Q8_0" for n, *_ in items}
    assert 0.5 < predicted / h.error(same) < 2.0
