"""llama.cpp's activation rounding (cmf.runtime.ggml_acts): the blocks as ggml-cpu makes them,
checked against a direct computation of its integer dot products, and the Llama runner's matrix
products rounded per weight type."""

from __future__ import annotations

import numpy as np
import pytest

from cmf.errors import CmfError
from cmf.runtime import llama
from cmf.runtime.ggml_acts import (
    activation_errors,
    activation_type,
    llama_cpp_rounding,
    round_activations,
    rounded_linear,
)

from . import helpers


def _activations(rng, rows: int, n: int) -> np.ndarray:
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x[:, 7] *= 40  # an outlier channel, as LLM activations have
    x[1, 40:72] = 0  # a zero block
    return x


def _q8_0_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes int, f16 scales) of ggml-cpu's Q8_0 blocks, one block at a time in Python."""
    codes, scales = [], []
    for block in x.reshape(-1, 32):
        amax = np.float32(max(abs(float(v)) for v in block))
        inv = np.float32(127) / amax if amax else np.float32(0)
        codes.append([round(float(np.float32(v) * inv)) for v in block])  # ties to even
        scales.append(np.float16(amax / np.float32(127)))
    return np.array(codes, np.int64), np.array(scales, np.float16)


def test_vec_dot_types_follow_ggml_cpu():
    assert activation_type("Q4_K") == activation_type("IQ4_XS") == "Q8_K"
    assert activation_type("Q5_0") == activation_type("IQ4_NL") == activation_type("Q8_0") == "Q8_0"
    assert activation_type("Q5_1") == "Q8_1" and activation_type("F16") == "F16"
    assert activation_type(None) == activation_type("F32") == "F32"
    with pytest.raises(CmfError, match="no activation rounding"):
        activation_type("Q9_9")


def test_q8_0_blocks_equal_a_direct_computation_of_the_blocks():
    x = _activations(np.random.default_rng(0), 6, 96)
    codes, scales = _q8_0_reference(x)
    assert np.abs(codes).max() == 127
    want = (codes * scales.astype(np.float64)[:, None]).reshape(x.shape)
    got = round_activations(x, "Q8_0")
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, want.astype(np.float32))
    np.testing.assert_array_equal(round_activations(x, "Q8_1"), got)  # the same values
    assert np.all(got[1, 40:72] == 0)
    assert not np.array_equal(got, x)


def test_q8_k_blocks_of_256_with_a_float32_scale():
    x = _activations(np.random.default_rng(1), 3, 512)
    got = round_activations(x, "Q8_K").reshape(-1, 256)
    blocks = x.reshape(-1, 256)
    for b, g in zip(blocks, got, strict=True):
        amax = np.float32(np.abs(b).max())
        s = np.float32(127) / amax
        np.testing.assert_array_equal(g, (np.rint(b * s) * (np.float32(1) / s)).astype(np.float32))
        assert np.max(np.abs(g)) == pytest.approx(amax, rel=1e-6)  # the largest keeps 127 codes
    # one scale for 256 values rounds coarser than one for 32, where a block holds an outlier
    err_k = np.square(round_activations(x, "Q8_K") - x).sum()
    err_0 = np.square(round_activations(x, "Q8_0") - x).sum()
    assert err_k > 2 * err_0
    with pytest.raises(CmfError, match="not a multiple of 256"):
        round_activations(x[:, :96], "Q8_K")
    with pytest.raises(CmfError, match="expected one of"):
        round_activations(x, "Q4_0")


def test_f16_and_bf16_round_to_nearest_even():
    x = np.array([1 + 2**-9, 1 + 3 * 2**-9, 1 + 2**-8 + 2**-16, -3.0, np.nan], np.float32)
    bf = round_activations(x, "BF16")
    np.testing.assert_array_equal(bf[:4], np.array([1.0, 1 + 2**-7, 1 + 2**-7, -3.0], np.float32))
    assert np.isnan(bf[4])
    f16 = round_activations(x[:4], "F16")
    np.testing.assert_array_equal(f16, x[:4].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(round_activations(x, "F32"), x)


def test_q8_0_weight_times_rounded_activations_equals_ggml_integer_dot_products():
    """llama.cpp's Q8_0 x Q8_0 product: per block, the integer dot of the codes times both f16
    scales, summed; rounded_linear (round, then a float32 product) computes the same."""
    from cmf.ggml_encode import quantize_blocks
    from cmf.plan.ggml_candidates import _values

    rng = np.random.default_rng(2)
    x = _activations(rng, 5, 128)
    w = rng.standard_normal((12, 128)).astype(np.float32)
    blocks = quantize_blocks(w, "Q8_0").reshape(12, 4, 34)
    wd = blocks[..., :2].copy().view(np.float16).astype(np.float64)[..., 0]  # [12, 4]
    wq = blocks[..., 2:].view(np.int8).astype(np.int64)  # [12, 4, 32]
    w_values = _values(blocks, "Q8_0", w.shape)
    xq, xd = _q8_0_reference(x)
    xq, xd = xq.reshape(5, 4, 32), xd.astype(np.float64).reshape(5, 4)
    want = np.einsum("rbk,obk,rb,ob->ro", xq, wq, xd, wd)  # integer dots, scaled per block
    got = rounded_linear(x, w_values, None, [(12, activation_type("Q8_0"))])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * np.abs(want).max())
    plain = x @ w_values.T  # float32 activations: what the planner measured before
    assert np.abs(plain - want).max() > 100 * np.abs(got - want).max()


