"""Codecs: one module each, registered by name. Importing this package registers them all."""

# Each import registers one codec (side effect); one line per module.
from . import (
    bitpack,  # noqa: F401
    byteplanes,  # noqa: F401
    codebook,  # noqa: F401
    ggml_codec,  # noqa: F401
    huffman,  # noqa: F401
    lowrank,  # noqa: F401
    outlier,  # noqa: F401
    partition,  # noqa: F401
    quantize,  # noqa: F401
    raw,  # noqa: F401
    sparse,  # noqa: F401
    zstd,  # noqa: F401
)
from .base import ArraySpec, BytesSpec, Codec, Spec, Value
from .registry import codec_class, codec_from_config, register, registered

__all__ = [
    "ArraySpec",
    "BytesSpec",
    "Codec",
    "Spec",
    "Value",
    "codec_class",
    "codec_from_config",
    "register",
    "registered",
]
