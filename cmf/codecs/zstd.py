"""``zstd`` codec (spec/codecs/zstd.md): one Zstandard frame with a declared content size."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import zstandard

from ..errors import FormatError
from .base import BytesSpec, Codec, Spec, Value, check_config_keys, require_bytes_spec
from .registry import register

_LITERALS_PARAMS = dict(
    strategy=zstandard.STRATEGY_FAST, min_match=7, search_log=1, hash_log=6, window_log=17
)
# RFC 8878: every block has a 3-byte header and regenerates at most 128 KiB, so no frame decodes
# to more than 128 KiB per 4 bytes (an RLE block). A frame declaring more is rejected unread.
_MAX_RATIO = (128 << 10) // 4
_LOCAL = threading.local()  # per-thread (de)compressor cache: zstandard's are not thread-safe


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (one-shot decompress() resets it; no dictionary)."""
    d = getattr(_LOCAL, "decompressor", None)
    if d is None:
        d = _LOCAL.decompressor = zstandard.ZstdDecompressor()
    return d


@register
@dataclass(frozen=True, kw_only=True)
class Zstd(Codec):
    """``level`` as zstd's; ``literals_only`` switches match finding off (entropy coding only)."""

    name = "zstd"
    level: int = 3
    literals_only: bool = False

    def __post_init__(self) -> None:
        if not -131072 <= self.level <= 22:
            raise FormatError(f"zstd: level must be in [-131072, 22], found {self.level}")

    def to_config(self) -> dict:
        return {"level": self.level, "literals_only": self.literals_only}

    @classmethod
    def from_config(cls, config) -> Zstd:
        check_config_keys(cls.name, config, {"level": int, "literals_only": bool})
        return cls(**config)

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        spec = require_bytes_spec(self.name, spec)
        if spec.length is None:
            raise FormatError("zstd: the decoded length must be known (is zstd nested in zstd?)")
        return {"data": BytesSpec(None)}

    def _compressor(self) -> zstandard.ZstdCompressor:
        """This config's compressor, made once per thread (one-shot compress() resets it)."""
        cache = _LOCAL.__dict__.setdefault("compressors", {})
        key = (self.level, self.literals_only)
        if key not in cache:
            cache[key] = self._new_compressor()
        return cache[key]

    def _new_compressor(self) -> zstandard.ZstdCompressor:
        if self.literals_only:
            params = zstandard.ZstdCompressionParameters(
                write_content_size=True, write_checksum=False, **_LITERALS_PARAMS
            )
            return zstandard.ZstdCompressor(compression_params=params)
        return zstandard.ZstdCompressor(level=self.level, write_content_size=True)

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        return {"data": self._compressor().compress(value)}

    def decode(self, parts: dict[str, Value], spec: Spec) -> bytes:
        spec = require_bytes_spec(self.name, spec)
        expected = spec.length
        data = parts["data"]
        try:
            params = zstandard.get_frame_parameters(data)
        except zstandard.ZstdError as exc:
            raise FormatError(f"zstd: not a zstd frame header ({exc})") from None
        if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
            raise FormatError("zstd: frame does not declare its content size")
        if params.content_size != expected:
            raise FormatError(
                f"zstd: frame declares {params.content_size} bytes, {expected} expected"
            )
        if params.dict_id != 0:
            raise FormatError(f"zstd: frame needs dictionary {params.dict_id}; none are used")
        if expected > len(data) * _MAX_RATIO:  # python-zstandard allocates `expected` up front
            raise FormatError(
                f"zstd: a {len(data)}-byte frame cannot hold {expected} bytes "
                f"(at most {_MAX_RATIO}x: 4-byte RLE blocks of 128 KiB)"
            )
        try:
            out = _decompressor().decompress(data, max_output_size=expected, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise FormatError(f"zstd: corrupt frame ({exc})") from None
        if len(out) != expected:
            raise FormatError(f"zstd: frame decoded to {len(out)} bytes, {expected} expected")
        return out
