"""Reference decoder: rebuild a model from a .cmf file (or its original) and run it.

* ``load_runner(path)``: an ONNX model (cmf.runtime.onnx_runner, onnxruntime or the ONNX
  reference evaluator), a BERT-family sentence encoder (cmf.runtime.bert, numpy) or a
  Llama-family decoder (cmf.runtime.llama, numpy), chosen from the model's metadata and config.
* ``evaluate(original, compressed, inputs=None)``: how far the outputs moved (cosine, max abs
  error, top-1 agreement; perplexity and KL divergence for decoders).

Text models need the ``tokenizers`` package (``pip install 'cmf-container[run]'``).
"""

from .evaluate import evaluate, sample_sentences
from .rebuild import Decoder, ModelSource, detect_kind, load_runner, open_model

__all__ = [
    "Decoder",
    "ModelSource",
    "detect_kind",
    "evaluate",
    "load_runner",
    "open_model",
    "sample_sentences",
]
