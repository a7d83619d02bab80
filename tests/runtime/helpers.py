"""Small models for the runtime tests: a tiny random BERT (Hugging Face names, a WordPiece
tokenizer.json built with ``tokenizers``, sentence-transformers module files) and an independent
implementation of the same encoder as an ONNX graph built with onnx.helper, run by onnxruntime.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from ..conftest import CliResult

WORDS = (
    "the a cat dog sat on mat ran fast slow red blue big small house tree river city night day "
    "light dark music plays loud quiet bird sings song over under near far old new happy sad"
).split()
PIECES = ["##s", "##ing", "##ed", "##er", "##ly"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXTS = [
    "the cat sat on the mat",
    "a dog ran fast",
    "the red bird sings a happy song over the old house",
    "music plays loud in the city at night",
    "big trees near the river",
    "the small blue house",
    "an unknown word appears",
    "dark",
]


def bert_config(**over) -> dict:
    config = {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "hidden_act": "gelu",
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "vocab_size": len(SPECIAL) + len(WORDS) + len(PIECES),
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }
    config.update(over)
    return config


def bert_tensors(config: dict, seed: int = 0, prefix: str = "") -> dict[str, np.ndarray]:
    """Random BERT weights under Hugging Face names (plus position_ids and a pooler, which the
    sentence encoder does not use)."""
    rng = np.random.default_rng(seed)
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]

    def w(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": w(v, d, scale=0.5),
        "embeddings.position_embeddings.weight": w(config["max_position_embeddings"], d, scale=0.2),
        "embeddings.token_type_embeddings.weight": w(config["type_vocab_size"], d, scale=0.2),
        "embeddings.LayerNorm.weight": 1 + w(d),
        "embeddings.LayerNorm.bias": w(d),
        "embeddings.position_ids": np.arange(config["max_position_embeddings"], dtype=np.int64)[
            None
        ],
        "pooler.dense.weight": w(d, d),
        "pooler.dense.bias": w(d),
    }
    for i in range(config["num_hidden_layers"]):
        L = f"encoder.layer.{i}."
        for name, (rows, cols) in {
            "attention.self.query": (d, d),
            "attention.self.key": (d, d),
            "attention.self.value": (d, d),
            "attention.output.dense": (d, d),
            "intermediate.dense": (f, d),
            "output.dense": (d, f),
        }.items():
            t[L + name + ".weight"] = w(rows, cols, scale=1 / math.sqrt(cols))
            t[L + name + ".bias"] = w(rows)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[L + name + ".weight"], t[L + name + ".bias"] = 1 + w(d), w(d)
    return {prefix + k: v for k, v in t.items()}


def wordpiece_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS + PIECES)}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok.to_str()


def write_bert_dir(
    path,
    config: dict | None = None,
    seed: int = 0,
    modules: bool = True,
    pooling: dict | None = None,
):
    """A Hugging Face model directory of a tiny BERT sentence encoder; returns (path, tensors)."""
    from safetensors.numpy import save_file

    config = config or bert_config()
    os.makedirs(path, exist_ok=True)
    tensors = bert_tensors(config, seed)
    save_file(tensors, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config, fh)
    with open(os.path.join(path, "tokenizer.json"), "w") as fh:
        fh.write(wordpiece_tokenizer_json())
    if modules:
        with open(os.path.join(path, "modules.json"), "w") as fh:
            json.dump(
                [
                    {
                        "idx": 0,
                        "name": "0",
                        "path": "",
                        "type": "sentence_transformers.models.Transformer",
                    },
                    {
                        "idx": 1,
                        "name": "1",
                        "path": "1_Pooling",
                        "type": "sentence_transformers.models.Pooling",
                    },
                    {
                        "idx": 2,
                        "name": "2",
                        "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize",
                    },
                ],
                fh,
            )
        os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
        with open(os.path.join(path, "1_Pooling", "config.json"), "w") as fh:
            json.dump(
                pooling
                or {
                    "word_embedding_dimension": config["hidden_size"],
                    "pooling_mode_mean_tokens": True,
                },
                fh,
            )
        with open(os.path.join(path, "sentence_bert_config.json"), "w") as fh:
            json.dump({"max_seq_length": 32, "do_lower_case": False}, fh)
    return path, tensors


# -- the same encoder as an ONNX graph (independent of cmf.runtime.bert) ---------------------------
def bert_onnx(tensors: dict[str, np.ndarray], config: dict, prefix: str = "") -> onnx.ModelProto:
    """BERT + masked mean pooling + L2 normalisation with ONNX operators (Erf GELU, opset 17
    LayerNormalization). Inputs input_ids, attention_mask, token_type_ids [b, s] int64; outputs
    last_hidden_state [b, s, d] and sentence_embedding [b, d]."""
    d, h = config["hidden_size"], config["num_attention_heads"]
    eps = config.get("layer_norm_eps", 1e-12)
    nodes, inits = [], []
    count = [0]

    def name(base: str) -> str:
        count[0] += 1
        return f"{base}_{count[0]}"

    def const(value, base="c") -> str:
        n = name(base)
        inits.append(nh.from_array(np.asarray(value), n))
        return n

    def op(kind, *inputs, **attrs) -> str:
        out = name(kind.lower())
        nodes.append(oh.make_node(kind, list(inputs), [out], **attrs))
        return out

    def weight(key: str, transpose: bool = False) -> str:
        array = tensors[prefix + key]
        return const(np.ascontiguousarray(array.T) if transpose else array, key)

    def dense(x, key):
        return op("Add", op("MatMul", x, weight(key + ".weight", True)), weight(key + ".bias"))

    def ln(x, key):
        return op(
            "LayerNormalization",
            x,
            weight(key + ".weight"),
            weight(key + ".bias"),
            axis=-1,
            epsilon=eps,
        )

    seq = op("Gather", op("Shape", "input_ids"), const(np.int64(1)), axis=0)
    positions = op("Range", const(np.int64(0)), seq, const(np.int64(1)))
    x = op(
        "Add",
        op(
            "Add",
            op("Gather", weight("embeddings.word_embeddings.weight"), "input_ids"),
            op("Gather", weight("embeddings.position_embeddings.weight"), positions),
        ),
        op("Gather", weight("embeddings.token_type_embeddings.weight"), "token_type_ids"),
    )
    x = ln(x, "embeddings.LayerNorm")
    maskf = op("Cast", "attention_mask", to=TP.FLOAT)
    bias = op(
        "Unsqueeze",
        op("Mul", op("Sub", const(np.float32(1)), maskf), const(np.float32(-1e9))),
        const(np.array([1, 2], np.int64)),
    )
    heads = const(np.array([0, 0, h, d // h], np.int64))
    for i in range(config["num_hidden_layers"]):
        L = f"encoder.layer.{i}."
        q = op(
            "Transpose",
            op("Reshape", dense(x, L + "attention.self.query"), heads),
            perm=[0, 2, 1, 3],
        )
        k = op(
            "Transpose", op("Reshape", dense(x, L + "attention.self.key"), heads), perm=[0, 2, 3, 1]
        )
        v = op(
            "Transpose",
            op("Reshape", dense(x, L + "attention.self.value"), heads),
            perm=[0, 2, 1, 3],
        )
        scores = op(
            "Add", op("Mul", op("MatMul", q, k), const(np.float32(1 / math.sqrt(d // h)))), bias
        )
        ctx = op("MatMul", op("Softmax", scores, axis=-1), v)
        ctx = op(
            "Reshape", op("Transpose", ctx, perm=[0, 2, 1, 3]), const(np.array([0, 0, d], np.int64))
        )
        x = ln(
            op("Add", x, dense(ctx, L + "attention.output.dense")), L + "attention.output.LayerNorm"
        )
        y = dense(x, L + "intermediate.dense")
        y = op(
            "Mul",
            op(
                "Mul",
                y,
                op(
                    "Add",
                    op("Erf", op("Div", y, const(np.float32(math.sqrt(2))))),
                    const(np.float32(1)),
                ),
            ),
            const(np.float32(0.5)),
        )
        x = ln(op("Add", x, dense(y, L + "output.dense")), L + "output.LayerNorm")
    nodes.append(oh.make_node("Identity", [x], ["last_hidden_state"]))
    m3 = op("Unsqueeze", maskf, const(np.array([2], np.int64)))
    axis1 = const(np.array([1], np.int64))
    total = op("ReduceSum", op("Mul", x, m3), axis1, keepdims=0)
    n = op("Max", op("ReduceSum", m3, axis1, keepdims=0), const(np.float32(1e-9)))
    mean = op("Div", total, n)
    norm = op(
        "Max", op("ReduceL2", mean, axes=[1], keepdims=1), const(np.float32(1e-12))
    )  # axes: an attribute before opset 18
    nodes.append(oh.make_node("Div", [mean, norm], ["sentence_embedding"]))
    ids = [
        oh.make_tensor_value_info(nm, TP.INT64, ["batch", "seq"])
        for nm in ("input_ids", "attention_mask", "token_type_ids")
    ]
    outs = [
        oh.make_tensor_value_info("last_hidden_state", TP.FLOAT, ["batch", "seq", d]),
        oh.make_tensor_value_info("sentence_embedding", TP.FLOAT, ["batch", d]),
    ]
    graph = oh.make_graph(nodes, "bert", ids, outs, initializer=inits)
    model = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8, producer_name="cmf-tests"
    )
    onnx.checker.check_model(model)
    return model


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def padded(encodings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids, mask, type ids [b, s] (right-padded with 0) of a list of tokenizers encodings."""
    s = max(len(e.ids) for e in encodings)
    ids, mask, types = (np.zeros((len(encodings), s), np.int64) for _ in range(3))
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)], types[row, : len(e.ids)], mask[row, : len(e.ids)] = (
            e.ids,
            e.type_ids,
            1,
        )
    return ids, mask, types


