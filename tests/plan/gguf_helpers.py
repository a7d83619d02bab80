"""A tiny Llama Hugging Face directory whose rows take every GGML type (hidden 256, MLP 512)
with a byte-level BPE tokenizer the GGUF writer takes."""

from __future__ import annotations

import json
import os


def write_gguf_llama(path, **over) -> str:
    import torch
    import transformers

    from ..convert.test_hf_gguf import gpt2_tokenizer_json

    tok = gpt2_tokenizer_json()
    settings = dict(vocab_size=len(json.loads(tok)["model"]["vocab"]) + 3, hidden_size=256,
                    intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                    tie_word_embeddings=True)
    settings.update(over)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings))
    model.save_pretrained(path)
    with open(os.path.join(path, "tokenizer.json"), "w") as fh:
        fh.write(tok)
    return str(path)
