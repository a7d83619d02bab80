"""Codecs: one module each, registered by name. Importing this package registers them all."""

from . import byteplanes, raw, zstd  # noqa: F401  (registration side effect)
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
