"""Regenerate examples/tiny.safetensors: a tiny BERT-shaped model with random weights.

Several dtypes (f32, bf16, f16, i64) and one tied weight, so `cmf pack` shows every path.
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file


def main(
    path: str = os.path.join(os.path.dirname(__file__), "..", "examples", "tiny.safetensors"),
) -> None:
    rng = np.random.default_rng(1234)
    emb = (rng.standard_normal((512, 64)) * 0.05).astype(np.float32)
    tensors = {
        "embeddings.word_embeddings.weight": emb,
        "embeddings.position_embeddings.weight": (rng.standard_normal((64, 64)) * 0.02).astype(
            np.float32
        ),
        "embeddings.LayerNorm.weight": np.ones(64, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(64, np.float32),
        "encoder.layer.0.attention.self.query.weight": (
            rng.standard_normal((64, 64)) * 0.05
        ).astype(np.float32),
        "encoder.layer.0.attention.self.query.bias": (rng.standard_normal(64) * 0.01).astype(
            np.float32
        ),
        "encoder.layer.0.intermediate.dense.weight": (rng.standard_normal((256, 64)) * 0.05).astype(
            ml_dtypes.bfloat16
        ),
        "encoder.layer.0.output.dense.weight": (rng.standard_normal((64, 256)) * 0.05).astype(
            np.float16
        ),
        "lm_head.weight": emb.copy(),
        "position_ids": np.arange(64, dtype=np.int64)[None, :],
    }
    save_file(tensors, path, metadata={"format": "pt", "source": "cmf examples (random weights)"})


if __name__ == "__main__":
    main()
