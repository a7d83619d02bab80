"""GGUF out for models packed from Hugging Face directories (cmf.convert.hf_gguf): tiny Llama,
Qwen2 and Mistral models written with transformers, packed, unpacked with ``-o x.gguf``; gguf-py
reads the file, transformers' GGUF loader gives the HF model's logits and its GGUF tokenizer the
HF tokenizer's ids; other models are refused with the reason."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from cmf.convert.hf_gguf import permute_qk  # noqa: E402
from cmf.runtime.llama import unpermute_qk  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def main():\n    return 42  # answer",
    "Grüße aus Köln, café naïve",
    "numbers 12345 and 3.14159",
    "    indented   spaces   here",
    "print('hello world')",
    "Привет мир 日本語",
] * 40
TEXTS = [
    "Hello  world 123",
    "Grüße aus Köln — naïve café 🙂 日本語",
    "def f(x):\n\tif x >= 10_000:\n        return x**2\n",
    "    lots     of   spaces\n\n  and\r\n tabs\t!",
    "3.14159 1234567",
    "<|im_start|>user\nhi<|im_end|>",
]


def gpt2_tokenizer_json() -> str:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=500,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return tk.to_str()


def spm_tokenizer_json() -> str:
    """SentencePiece-style BPE: <unk> <s> </s>, 256 byte tokens, learned pieces; BOS added."""
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
        ),
    )
    model = json.loads(tk.to_str())["model"]
    learned = [
        t
        for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])
        if t not in ("<unk>", "<s>", "</s>")
    ]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + learned
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    out = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=merges,
            unk_token="<unk>",
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    out.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    out.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    out.add_special_tokens(["<unk>", "<s>", "</s>"])
    out.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return out.to_str()


def write_model(path, kind, tokenizer_json, dtype="float32", **over):
    vocab = len(json.loads(tokenizer_json)["model"]["vocab"]) + 3
    classes = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
    }[kind]
    cfg = getattr(transformers, classes[0])(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        **over,
    )
    torch.manual_seed(0)
    model = getattr(transformers, classes[1])(cfg).to(getattr(torch, dtype))
    model.save_pretrained(path)
    with open(os.path.join(path, "tokenizer.json"), "w") as fh:
        fh.write(tokenizer_json)
    return str(path)


def to_gguf(run, hf_dir, tmp_path, name="model.gguf"):
    packed, out = tmp_path / "m.cmf", tmp_path / "out" / name
    assert run("pack", hf_dir, "-o", packed, "-q").code == 0
    r = run("unpack", packed, "-o", out, "-q")
    assert r.code == 0, r.err
    return str(out)


def assert_same_logits(hf_dir, gguf_path):
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    got = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), dtype=torch.float32, gguf_file=os.path.basename(gguf_path)
    )
    ids = torch.tensor([[1, 5, 30, 250, 77, 12, 9, 100]])
    with torch.no_grad():
        np.testing.assert_allclose(
            got(ids).logits.numpy(), ref(ids).logits.numpy(), rtol=0, atol=1e-6
        )


def assert_same_ids(hf_dir, gguf_path):
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(hf_dir, "tokenizer.json")
    )
    got = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path)
    )
    for text in TEXTS:
        assert got.encode(text) == ref.encode(text), text


@pytest.mark.parametrize(
    "kind, over",
    [
        ("llama", {"tie_word_embeddings": False}),
        ("qwen2", {"tie_word_embeddings": True}),
        ("mistral", {"tie_word_embeddings": False, "sliding_window": None}),
    ],
)
def test_llama_family_gguf_loads_with_the_same_logits_and_ids(run, tmp_path, kind, over):
    hf = write_model(tmp_path / kind, kind, gpt2_tokenizer_json(), **over)
    out = to_gguf(run, hf, tmp_path)
    r = gguf.GGUFReader(out)
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "blk.1.attn_q.weight", "output_norm.weight"} <= names
    assert ("output.weight" in names) == (not over["tie_word_embeddings"])
    assert r.fields["general.architecture"].contents() == ("qwen2" if kind == "qwen2" else "llama")
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert_same_logits(hf, out)
    assert_same_ids(hf, out)


def test_bf16_model_and_sentencepiece_tokenizer(run, tmp_path):
    hf = write_model(tmp_path / "spm", "llama", spm_tokenizer_json(), dtype="bfloat16")
    out = to_gguf(run, hf, tmp_path)
    r = gguf.GGUFReader(out)
    assert {t.tensor_type.name for t in r.tensors} == {"BF16"}
    assert r.fields["tokenizer.ggml.model"].contents() == "llama"
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert types[:5] == [2, 3, 3, 6, 6]
    assert_same_logits(hf, out)
    assert_same_ids(hf, out)


def test_permute_qk_is_llama_cpps_row_order():
    w = np.arange(2 * 8 * 3).reshape(16, 3)  # 2 heads of 8 rows
    p = permute_qk(w, 2)
    assert p[:8, 0].tolist() == [w[r, 0] for r in (0, 4, 1, 5, 2, 6, 3, 7)]
    np.testing.assert_array_equal(unpermute_qk(p, 2), w)
    np.testing.assert_array_equal(permute_qk(np.arange(16), 2)[8:], [8, 12, 9, 13, 10, 14, 11, 15])


def _refused(run, path, tmp_path, needle):
    r = run("unpack", path, "-o", tmp_path / "x.gguf")
    assert r.code == 2 and needle in r.err, r.err
    assert not os.path.exists(tmp_path / "x.gguf")


def test_other_models_are_refused(run, tmp_path):
    hf = write_model(
        tmp_path / "rope",
        "llama",
        gpt2_tokenizer_json(),
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    )
    packed = tmp_path / "rope.cmf"
    assert run("pack", hf, "-o", packed, "-q").code == 0
    _refused(run, packed, tmp_path, "rope scaling")
    cfg = json.load(open(os.path.join(hf, "config.json")))
    cfg["model_type"] = "bert"
    bert = tmp_path / "bert"
    bert.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        os.link(os.path.join(hf, name), bert / name)
    (bert / "config.json").write_text(json.dumps(cfg))
    assert run("pack", bert, "-o", tmp_path / "bert.cmf", "-q").code == 0
    _refused(run, tmp_path / "bert.cmf", tmp_path, "model_type 'bert'")
    os.unlink(bert / "tokenizer.json")
    cfg["model_type"] = "llama"
    (bert / "config.json").write_text(json.dumps(cfg))
    assert run("pack", bert, "-o", tmp_path / "notok.cmf", "-q").code == 0
    _refused(run, tmp_path / "notok.cmf", tmp_path, "no tokenizer.json")


@pytest.mark.parametrize("preset, block", [("q8", "Q8_0"), ("q4", "Q4_0")])
def test_quantized_presets_are_written_as_the_blocks_they_hold(run, tmp_path, preset, block):
    hf = write_model(tmp_path / "m", "llama", gpt2_tokenizer_json(), tie_word_embeddings=False)
    packed = tmp_path / "q.cmf"
    assert run("pack", hf, "-o", packed, "--preset", preset, "-q").code == 0
    out = tmp_path / "out" / "q.gguf"
    assert run("unpack", packed, "-o", out, "-q").code == 0
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_q.weight"] == block and types["blk.0.attn_norm.weight"] == "F32"
    decoded = tmp_path / "decoded"
    assert (
        run("unpack", packed, "-o", f"{decoded}/", "-q").code == 0
    )  # the same values as safetensors
    assert_same_logits(str(decoded), str(out))


REAL_HF = "/work/models/smollm2-hf"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(REAL_HF), reason="the real SmolLM2 directory is not here")
def test_real_smollm2_directory(run, tmp_path):
    out = to_gguf(run, REAL_HF, tmp_path, "smol.gguf")
    assert_same_logits(REAL_HF, out)
    assert_same_ids(REAL_HF, out)


def test_llama_attention_biases_are_permuted_like_their_rows(run, tmp_path):
    """transformers' GGUF loader drops Llama attention biases (no attention_bias in its config),
    so the GGUF is checked through cmf's own GGUF runner, which undoes llama.cpp's row order."""
    from safetensors.torch import load_file, save_file

    from cmf.runtime.rebuild import load_runner

    hf = write_model(
        tmp_path / "b",
        "llama",
        gpt2_tokenizer_json(),
        attention_bias=True,
        tie_word_embeddings=False,
    )
    weights = load_file(os.path.join(hf, "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    for name in [n for n in weights if n.endswith(".bias")]:
        weights[name] = torch.randn(weights[name].shape, generator=gen)
    save_file(weights, os.path.join(hf, "model.safetensors"), metadata={"format": "pt"})
    out = to_gguf(run, hf, tmp_path)
    assert run("pack", out, "-o", tmp_path / "g.cmf", "-q").code == 0
    ids = [1, 5, 30, 250, 77, 12, 9, 100]
    got = load_runner(str(tmp_path / "g.cmf")).logits(ids)
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
