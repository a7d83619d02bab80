"""``bitpack`` codec (spec/codecs/bitpack.md): unsigned codes of ``bits`` bits, packed densely.

The packed bytes are the little-endian bytes of the integer ``sum_i u_i * 2**(i*bits)``: code
``i`` occupies stream bits ``i*bits ... i*bits+bits-1``, least significant bit first, and stream
bit ``j`` is bit ``j % 8`` of byte ``j // 8``. Eight codes fill exactly ``bits`` bytes, so both
directions work on groups of eight codes held in two little-endian u64 words (bits 0..63 and
64..127 of the group): eight whole-array shift/or passes over ``n/8`` groups, for any width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CmfError, FormatError
from ..kernels import in_pieces
from ..kernels import speedups as _speedups  # optional C kernels; same codes either way
from .base import ArraySpec, BytesSpec, Codec, Spec, Value, check_config_keys, require_array_spec
from .registry import register

MAX_BITS = 16
_CODE_DTYPES = {"u8": 8, "u16": 16}  # array dtype -> widest code it holds
_U64 = np.dtype("<u8")


def packed_length(numel: int, bits: int) -> int:
    """Bytes holding ``numel`` codes of ``bits`` bits: ceil(numel * bits / 8)."""
    return (numel * bits + 7) // 8


def pack(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned ``codes`` (any integer array, every value < 2**bits; C order) LSB-first."""
    u = np.ascontiguousarray(codes).reshape(-1)
    n = u.size
    if bits == 8:
        return u.astype(np.uint8, copy=False).tobytes()
    if bits == 16:
        return u.astype("<u2", copy=False).tobytes()
    if bits == 4:  # nibbles: code 2k in the low half of byte k, code 2k+1 in the high half
        even = np.zeros((n + 1) // 2, dtype=np.uint8)
        even[:] = u[0::2]
        even[: n // 2] |= u[1::2].astype(np.uint8) << np.uint8(4)
        return even.tobytes()
    groups = -(-n // 8)  # each group of 8 codes is exactly `bits` bytes
    out = np.empty(groups * bits, np.uint8)
    for g0 in range(0, groups, _PACK_GROUPS):  # bounded work arrays, whatever the tensor
        g1 = min(groups, g0 + _PACK_GROUPS)
        out[g0 * bits : g1 * bits] = _pack_groups(u[g0 * 8 : g1 * 8], bits)
    return out[: packed_length(n, bits)].tobytes()


_PACK_GROUPS = 1 << 17  # groups of 8 codes packed at a time (their u64 work arrays: ~10 MiB)


def _pack_groups(u: np.ndarray, bits: int) -> np.ndarray:
    """The packed bytes of up to ``8 * groups`` codes ``u`` (a short last group zero padded),
    ``groups * bits`` bytes."""
    n = u.size
    groups = -(-n // 8)
    cols = np.zeros((8, groups), dtype=_U64)  # (8, g): code j of every group, zero past the end
    full = n // 8
    cols[:, :full] = u[: full * 8].reshape(full, 8).T
    cols[: n - full * 8, full:] = u[full * 8 :].reshape(-1, 1)
    lo = np.zeros(groups, dtype=_U64)  # bits 0..63 of each group
    hi = np.zeros(groups, dtype=_U64)  # bits 64..127
    tmp = np.empty(groups, dtype=_U64)
    for j in range(8):
        shift = j * bits  # where code j of a group starts
        c = cols[j]
        if shift + bits <= 64:
            lo |= np.left_shift(c, np.uint64(shift), out=tmp)
        elif shift >= 64:
            hi |= np.left_shift(c, np.uint64(shift - 64), out=tmp)
        else:  # straddles the two words (u64 shifts drop the high bits)
            lo |= np.left_shift(c, np.uint64(shift), out=tmp)
            hi |= np.right_shift(c, np.uint64(64 - shift), out=tmp)
    words = np.stack([lo, hi], axis=1)  # (g, 2) little-endian u64 words
    return words.view(np.uint8)[:, :bits].reshape(-1)  # (g * bits,): a group is `bits` bytes


def unpack(data: Value, n: int, bits: int) -> np.ndarray:
    """The ``n`` codes packed in ``data`` (exactly ``packed_length(n, bits)`` bytes, zero padding
    bits), as u8 for ``bits <= 8`` else u16. FormatError on a wrong length or nonzero padding."""
    want = packed_length(n, bits)
    if len(data) != want:
        raise FormatError(
            f"bitpack: data holds {len(data)} bytes, {want} expected ({n} codes of {bits} bits)"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    used = (n * bits) % 8
    if used and int(raw[-1]) >> used:
        raise FormatError(
            f"bitpack: the {8 - used} padding bits of the last byte must be zero, "
            f"found byte {int(raw[-1]):#04x}"
        )
    out_dtype = np.uint8 if bits <= 8 else np.dtype("<u2")
    if bits == 8:
        return raw.copy()
    if bits == 16:
        return raw.view("<u2").copy()
    if bits == 4:
        return _nibbles(raw)[:n]
    groups = -(-n // 8)
    buf = np.zeros((groups, 16), dtype=np.uint8)  # (g, 16): group bytes, zero past `bits`
    flat = np.zeros(groups * bits, dtype=np.uint8)
    flat[: raw.size] = raw
    buf[:, :bits] = flat.reshape(groups, bits)
    words = buf.view(_U64)  # (g, 2)
    lo, hi = words[:, 0], words[:, 1]
    mask = np.uint64((1 << bits) - 1)
    codes = np.empty((groups, 8), dtype=out_dtype)
    tmp = np.empty(groups, dtype=_U64)
    for j in range(8):
        shift = j * bits
        if shift + bits <= 64:
            np.right_shift(lo, np.uint64(shift), out=tmp)
        elif shift >= 64:
            np.right_shift(hi, np.uint64(shift - 64), out=tmp)
        else:
            np.right_shift(lo, np.uint64(shift), out=tmp)
            tmp |= hi << np.uint64(64 - shift)
        tmp &= mask
        codes[:, j] = tmp
    return codes.reshape(-1)[:n]


_CHUNK = 1 << 16  # packed bytes turned into nibbles at a time (the scratch stays in the cache)


def _nibbles(raw: np.ndarray) -> np.ndarray:
    """Codes of 4 bits: byte x -> (x & 15, x >> 4), as little-endian u16 words
    ``(x | x << 4) & 0x0F0F``, a chunk at a time, in place (no big temporaries); by the C
    kernel, ranges of a big input on threads, when it is built."""
    if _speedups is not None and raw.size:
        codes = np.empty(2 * raw.size, dtype=np.uint8)
        in_pieces(lambda a, b: _speedups.nibbles(codes[2 * a : 2 * b], raw[a:b]), raw.size)
        return codes
    out = np.empty(raw.size, dtype="<u2")
    tmp = np.empty(min(raw.size, _CHUNK), dtype="<u2")
    for a in range(0, raw.size, _CHUNK):
        o = out[a : a + _CHUNK]
        t = tmp[: o.size]
        np.copyto(o, raw[a : a + _CHUNK])
        np.left_shift(o, 4, out=t)
        np.bitwise_or(o, t, out=o)
        np.bitwise_and(o, 0x0F0F, out=o)
    return out.view(np.uint8)


@register
@dataclass(frozen=True, kw_only=True)
class BitPack(Codec):
    """``bits`` per code, 1..16; decodes to a u8 (bits <= 8) or u16 array of codes < 2**bits."""

    name = "bitpack"
    bits: int

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise FormatError(f"bitpack: bits must be an integer, found {self.bits!r}")
        if not 1 <= self.bits <= MAX_BITS:
            raise FormatError(f"bitpack: bits must be in [1, {MAX_BITS}], found {self.bits}")

    def to_config(self) -> dict:
        return {"bits": self.bits}

    @classmethod
    def from_config(cls, config) -> BitPack:
        check_config_keys(cls.name, config, {"bits": int})
        if "bits" not in config:
            raise FormatError("bitpack: config needs 'bits'")
        return cls(**config)

    def _check(self, spec: Spec) -> ArraySpec:
        spec = require_array_spec(self.name, spec)
        widest = _CODE_DTYPES.get(spec.dtype.name)
        if widest is None:
            raise FormatError(f"bitpack: decodes to u8 or u16 codes, not {spec.dtype.name}")
        if self.bits > widest:
            raise FormatError(f"bitpack: {self.bits}-bit codes do not fit {spec.dtype.name}")
        return spec

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        spec = self._check(spec)
        return {"data": BytesSpec(packed_length(spec.numel, self.bits))}

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        spec = self._check(spec)
        codes = np.asarray(value)
        if codes.dtype.kind not in "ui":
            raise CmfError(f"bitpack: codes must be integers, found {codes.dtype}")
        if codes.size != spec.numel:
            raise CmfError(f"bitpack: {codes.size} codes given, {spec.numel} expected")
        if codes.size:
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >> self.bits:
                bad = lo if lo < 0 else hi
                raise CmfError(
                    f"bitpack: code {bad} does not fit {self.bits} bits "
                    f"(0 <= code < {1 << self.bits})"
                )
        return {"data": pack(codes, self.bits)}

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        spec = self._check(spec)
        codes = unpack(parts["data"], spec.numel, self.bits)
        return codes.astype(spec.dtype.numpy, copy=False).reshape(spec.shape)
