"""A tiny Llama Hugging Face directory whose rows take every GGML type (hidden 256, MLP 512)
with a byte-level BPE tokenizer the GGUF writer takes (weights written with numpy: fast)."""

from __future__ import annotations

import json
import os


def write_gguf_llama(path, **over) -> str:
    from ..convert.test_hf_gguf import gpt2_tokenizer_json
    from ..runtime.helpers import llama_config, write_llama_dir

    tok = gpt2_tokenizer_json()
    settings = dict(
        vocab_size=len(json.loads(tok)["model"]["vocab"]) + 3,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    settings.update(over)
    write_llama_dir(path, llama_config(**settings))
    with open(os.path.join(path, "tokenizer.json"), "w") as fh:
        fh.write(tok)
    return str(path)
