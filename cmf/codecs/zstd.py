"""``zstd`` codec (spec/codecs/zstd.md): one Zstandard frame with a declared content size."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
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


_INTO_MIN = 1 << 16  # frames decoding to this many bytes or more go into a numpy buffer
_MAX_WINDOW = 1 << 31  # spec/codecs/zstd.md: the largest window a writer may use


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (one-shot decompress() and stream_reader() reset it; no
    dictionary)."""
    d = getattr(_LOCAL, "decompressor", None)
    if d is None:
        d = _LOCAL.decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
    return d


def frame_length(data: Value) -> int:
    """The length of the Zstandard frame at the start of ``data`` (RFC 8878 §3.1.1: header,
    blocks up to the last one, the optional checksum), from its block headers alone.
    FormatError if the frame is cut short or has a reserved block type."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    size = len(view)
    try:
        pos = zstandard.frame_header_size(data)
        has_checksum = zstandard.get_frame_parameters(data).has_checksum
    except zstandard.ZstdError as exc:
        raise FormatError(f"zstd: not a zstd frame header ({exc})") from None
    while True:
        if pos + 3 > size:
            raise FormatError(f"zstd: frame is cut short at byte {size} (a block header is due)")
        header = view[pos] | view[pos + 1] << 8 | view[pos + 2] << 16
        kind = (header >> 1) & 3
        if kind == 3:
            raise FormatError(f"zstd: block at byte {pos} has the reserved block type")
        pos += 3 + (1 if kind == 1 else header >> 3)  # RLE blocks store one byte
        if header & 1:  # the last block
            break
    pos += 4 if has_checksum else 0
    if pos > size:
        raise FormatError(f"zstd: frame is cut short: {pos} bytes needed, {size} present")
    return pos


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

    def decode(self, parts: dict[str, Value], spec: Spec) -> bytes | memoryview:
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
        if expected >= _INTO_MIN:
            return _decompress_into(data, expected)
        try:
            out = _decompressor().decompress(data, max_output_size=expected, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise FormatError(f"zstd: corrupt frame ({exc})") from None
        if len(out) != expected:
            raise FormatError(f"zstd: frame decoded to {len(out)} bytes, {expected} expected")
        return out


def _decompress_into(data: Value, expected: int) -> memoryview:
    """The frame ``data`` (its header already checked) decoded straight into a new numpy buffer
    of ``expected`` bytes: a large one is backed by huge pages where numpy can have them, where
    ``decompress()``'s bytes object faults in every 4 KiB page (about twice the decoding time
    for a 12 MB exponent plane here). Same checks: exactly one frame, nothing after it, exactly
    ``expected`` bytes out, libzstd's own checks (the checksum too) on the way."""
    end = frame_length(data)
    if end != len(data):
        raise FormatError(
            f"zstd: {len(data) - end} bytes follow the frame (exactly one frame is allowed)"
        )
    out = np.empty(expected, dtype=np.uint8)
    try:
        reader = _decompressor().stream_reader(data, read_size=len(data), read_across_frames=False)
        got = reader.readinto(out)
        more = reader.readinto(bytearray(1)) if got == expected else 0  # to the frame's end
    except zstandard.ZstdError as exc:
        raise FormatError(f"zstd: corrupt frame ({exc})") from None
    if got != expected or more:
        found = f"more than {expected}" if more else str(got)
        raise FormatError(f"zstd: frame decoded to {found} bytes, {expected} expected")
    return out.data
