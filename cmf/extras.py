"""cmf's optional parts and the one way to name how to install them.

The distribution on the package index is ``cmf-container`` (the name ``cmf`` there is an
unrelated project); it installs the ``cmf`` package and the ``cmf`` command, as ``pyyaml``
installs ``yaml``. Every hint cmf prints is made here.
"""

from __future__ import annotations

DISTRIBUTION = "cmf-container"

EXTRAS = {  # extra -> what it brings (pyproject.toml's optional-dependencies)
    "run": "tokenizers and onnxruntime: cmf run, cmf eval, the planner's text models",
    "plan": "tokenizers and wordfreq: the planner's token-frequency prior",
    "gguf": "gguf-py: packing GGUF files",
    "onnx": "onnxruntime: running ONNX models",
    "dask": "dask.distributed: --executor dask",
    "report": "matplotlib: cmf report --png",
    "torch": "PyTorch: cmf.torch, packing pytorch_model.bin / .pt checkpoints",
    "transformers": "transformers and sentence-transformers: cmf.transformers",
}


def install_hint(extra: str) -> str:
    """``pip install 'cmf-container[EXTRA]'``, the command that brings ``extra``."""
    if extra not in EXTRAS:
        raise KeyError(f"no extra named {extra!r}")
    return f"pip install '{DISTRIBUTION}[{extra}]'"


__all__ = ["DISTRIBUTION", "EXTRAS", "install_hint"]
