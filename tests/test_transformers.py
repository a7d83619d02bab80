"""cmf.transformers (issue 18): tiny random BERT and Llama models saved by transformers, packed
by ``cmf pack dir/``, rebuilt from the .cmf with outputs equal to transformers loading the
directory; tokenizer and sentence-transformers from the attachments; bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import cmf  # noqa: E402
import cmf.torch as ct  # noqa: E402
import cmf.transformers as ctf  # noqa: E402
from cmf import cli  # noqa: E402

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
] + "the a cat dog sat on mat hello world is big small red blue".split()


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def pack(src, out) -> None:
    cli.run(["pack", str(src), "-o", str(out), "--quiet"])


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny random BertModel saved with its tokenizer, and its .cmf."""
    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=len(WORDS),
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(root / "dir", safe_serialization=True)
    tiny_tokenizer().save_pretrained(root / "dir")
    pack(root / "dir/", root / "bert.cmf")
    return root


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random LlamaForCausalLM with tied embeddings (lm_head.weight is not saved)."""
    root = tmp_path_factory.mktemp("llama")
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(root / "dir", safe_serialization=True)
    pack(root / "dir/", root / "llama.cmf")
    return root


def test_bert_outputs_equal_transformers_loading_the_directory(bert):
    ref = transformers.AutoModel.from_pretrained(bert / "dir").eval()
    got = ctf.from_pretrained(bert / "bert.cmf")
    assert type(got) is type(ref) and not got.training
    ids = torch.randint(0, len(WORDS), (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(got(ids).last_hidden_state, ref(ids).last_hidden_state)
    assert all(p.device.type == "cpu" for p in got.parameters())


def test_llama_tied_weights_retied_and_logits_equal(llama):
    assert "lm_head.weight" not in cmf.open(llama / "llama.cmf").keys()
    ref = transformers.AutoModelForCausalLM.from_pretrained(llama / "dir").eval()
    got = ctf.from_pretrained(llama / "llama.cmf", transformers.AutoModelForCausalLM)
    assert got.lm_head.weight is got.model.embed_tokens.weight
    ids = torch.randint(0, 100, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(got(ids).logits, ref(ids).logits)
    half = ctf.from_pretrained(llama / "llama.cmf", dtype=torch.bfloat16)
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    assert half.model.embed_tokens.weight.device.type == "cpu"
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(
            half(ids).logits.float().flatten(), ref(ids).logits.flatten(), dim=0
        )
    assert cos > 0.99


def test_lossy_and_sharded_files_load(llama, tmp_path):
    out = tmp_path / "sharded" / "model.cmf"
    cli.run(
        [
            "pack",
            str(llama / "dir/"),
            "--shard-size",
            "20KB",
            "--preset",
            "q8",
            "--quiet",
            "-o",
            str(out),
        ]
    )
    index = tmp_path / "sharded" / "model.cmf.index.json"
    assert index.exists()
    got = ctf.from_pretrained(index)
    ref = transformers.AutoModelForCausalLM.from_pretrained(llama / "dir").eval()
    state = ct.load_file(index)
    assert got.model.layers[0].mlp.up_proj.weight.data_ptr() != 0
    assert torch.equal(
        got.model.layers[1].mlp.down_proj.weight, state["model.layers.1.mlp.down_proj.weight"]
    )
    ids = torch.arange(10).reshape(1, 10)
    with torch.no_grad():
        a, b = got(ids).logits.flatten(), ref(ids).logits.flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999


def test_tokenizer_from_the_attachments(bert):
    tok = ctf.tokenizer(bert / "bert.cmf")
    text = "Hello world the big red cat sat"
    ids = tok(text)["input_ids"]
    assert ids == tiny_tokenizer()(text)["input_ids"]
    assert ids == [WORDS.index(w) for w in text.lower().split()]  # real words, no [UNK]


def test_sentence_transformer_embeddings_equal(bert, tmp_path):
    st_mod = pytest.importorskip("sentence_transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers.models import Normalize, Pooling, Transformer
    modules = [Transformer(str(bert / "dir"), max_seq_length=32), Pooling(32, "mean"), Normalize()]
    st_mod.SentenceTransformer(modules=modules, device="cpu").save(str(tmp_path / "st"))
    pack(tmp_path / "st/", tmp_path / "st.cmf")
    ref = st_mod.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    got = ctf.sentence_transformer(tmp_path / "st.cmf")
    texts = ["hello world", "the small blue dog is on the mat"]
    a, b = ref.encode(texts), got.encode(texts)
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)  # Normalize kept
    assert [type(m).__name__ for m in got] == ["Transformer", "Pooling", "Normalize"]


def test_no_config_is_a_clear_error(tmp_path):
    path = tmp_path / "bare.cmf"
    ct.save_file({"w": torch.zeros(2, 2)}, path)
    with pytest.raises(cmf.CmfError, match=r"no config.json attachment.*--attach config.json"):
        ctf.from_pretrained(path)
    with pytest.raises(cmf.CmfError, match="no tokenizer attachments"):
        ctf.tokenizer(path)


def test_unknown_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "odd.cmf"
    config = (
        b'{"model_type": "bert", "architectures": ["NoSuchModelForAnything"], '
        b'"hidden_size": 32, "num_attention_heads": 4}'
    )
    ct.save_file({"w": torch.zeros(2)}, path, attachments={"config.json": config})
    with pytest.raises(cmf.CmfError, match="'NoSuchModelForAnything'.*not known to transformers"):
        ctf.from_pretrained(path)


def test_side_file_names_are_checked_again():  # the index refuses them already
    assert ctf._safe_name("1_Pooling/config.json") and ctf._safe_name("tokenizer.json")
    for name in ("../x", "/etc/passwd", "a//b", "a/./b", "a\\b", ""):
        assert not ctf._safe_name(name), name
