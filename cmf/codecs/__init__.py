"""Codecs: one module each, registered by name. Importing this package registers them all."""

# Each import registers one codec (side effect); one line per module.
from . import bitpack  # noqa: F401
from . import byteplanes  # noqa: F401
from . import codebook  # noqa: F401
from . import ggml_codec  # noqa: F401
from . import huffman  # noqa: F401
from . import lowrank  # noqa: F401
from . import outlier  # noqa: F401
from . import partition  # noqa: F401
from . import quantize  # noqa: F401
from . import raw  # noqa: F401
from . import sparse  # noqa: F401
from . import zstd  # noqa: F401
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
