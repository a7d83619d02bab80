"""The Llama-family runner against independent implementations.

Always: a deliberately naive float64 reference written here (one position at a time, one head at
a time, rotary as explicit 2x2 rotations of (x[j], x[j + hd/2])). With the dev extra (torch and
transformers): transformers' own LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM. With
gguf-py: tiny models written as llama.cpp writes them (names, metadata, q/k rows permuted).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import cmf
from cmf.errors import CmfError, UnsupportedError
from cmf.runtime.llama import (
    SUPPORTED_MODEL_TYPES,
    LlamaRunner,
    from_gguf_metadata,
    gguf_name_map,
    gguf_tensor_getter,
    hf_to_gguf_name,
    unpermute_qk,
)

BASE = {
    "model_type": "llama",
    "vocab_size": 100,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
CONFIGS = {
    "llama": BASE,
    "llama-tied": {**BASE, "tie_word_embeddings": True},
    "llama-biases": {**BASE, "attention_bias": True, "mlp_bias": True},
    "llama-linear-rope": {**BASE, "rope_scaling": {"type": "linear", "factor": 2.0}},
    "llama3-rope-v5": {  # transformers >= 5 writes theta and scaling as rope_parameters
        **{k: v for k, v in BASE.items() if k != "rope_theta"},
        "tie_word_embeddings": True,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    },
    "qwen2": {**BASE, "model_type": "qwen2", "tie_word_embeddings": True, "rms_norm_eps": 1e-6},
    "mistral-window": {
        **BASE,
        "model_type": "mistral",
        "sliding_window": 5,
        "num_key_value_heads": 1,
    },
}
IDS = [3, 17, 99, 0, 42, 42, 8, 61, 5, 23, 77, 1, 64, 30]


def dims(cfg: dict) -> tuple[int, int, int, int, int, int]:
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    return (
        d,
        cfg["intermediate_size"],
        heads,
        cfg["num_key_value_heads"],
        d // heads,
        cfg["vocab_size"],
    )


def random_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named float32 weights; norms near 1, biases present where the architecture has them."""
    rng = np.random.default_rng(seed)
    d, ff, H, K, hd, V = dims(cfg)
    qkv_bias = cfg["model_type"] == "qwen2" or cfg.get("attention_bias", False)

    def mat(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1 + 0.5 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(V, d), "model.norm.weight": norm(d)}
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(V, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(d)
        w[p + "post_attention_layernorm.weight"] = norm(d)
        for name, rows in (("q", H * hd), ("k", K * hd), ("v", K * hd)):
            w[p + f"self_attn.{name}_proj.weight"] = mat(rows, d)
            if qkv_bias:
                w[p + f"self_attn.{name}_proj.bias"] = mat(rows)
        w[p + "self_attn.o_proj.weight"] = mat(d, H * hd)
        w[p + "mlp.gate_proj.weight"] = mat(ff, d)
        w[p + "mlp.up_proj.weight"] = mat(ff, d)
        w[p + "mlp.down_proj.weight"] = mat(d, ff)
        if cfg.get("attention_bias") and cfg["model_type"] == "llama":
            w[p + "self_attn.o_proj.bias"] = mat(d)
        if cfg.get("mlp_bias"):
            for name, n in (("gate", ff), ("up", ff), ("down", d)):
                w[p + f"mlp.{name}_proj.bias"] = mat(n)
    return w


# ------------------------------------------------------------------ the naive float64 reference


def naive_frequencies(cfg: dict, hd: int) -> list[float]:
    params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    out = []
    for j in range(hd // 2):
        f = theta ** (-2.0 * j / hd)
        if kind == "linear":
            f /= scaling["factor"]
        elif kind == "llama3":  # Meta's reference apply_scaling, one frequency at a time
            ctx, lo, hi = (
                scaling["original_max_position_embeddings"],
                scaling["low_freq_factor"],
                scaling["high_freq_factor"],
            )
            wavelen = 2 * math.pi / f
            if wavelen > ctx / lo:
                f /= scaling["factor"]
            elif wavelen >= ctx / hi:
                s = (ctx / wavelen - lo) / (hi - lo)
                f = (1 - s) * f / scaling["factor"] + s * f
        out.append(f)
    return out


def naive_logits(cfg: dict, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    _, _, H, K, hd, _ = dims(cfg)
    eps = cfg["rms_norm_eps"]
    window = cfg.get("sliding_window") if cfg["model_type"] == "mistral" else None
    freqs = naive_frequencies(cfg, hd)
    W = {k: v.astype(np.float64) for k, v in w.items()}
    zero = np.zeros(1)

    def rms(x, g):
        return x / math.sqrt(sum(v * v for v in x) / len(x) + eps) * g

    def rotate(vec, pos):  # one head [hd]: pair (j, j + hd/2) turned by pos * freq_j
        out = vec.copy()
        for j, f in enumerate(freqs):
            c, s = math.cos(pos * f), math.sin(pos * f)
            a, b = vec[j], vec[j + hd // 2]
            out[j], out[j + hd // 2] = a * c - b * s, a * s + b * c
        return out

    xs = [W["model.embed_tokens.weight"][t] for t in ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        keys, values, queries = [], [], []
        for pos, x in enumerate(xs):
            h = rms(x, W[p + "input_layernorm.weight"])
            proj = {
                n: W[p + f"self_attn.{n}_proj.weight"] @ h
                + W.get(p + f"self_attn.{n}_proj.bias", zero)
                for n in "qkv"
            }
            queries.append([rotate(proj["q"][j * hd : (j + 1) * hd], pos) for j in range(H)])
            keys.append([rotate(proj["k"][j * hd : (j + 1) * hd], pos) for j in range(K)])
            values.append([proj["v"][j * hd : (j + 1) * hd] for j in range(K)])
        new = []
        for pos, x in enumerate(xs):
            heads = []
            for j in range(H):
                kv = j // (H // K)
                seen = [s for s in range(pos + 1) if window is None or pos - s < window]
                scores = [float(queries[pos][j] @ keys[s][kv]) / math.sqrt(hd) for s in seen]
                top = max(scores)
                weights = [math.exp(z - top) for z in scores]
                total = sum(weights)
                heads.append(
                    sum(wt / total * values[s][kv] for wt, s in zip(weights, seen, strict=True))
                )
            x = (
                x
                + W[p + "self_attn.o_proj.weight"] @ np.concatenate(heads)
                + W.get(p + "self_attn.o_proj.bias", zero)
            )
            h = rms(x, W[p + "post_attention_layernorm.weight"])
            gate = W[p + "mlp.gate_proj.weight"] @ h + W.get(p + "mlp.gate_proj.bias", zero)
            up = W[p + "mlp.up_proj.weight"] @ h + W.get(p + "mlp.up_proj.bias", zero)
            act = np.array([g / (1 + math.exp(-g)) for g in gate]) * up
            new.append(
                x + W[p + "mlp.down_proj.weight"] @ act + W.get(p + "mlp.down_proj.bias", zero)
            )
        xs = new
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return np.stack([head @ rms(x, W["model.norm.weight"]) for x in xs])


# -------------------------------------------------------------------------------- always-run


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    cfg = CONFIGS[request.param]
    w = random_weights(cfg, seed=len(request.param))
    return cfg, w, LlamaRunner.from_tensors(w.__getitem__, cfg), naive_logits(cfg, w, IDS)


def test_logits_match_naive_reference(case):
    cfg, _, runner, expected = case
    got = runner.logits(IDS)
    assert got.dtype == np.float32 and got.shape == (len(IDS), cfg["vocab_size"])
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=0)


def test_kv_cache_matches_whole_sequence(case):
    _, _, runner, expected = case
    cache = runner.new_cache()
    rows = [runner.next_logits(IDS[:5], cache)]
    rows += [runner.next_logits([t], cache) for t in IDS[5:]]
    assert cache.length == len(IDS)
    np.testing.assert_allclose(np.stack(rows), expected[4:], atol=2e-4, rtol=0)
    np.testing.assert_allclose(runner.next_logits(IDS), expected[-1], atol=2e-4, rtol=0)


def test_generate_is_greedy(case):
    cfg, w, runner, _ = case
    out = runner.generate(IDS[:4], 5)
    seq = list(IDS[:4])
    for _ in range(5):
        seq.append(int(np.argmax(naive_logits(cfg, w, seq)[-1])))
    assert out == seq[4:]
    assert runner.generate(IDS[:4], 5, eos_token_id=out[1]) == out[: out.index(out[1]) + 1]
    assert runner.generate(IDS[:4], 5, eos_token_id=[out[2], 10**6])[-1] == out[2]
    assert runner.generate(IDS[:4], 0) == []


def test_perplexity(case):
    _, _, runner, expected = case
    lp = expected - expected.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    want = math.exp(-np.mean([lp[i, IDS[i + 1]] for i in range(len(IDS) - 1)]))
    assert runner.perplexity(IDS) == pytest.approx(want, rel=1e-4)
    chunked = np.exp(-np.mean(runner.token_logprobs(IDS, chunk=3)))
    assert chunked == pytest.approx(want, rel=1e-4)


def test_lazy_runner_loads_the_vocabulary_matrices_only_when_used(case):
    """A lazy runner (the planner's) reads the embedding and the head on each use and keeps
    neither: building it, or taking one block, reads no vocabulary-sized matrix."""
    cfg, w, _, expected = case
    reads: list[str] = []

    def get(name: str) -> np.ndarray:
        reads.append(name)
        return w[name]

    runner = LlamaRunner.from_tensors(get, cfg, lazy=True)
    vocab = ("model.embed_tokens.weight", "lm_head.weight")
    _ = runner.layers[1]
    assert not any(n in vocab for n in reads)
    assert runner.vocab_size == cfg["vocab_size"]
    assert (runner.lm_head is runner.embed) == bool(cfg.get("tie_word_embeddings"))
    np.testing.assert_allclose(runner.logits(IDS), expected, atol=2e-4, rtol=0)
    assert "model.embed_tokens.weight" in reads
    assert ("lm_head.weight" in reads) != bool(cfg.get("tie_word_embeddings"))
    np.testing.assert_array_equal(runner.embed[[3, 1]], w["model.embed_tokens.weight"][[3, 1]])


def test_lazy_runner_reports_a_missing_head_when_it_is_used():
    w = random_weights(BASE)
    untied = {k: v for k, v in w.items() if k != "lm_head.weight"}
    runner = LlamaRunner.from_tensors(untied.__getitem__, BASE, lazy=True)
    with pytest.raises(CmfError, match="lm_head.*tie_word_embeddings is false"):
        runner.logits(IDS)


def test_bf16_weights_and_supported_types():
    import ml_dtypes

    assert {"llama", "qwen2", "mistral"} <= set(SUPPORTED_MODEL_TYPES)
    w = random_weights(BASE)
    half = {k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}
    expected = LlamaRunner.from_tensors(
        {k: v.astype(np.float32) for k, v in half.items()}.__getitem__, BASE
    ).logits(IDS)
    np.testing.assert_array_equal(
        LlamaRunner.from_tensors(half.__getitem__, BASE).logits(IDS), expected
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn'"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope scaling type 'dynamic'"),
        ({"rope_scaling": {"type": "linear"}}, "positive 'factor'"),
        (
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 4.0,
                    "high_freq_factor": 4.0,
                }
            },
            "low_freq_factor",
        ),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"num_hidden_layers": "2"}, "num_hidden_layers"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ],
)
def test_config_errors(change, message):
    with pytest.raises(CmfError, match=message):
        LlamaRunner.from_tensors(random_weights(BASE).__getitem__, {**BASE, **change})


def test_unsupported_rope_is_unsupported_error():
    with pytest.raises(UnsupportedError):
        LlamaRunner.from_tensors(
            random_weights(BASE).__getitem__,
            {**BASE, "rope_scaling": {"rope_type": "longrope", "factor": 2.0}},
        )


def test_tensor_errors():
    w = random_weights(BASE)
    missing = {k: v for k, v in w.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(CmfError, match="up_proj"):
        LlamaRunner.from_tensors(missing.__getitem__, BASE)
    with pytest.raises(CmfError, match="lm_head"):
        LlamaRunner.from_tensors(
            {k: v for k, v in w.items() if k != "lm_head.weight"}.__getitem__, BASE
        )
    with pytest.raises(CmfError, match=r"expected shape \(32, 64\)"):
        LlamaRunner.from_tensors(
            {
                **w,
                "model.layers.0.self_attn.k_proj.weight": np.zeros((33, 64), np.float32),
            }.__getitem__,
            BASE,
        )
    with pytest.raises(CmfError, match="floating-point"):
        LlamaRunner.from_tensors(
            {**w, "model.norm.weight": np.ones(64, np.int32)}.__getitem__, BASE
        )
    with pytest.raises(CmfError, match=r"expected shape \(101, 64\)"):
        LlamaRunner.from_tensors(w.__getitem__, {**BASE, "vocab_size": 101})
    runner = LlamaRunner.from_tensors(w.__getitem__, BASE)
    for bad in ([], [100], [-1], [[1, 2]], ["a"]):
        with pytest.raises(CmfError, match="token ids"):
            runner.logits(bad)
    with pytest.raises(CmfError, match="at least 2"):
        runner.perplexity([5])


# ---------------------------------------------------------------------- transformers (dev extra)


@pytest.mark.parametrize(
    "name", ["llama", "llama-tied", "llama-biases", "llama3-rope-v5", "qwen2", "mistral-window"]
)
def test_logits_match_transformers(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = CONFIGS[name]
    classes = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[cfg["model_type"]]
    kwargs = {k: v for k, v in cfg.items() if k not in ("model_type", "rope_parameters")}
    if "rope_parameters" in cfg:
        kwargs["rope_scaling"] = {
            k: v for k, v in cfg["rope_parameters"].items() if k != "rope_theta"
        }
        kwargs["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    hf_config = getattr(transformers, classes + "Config")(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, classes + "ForCausalLM")(hf_config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():  # default init leaves biases 0, norms 1
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in pname else 0.0))
        expected = model(torch.tensor([IDS])).logits[0].float().numpy()
    weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    config = json.loads(hf_config.to_json_string())  # what config.json holds
    runner = LlamaRunner.from_tensors(weights.__getitem__, config)
    np.testing.assert_allclose(runner.logits(IDS), expected, atol=1e-4, rtol=0)
    with torch.no_grad():
        prompt = torch.tensor([IDS[:6]])  # token 0 is in there: say it is not padding
        hf_out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False
        )
    assert runner.generate(IDS[:6], 6) == hf_out[0, 6:].tolist()


# ------------------------------------------------------------------------------ GGUF imports

GGUF_NAMES = {  # written out here independently of the runner's table
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
GGUF_BLOCK = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def to_gguf_name(name: str) -> str:
    if name in GGUF_NAMES:
        return GGUF_NAMES[name]
    _, _, i, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{GGUF_BLOCK[module]}.{kind}"


def llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter order: within each head, row 2i + j takes HF row j * hd/2 + i."""
    hd = w.shape[0] // n_heads
    order = [
        h * hd + j * (hd // 2) + i for h in range(n_heads) for i in range(hd // 2) for j in range(2)
    ]
    return w[order]


def write_gguf(path, cfg: dict, w: dict[str, np.ndarray], *, q8: bool = False) -> None:
    gguf = pytest.importorskip("gguf")
    arch = cfg["model_type"]
    d, ff, H, K, hd, V = dims(cfg)
    out = gguf.GGUFWriter(str(path), arch)
    out.add_name("tiny")
    out.add_context_length(256)
    out.add_embedding_length(d)
    out.add_block_count(cfg["num_hidden_layers"])
    out.add_feed_forward_length(ff)
    out.add_rope_dimension_count(hd)
    out.add_head_count(H)
    out.add_head_count_kv(K)
    out.add_rope_freq_base(cfg["rope_theta"])
    out.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    out.add_vocab_size(V)
    out.add_file_type(7 if q8 else 0)
    out.add_tokenizer_model("gpt2")
    out.add_token_list([f"tok{i}" for i in range(V)])
    out.add_bos_token_id(1)
    out.add_eos_token_id(2)
    for name, array in w.items():
        if arch == "llama" and ".q_proj." in name:
            array = llamacpp_permute(array, H)
        elif arch == "llama" and ".k_proj." in name:
            array = llamacpp_permute(array, K)
        if q8 and array.ndim == 2:
            out.add_tensor(
                to_gguf_name(name),
                gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            out.add_tensor(to_gguf_name(name), array)
    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.write_tensors_to_file()
    out.close()


def pack_gguf(gguf_path, cmf_path) -> None:
    from cmf.convert.gguf import GGUFSource
    from cmf.encoded import Encoded
    from cmf.writer import Writer

    src = GGUFSource(gguf_path)
    with Writer(cmf_path, metadata=src.metadata) as out:
        for name, value in src.items():
            if isinstance(value, Encoded):  # Q8_0 blocks kept exactly, as `cmf pack` does
                out.add_encoded(name, value.spec, value.pending)
            else:
                out.add_tensor(name, value)


@pytest.mark.parametrize("name", ["llama", "llama-tied", "qwen2"])
def test_gguf_round_trip(tmp_path, name):
    cfg = CONFIGS[name]
    w = random_weights(cfg, seed=7)
    write_gguf(tmp_path / "m.gguf", cfg, w)
    pack_gguf(tmp_path / "m.gguf", tmp_path / "m.cmf")
    expected = LlamaRunner.from_tensors(w.__getitem__, cfg).logits(IDS)
    with cmf.open(tmp_path / "m.cmf") as f:
        meta = f.metadata()
        config = from_gguf_metadata(meta)
        assert config["model_type"] == cfg["model_type"]
        assert config["tie_word_embeddings"] == cfg["tie_word_embeddings"]
        assert (config["num_key_value_heads"], config["head_dim"], config["vocab_size"]) == (
            2,
            16,
            100,
        )
        assert config["rope_theta"] == 500.0 and config["rms_norm_eps"] == pytest.approx(
            cfg["rms_norm_eps"]
        )
        assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
        names = gguf_name_map(f.keys())
        assert sorted(names.values()) == sorted(w) and all(
            hf_to_gguf_name(v) == k for k, v in names.items()
        )
        runner = LlamaRunner.from_gguf(f.get_tensor, meta)
        np.testing.assert_allclose(runner.logits(IDS), expected, atol=1e-5, rtol=0)
        # the same through the pieces: config + renaming getter
        again = LlamaRunner.from_tensors(gguf_tensor_getter(f.get_tensor, meta), config)
        np.testing.assert_array_equal(again.logits(IDS), runner.logits(IDS))
        if cfg["model_type"] == "llama":  # the un-permutation matters
            raw = LlamaRunner.from_tensors(lambda n: f.get_tensor(hf_to_gguf_name(n)), config)
            assert np.abs(raw.logits(IDS) - expected).max() > 0.1


def test_gguf_q8_0_round_trip(tmp_path):
    gguf = pytest.importorskip("gguf")
    q8 = gguf.GGMLQuantizationType.Q8_0
    cfg = CONFIGS["llama"]
    w = random_weights(cfg, seed=3)
    write_gguf(tmp_path / "m.gguf", cfg, w, q8=True)
    pack_gguf(tmp_path / "m.gguf", tmp_path / "m.cmf")
    # a row permutation commutes with row-block quantization: expected = HF rows, quantized
    dq = {
        k: gguf.quants.dequantize(gguf.quants.quantize(v, q8), q8) if v.ndim == 2 else v
        for k, v in w.items()
    }
    expected = LlamaRunner.from_tensors(dq.__getitem__, cfg).logits(IDS)
    with cmf.open(tmp_path / "m.cmf") as f:
        got = LlamaRunner.from_gguf(f.get_tensor, f.metadata()).logits(IDS)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_unpermute_inverts_llamacpp_permute():
    w = np.random.default_rng(0).standard_normal((48, 5)).astype(np.float32)
    for heads in (1, 3, 6):
        np.testing.assert_array_equal(unpermute_qk(llamacpp_permute(w, heads), heads), w)
    b = np.arange(48.0)
    np.testing.assert_array_equal(unpermute_qk(llamacpp_permute(b, 4), 4), b)
    with pytest.raises(CmfError):
        unpermute_qk(w, 5)


def test_gguf_metadata_errors_and_rope_scaling():
    meta = {
        "gguf.general.architecture": "llama",
        "gguf.llama.embedding_length": 64,
        "gguf.llama.attention.head_count": 4,
        "gguf.llama.attention.head_count_kv": [2, 2],
        "gguf.llama.block_count": 2,
        "gguf.llama.feed_forward_length": 96,
        "gguf.llama.rope.scaling.type": "linear",
        "gguf.llama.rope.scaling.factor": 4.0,
        "cmf.gguf.tensor_types": {"token_embd.weight": "F32"},
    }
    config = from_gguf_metadata(meta)
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is True
    with pytest.raises(UnsupportedError, match="yarn"):
        LlamaRunner.from_tensors(
            {}.__getitem__, {**config, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
        )
    with pytest.raises(UnsupportedError, match="architecture 'gpt2'"):
        from_gguf_metadata({**meta, "gguf.general.architecture": "gpt2"})
    with pytest.raises(UnsupportedError, match="per-layer"):
        from_gguf_metadata({**meta, "gguf.llama.attention.head_count_kv": [2, 4]})
    with pytest.raises(UnsupportedError, match="rope sizes"):
        from_gguf_metadata({**meta, "gguf.llama.rope.dimension_count": 8})
    with pytest.raises(CmfError, match="embedding_length"):
        from_gguf_metadata({k: v for k, v in meta.items() if k != "gguf.llama.embedding_length"})


# ------------------------------------------------------------------------------------ the bench


def test_bench_llama_smoke(tmp_path, capsys):
    from tools import bench_llama

    report = bench_llama.main(
        [
            "--layers",
            "1",
            "--hidden",
            "64",
            "--vocab",
            "64",
            "--prompt",
            "8",
            "--gen",
            "4",
            "--eval-len",
            "24",
            "--repeat",
            "1",
            "--in-process",
            "--out",
            str(tmp_path),
        ]
    )
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == ["safetensors f32", "cmf lossless", "cmf q8", "cmf q4"]
    assert (
        rows["cmf lossless"]["mean_kl"] == 0
        and rows["cmf lossless"]["perplexity"] == rows["safetensors f32"]["perplexity"]
    )
    assert (
        rows["cmf q4"]["file_bytes"]
        < rows["cmf q8"]["file_bytes"]
        < rows["cmf lossless"]["file_bytes"]
    )
    assert all(
        r["prompt_tok_s"] > 0 and r["gen_tok_s"] > 0 and r["peak_rss"] > 0 for r in rows.values()
    )
    assert "| cmf q4 |" in capsys.readouterr().out