def test_spans_round_each_tensor_of_a_fused_weight_by_its_own_type():
    rng = np.random.default_rng(3)
    x = _activations(rng, 4, 256)
    w = rng.standard_normal((10, 256)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    got = rounded_linear(x, w, b, [(4, "Q8_0"), (3, "F32"), (3, "Q8_K")])
    np.testing.assert_array_equal(got[:, :4], round_activations(x, "Q8_0") @ w[:4].T + b[:4])
    np.testing.assert_array_equal(got[:, 4:7], x @ w[4:7].T + b[4:7])
    np.testing.assert_array_equal(got[:, 7:], round_activations(x, "Q8_K") @ w[7:].T + b[7:])
    with pytest.raises(CmfError, match="cover 7 rows"):
        rounded_linear(x, w, None, [(4, "Q8_0"), (3, "F32")])


def test_activation_errors_measure_the_rounding_through_the_weight():
    rng = np.random.default_rng(4)
    x = _activations(rng, 64, 512)
    w = rng.standard_normal((20, 512)).astype(np.float32)
    got = activation_errors(x, w)
    assert set(got) == {"F16", "BF16", "Q8_0", "Q8_K"}
    d = (round_activations(x, "Q8_K") - x).astype(np.float64) @ w.T.astype(np.float64)
    want = 512 * np.square(d).sum() / np.square(x.astype(np.float64)).sum()
    assert got["Q8_K"] == pytest.approx(want, rel=1e-4)
    assert got["F16"] < got["BF16"] < got["Q8_0"] < got["Q8_K"]
    assert "Q8_K" not in activation_errors(x[:, :96], w[:, :96])  # no 256-blocks in 96 channels
    sampled = activation_errors(x, np.tile(w, (3, 1)), max_rows=20)  # rows sampled, scaled up
    assert sampled["Q8_0"] == pytest.approx(3 * got["Q8_0"], rel=0.5)


def test_runner_products_round_by_each_weights_type(tmp_path):
    _, tensors = helpers.write_llama_dir(
        tmp_path / "l", helpers.llama_config(num_hidden_layers=2, tie_word_embeddings=False)
    )
    config = helpers.llama_config(num_hidden_layers=2, tie_word_embeddings=False)
    rng = np.random.default_rng(5)
    tensors = dict(tensors)
    tensors["lm_head.weight"] = rng.standard_normal(
        tensors["model.embed_tokens.weight"].shape
    ).astype(np.float32)
    ids = np.arange(12) % config["vocab_size"]
    plain = llama.LlamaRunner.from_tensors(tensors.__getitem__, config).logits(ids)
    runner = llama.LlamaRunner.from_tensors(tensors.__getitem__, config, lazy=True)
    with llama_cpp_rounding(runner, lambda name: None):
        assert np.array_equal(runner.logits(ids), plain)  # F32 everywhere: nothing rounded
    with llama_cpp_rounding(runner, lambda name: "Q8_0"):
        q8 = runner.logits(ids)
    assert np.array_equal(runner.logits(ids), plain)  # restored after
    assert llama.linear.__module__ == "cmf.runtime.llama"
    assert not np.allclose(q8, plain, rtol=1e-4, atol=1e-4)

    # only the head rounded: equal to the blocks in float32 and the head's input rounded
    def head_only(name):
        return "Q8_0" if name == "lm_head.weight" else None

    with llama_cpp_rounding(runner, head_only):
        got = runner.logits(ids)
    x = runner.embed[ids]
    cos, sin = llama.rope_cos_sin(np.arange(len(ids)), runner.inv_freq)
    for layer in runner.layers:
        x = llama.block(x, layer, runner.config, cos, sin)
    h = llama.rms_norm(x, runner.norm, runner.config.rms_norm_eps)
    np.testing.assert_array_equal(got, round_activations(h, "Q8_0") @ np.asarray(runner.lm_head).T)