# -- the CLI in-process ----------------------------------------------------------------------------
@pytest.fixture
def cli(run):
    """``cli(*args)``: the shared in-process console entry point (tests/conftest.py ``run``)."""
    return run


def assert_one_error_line(r: CliResult, *fragments: str, code: int = 1) -> None:
    """One ``cmf: error:`` line holding every fragment, exit ``code`` (1: bad input, 2: usage)."""
    assert r.code == code, (r.code, r.out, r.err)
    assert r.err.startswith("cmf: error:") and r.err.count("\n") == 1, r.err
    for f in fragments:
        assert f in r.err, (f, r.err)


# -- small ONNX models -----------------------------------------------------------------------------
def mlp_onnx(seed: int = 0) -> onnx.ModelProto:
    """x [batch, 64] -> logits [batch, 10], probs: MatMul/Add/Relu with initializers, a Constant
    bias, and a weight big enough (64 x 128) for the q8 preset to quantize."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((64, 128)) / 8).astype(np.float32)
    b1 = (rng.standard_normal(128) / 10).astype(np.float32)
    w2 = (rng.standard_normal((128, 10)) / 11).astype(np.float32)
    b2 = (rng.standard_normal(32) / 10).astype(np.float32)[:10]
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h0"]),
        oh.make_node("Add", ["h0", "b1"], ["h1"]),
        oh.make_node("Relu", ["h1"], ["h2"]),
        oh.make_node("MatMul", ["h2", "w2"], ["h3"]),
        oh.make_node("Constant", [], ["b2"], value=nh.from_array(b2, "b2")),
        oh.make_node("Add", ["h3", "b2"], ["logits"]),
        oh.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        oh.make_node("ArgMax", ["logits"], ["label"], axis=-1, keepdims=0),
    ]
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", TP.FLOAT, ["batch", 64])],
        [
            oh.make_tensor_value_info("logits", TP.FLOAT, ["batch", 10]),
            oh.make_tensor_value_info("probs", TP.FLOAT, ["batch", 10]),
            oh.make_tensor_value_info("label", TP.INT64, ["batch"]),
        ],
        initializer=[nh.from_array(w1, "w1"), nh.from_array(b1, "b1"), nh.from_array(w2, "w2")],
    )
    model = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8, producer_name="cmf-tests"
    )
    onnx.checker.check_model(model)
    return model


def embed_onnx() -> onnx.ModelProto:
    """ids [batch, seq] int64 (a Gather into a 50-row table), mask [batch, seq] -> pooled
    [batch, 16]."""
    table = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    nodes = [
        oh.make_node("Gather", ["table", "ids"], ["e"]),
        oh.make_node("Cast", ["mask"], ["m"], to=TP.FLOAT),
        oh.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        oh.make_node("Mul", ["e", "m3"], ["em"]),
        oh.make_node("ReduceSum", ["em", "axis1"], ["pooled"], keepdims=0),
    ]
    graph = oh.make_graph(
        nodes,
        "embed",
        [
            oh.make_tensor_value_info("ids", TP.INT64, ["batch", "seq"]),
            oh.make_tensor_value_info("mask", TP.INT64, ["batch", "seq"]),
        ],
        [oh.make_tensor_value_info("pooled", TP.FLOAT, ["batch", 16])],
        initializer=[
            nh.from_array(table, "table"),
            nh.from_array(np.array([2], np.int64), "axis2"),
            nh.from_array(np.array([1], np.int64), "axis1"),
        ],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


# -- a tiny Llama (Hugging Face names) with a word-level tokenizer ---------------------------------
LLAMA_WORDS = ["<unk>", "<s>", "</s>"] + WORDS


def llama_config(**over) -> dict:
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": len(LLAMA_WORDS),
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config.update(over)
    return config


def write_llama_dir(path, config: dict | None = None, seed: int = 0):
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    config = config or llama_config()
    rng = np.random.default_rng(seed)
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = d // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * hd

    def w(*shape):
        return (rng.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32)

    t = {"model.embed_tokens.weight": w(v, d) * 4, "model.norm.weight": 1 + w(d) / 4}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update(
            {
                p + "self_attn.q_proj.weight": w(d, d),
                p + "self_attn.k_proj.weight": w(kv, d),
                p + "self_attn.v_proj.weight": w(kv, d),
                p + "self_attn.o_proj.weight": w(d, d),
                p + "mlp.gate_proj.weight": w(f, d),
                p + "mlp.up_proj.weight": w(f, d),
                p + "mlp.down_proj.weight": w(d, f),
                p + "input_layernorm.weight": 1 + w(d) / 4,
                p + "post_attention_layernorm.weight": 1 + w(d) / 4,
            }
        )
    os.makedirs(path, exist_ok=True)
    save_file(t, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config, fh)
    tok = Tokenizer(WordLevel({word: i for i, word in enumerate(LLAMA_WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(os.path.join(path, "tokenizer.json"))
    return path, t
