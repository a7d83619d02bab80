"""``sparse`` codec (spec/codecs/sparse.md): an array whose non-zeros are few, plus pruning.

An element is *zero* when all its bits are zero (``-0.0`` and NaN are non-zeros and round-trip
bit for bit). The non-zeros, in C order, form part ``values`` (the tensor's dtype, shape
``(nnz,)``, sub-encodable: quantize or codebook them further); their positions are stored as

* ``bitmask``: part ``mask``, one bit per element, LSB-first (bit ``i`` of the tensor is bit
  ``i % 8`` of byte ``i // 8``), exactly ``nnz`` bits set; or
* ``delta``: part ``index``, Deep Compression's relative indices: one code of ``bits`` bits per
  non-zero, the number of zeros skipped since the previous non-zero; a gap of ``M = 2**bits - 1``
  zeros or more is cut by *filler* codes ``M`` (skip ``M`` zeros, no value). Codes are ``u8``
  (``bits <= 8``) or ``u16`` arrays, so a ``bitpack`` or ``huffman`` sub-tree can code them.

The delta position coding (``delta_*``) is shared with ``outlier`` (cmf.codecs.outlier).
``fit`` prunes floats by magnitude (unstructured to a sparsity, N:M along the last axis, whole
rows/columns by L2 norm) and picks the layout whose index part is smallest after the default
lossless sub-tree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..dtypes import BY_NAME
from ..errors import CmfError, FormatError
from .base import ArraySpec, BytesSpec, Codec, Spec, Value, require_array_spec
from .registry import register

LAYOUTS = ("bitmask", "delta")
MAX_INDEX_BITS = 16
MAX_COUNT = 1 << 62  # a config count above this is rejected before any arithmetic
_UINT = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
_KEYS = {"bitmask": ("layout", "nnz"), "delta": ("layout", "nnz", "bits", "entries")}
_FIT_KEYS = ("sparsity", "pattern", "structured", "layout", "index_bits")
_AUTO_BITS = (8, 16)  # delta widths fit tries when index_bits is not given
_CHUNK = 1 << 20  # delta codes decoded at once (scratch ~17 bytes each)
_MASK_CHUNK = 1 << 17  # mask bytes decoded at once (1 Mi elements: scratch <= 9 MiB)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def fail(who: str, msg: str) -> FormatError:
    return FormatError(f"{who}: {msg}")


# ----------------------------------------------------------------------------- shared helpers


def bits_view(x: np.ndarray) -> np.ndarray:
    """The elements of ``x`` (C order, flattened) as unsigned integers of the same size."""
    return np.ascontiguousarray(x).reshape(-1).view(_UINT[x.dtype.itemsize])


def check_int(who: str, key: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]`` (a bool is not an int); FormatError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(who, f"config {key!r} must be an integer, found {value!r}")
    if not lo <= value <= hi:
        raise fail(who, f"config {key!r} must be in [{lo}, {hi}], found {value}")
    return value


def check_keys(who: str, config: Any, keys: tuple[str, ...]) -> dict:
    """``config`` is a map with exactly ``keys`` (all required)."""
    if not isinstance(config, dict):
        raise fail(who, f"config must be a map, found {type(config).__name__}")
    unknown = sorted(str(k) for k in config if k not in keys)
    if unknown:
        raise fail(who, f"unknown config keys {unknown}; expected {list(keys)}")
    missing = [k for k in keys if k not in config]
    if missing:
        raise fail(who, f"config is missing {missing}; every key of {list(keys)} is required")
    return config


def part_array(who: str, parts: dict[str, Value], name: str, spec: ArraySpec) -> np.ndarray:
    """Part ``name`` as an array of exactly ``spec``; FormatError otherwise."""
    value = parts.get(name)
    if not isinstance(value, np.ndarray) or value.dtype != spec.dtype.numpy:
        found = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise fail(who, f"part {name!r} must be a {spec.describe()} array, found {found}")
    if value.shape != spec.shape:
        raise fail(who, f"part {name!r} has shape {list(value.shape)}, {spec.describe()} expected")
    return value


def input_array(who: str, value: Value, spec: ArraySpec) -> np.ndarray:
    """The value to encode as a C-order array of ``spec``; CmfError on a shape mismatch."""
    x = np.asarray(value)
    if x.shape != spec.shape:
        raise CmfError(f"{who}: array of shape {list(x.shape)}, {spec.describe()} expected")
    return np.ascontiguousarray(x, dtype=spec.dtype.numpy).reshape(spec.shape)  # 0-d stays 0-d


def round_count(fraction: float, n: int) -> int:
    """``floor(fraction * n + 1/2)`` clamped to ``[0, n]``: how many elements a fraction is."""
    return min(n, max(0, math.floor(fraction * n + 0.5)))


def as_float(x: np.ndarray) -> np.ndarray:
    """Float ``x`` as float64 (f64) or float32 (narrower floats: exact), a new array."""
    wide = np.float64 if x.dtype.itemsize == 8 else np.float32
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when casting a NaN
        return x.astype(wide)


def magnitudes(x: np.ndarray) -> np.ndarray:
    """|x| of a float array, flattened (NaN counts as +inf: the largest)."""
    m = np.abs(as_float(x).reshape(-1))
    m[np.isnan(m)] = np.inf
    return m


def smallest(mag: np.ndarray, k: int) -> np.ndarray:
    """Positions (sorted) of the ``k`` smallest entries of 1-D ``mag``; ties go to the lowest
    positions, so the choice is deterministic."""
    if k <= 0 or k >= mag.size:
        return np.arange(max(0, min(k, mag.size)), dtype=np.int64)
    t = np.partition(mag, k - 1)[k - 1]  # the k-th smallest value
    return _select(mag < t, mag == t, k)


def largest(mag: np.ndarray, k: int) -> np.ndarray:
    """Positions (sorted) of the ``k`` largest entries of 1-D ``mag``; ties to the lowest."""
    n = mag.size
    if k <= 0 or k >= n:
        return np.arange(max(0, min(k, n)), dtype=np.int64)
    t = np.partition(mag, n - k)[n - k]  # the k-th largest value
    return _select(mag > t, mag == t, k)


def _select(strict: np.ndarray, tie: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the ``strict`` entries plus the first ties, ``k`` in all."""
    ties = np.flatnonzero(tie)[: k - int(np.count_nonzero(strict))]
    strict[ties] = True
    return np.flatnonzero(strict)


# ----------------------------------------------------------------------------- delta positions


def index_dtype(bits: int) -> str:
    """The dtype of delta codes: u8 up to 8 bits, else u16."""
    return "u8" if bits <= 8 else "u16"


def max_entries(nnz: int, numel: int, bits: int) -> int:
    """The most codes ``nnz`` positions below ``numel`` can take: each non-zero has one code,
    and fillers skip ``M = 2**bits - 1`` zeros each, of at most ``numel - nnz`` zeros."""
    return nnz + (numel - nnz) // ((1 << bits) - 1) if nnz else 0


def check_delta_counts(who: str, count: int, entries: int, numel: int, bits: int) -> None:
    """Data-free checks of a delta index's declared sizes (before anything allocates)."""
    if count > numel:
        raise fail(who, f"{count} stored positions declared for a tensor of {numel} elements")
    top = max_entries(count, numel, bits)
    if not count <= entries <= top:
        raise fail(
            who,
            f"'entries' {entries} is impossible for {count} positions below {numel} with "
            f"{bits}-bit codes (expected {count} to {top})",
        )


def delta_entries(positions: np.ndarray, bits: int) -> int:
    """The number of codes ``delta_encode`` gives for sorted unique ``positions``."""
    if positions.size == 0:
        return 0
    gaps = np.diff(positions, prepend=-1) - 1
    return int(positions.size + int((gaps // ((1 << bits) - 1)).sum()))


def delta_encode(positions: np.ndarray, bits: int) -> np.ndarray:
    """Codes (u8/u16, 1-D) of strictly increasing non-negative ``positions``."""
    m = (1 << bits) - 1
    dtype = BY_NAME[index_dtype(bits)].numpy
    if positions.size == 0:
        return np.zeros(0, dtype=dtype)
    gaps = np.diff(positions.astype(np.int64), prepend=-1) - 1
    if int(gaps.max()) < m:  # no filler needed (the common case): one code per position
        return gaps.astype(dtype)
    fills, last = np.divmod(gaps, m)
    ends = np.cumsum(fills + 1) - 1  # where each value code goes
    codes = np.full(int(ends[-1]) + 1, m, dtype=dtype)
    codes[ends] = last
    return codes


def delta_decode(who: str, codes: np.ndarray, count: int, numel: int, bits: int) -> np.ndarray:
    """The positions (int64, strictly increasing, all < ``numel``) that ``codes`` stand for;
    FormatError unless there are exactly ``count`` of them and the coding is canonical."""
    chunks = list(delta_chunks(who, codes, count, numel, bits))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


def delta_chunks(
    who: str, codes: np.ndarray, count: int, numel: int, bits: int
) -> Iterator[np.ndarray]:
    """:func:`delta_decode`'s positions, a chunk of codes at a time, so that decoding needs
    O(chunk) scratch memory beside the output (not ~25 bytes per code). A chunk is checked
    before it is yielded (a caller's output is garbage after a FormatError)."""
    m = (1 << bits) - 1
    if codes.size == 0:
        if count:
            raise fail(who, f"the index holds no positions, {count} expected")
        return
    top = int(codes.max())
    if top > m:
        raise fail(who, f"index code {top} is out of range for {bits}-bit codes (<= {m})")
    pieces = range(0, codes.size, _CHUNK)
    fills = sum(int(np.count_nonzero(codes[a : a + _CHUNK] == m)) for a in pieces)
    values = codes.size - fills
    if values != count:
        raise fail(who, f"the index holds {values} positions, {count} expected")
    if int(codes[-1]) == m:
        raise fail(who, "the index ends with a filler code (a writer never emits one)")
    base = -1  # the position reached before the chunk
    for a in pieces:
        c = codes[a : a + _CHUNK]
        fill = c == m
        step = c.astype(np.int64)
        step += 1  # a value code c skips c zeros and lands on 1 ...
        step[fill] = m  # ... a filler skips m zeros
        np.cumsum(step, out=step)
        step += base
        base = int(step[-1])
        positions = step[~fill]
        if positions.size and int(positions[-1]) >= numel:  # increasing: the last is the largest
            raise fail(
                who, f"index position {int(positions[-1])} is out of range for {numel} elements"
            )
        yield positions


def _mask_positions(raw: np.ndarray, pieces: range) -> Iterator[np.ndarray]:
    """The set bits of a bitmask (LSB-first), a chunk of bytes at a time."""
    for a in pieces:
        bits = np.unpackbits(raw[a : a + _MASK_CHUNK], bitorder="little").view(bool)
        where = np.flatnonzero(bits)  # bool: fast nonzero, then a gather (8x a boolean scatter)
        where += 8 * a  # padding bits are zero: no position past n
        yield where


def scatter(out: np.ndarray, chunks: Iterator[np.ndarray], values: np.ndarray) -> None:
    """``out[positions] = values`` with the positions arriving in chunks, in order."""
    k = 0
    for where in chunks:
        out[where] = values[k : k + where.size]
        k += where.size


def lossless_size(codes: np.ndarray, bits: int) -> int:
    """Bytes the default lossless sub-tree takes for delta ``codes`` of ``bits`` bits."""
    from ..pipeline import encode_lossless  # lazy: cmf.pipeline imports cmf.codecs

    return encode_lossless(codes, ArraySpec(BY_NAME[index_dtype(bits)], codes.shape)).stored


def choose_index_bits(
    positions: np.ndarray, candidates: tuple[int, ...], measure: bool = False
) -> tuple[int, int, int | None]:
    """``(bits, entries, size)`` of the candidate width whose codes are smallest after the
    default lossless sub-tree (``size`` is None when there was nothing to compare and
    ``measure`` is false). A wider width is tried only if it saves filler codes."""
    options: list[tuple[int, int]] = []  # (bits, entries)
    for bits in sorted(candidates):
        entries = delta_entries(positions, bits)
        if not options or entries < options[-1][1]:
            options.append((bits, entries))
    if len(options) == 1 and not measure:
        return options[0][0], options[0][1], None
    scored = [(lossless_size(delta_encode(positions, b), b), b, e) for b, e in options]
    size, bits, entries = min(scored)  # ties: the narrower width
    return bits, entries, size


def check_index_bits(who: str, options: dict) -> tuple[int, ...]:
    """The delta widths fit may use: ``options["index_bits"]`` or the automatic ones."""
    if "index_bits" not in options:
        return _AUTO_BITS
    b = options["index_bits"]
    if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_INDEX_BITS:
        raise CmfError(f"{who}: fit option 'index_bits' must be an integer in [1, 16], found {b!r}")
    return (b,)


# ----------------------------------------------------------------------------- pruning


def _fraction(options: dict, key: str) -> float:
    s = options[key]
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
        raise CmfError(f"sparse: fit option {key!r} must be a number in [0, 1], found {s!r}")
    return float(s)


def parse_pattern(p: Any) -> tuple[int, int]:
    """``"N:M"`` -> (N, M) with ``1 <= N < M <= 1024``."""
    try:
        n_str, m_str = p.split(":")
        n, m = int(n_str), int(m_str)
        ok = n_str.isdigit() and m_str.isdigit() and 1 <= n < m <= 1024
    except (AttributeError, ValueError):
        ok = False
    if not ok:
        raise CmfError(
            f"sparse: fit option 'pattern' must be 'N:M' with 1 <= N < M <= 1024, found {p!r}"
        )
    return n, m


def prune(x: np.ndarray, spec: ArraySpec, options: dict) -> np.ndarray:
    """A copy of float ``x`` with the elements ``options`` select set to +0.0 (spec, 'Fitting');
    ``x`` itself when no pruning is asked."""
    if not ("sparsity" in options or "pattern" in options):
        return x
    if not spec.dtype.is_float:
        raise CmfError(
            f"sparse: pruning needs a float tensor, found {spec.dtype.name}; fit with {{}}"
        )
    xf = as_float(x)
    if not np.isfinite(xf).all():
        raise CmfError(
            "sparse: cannot prune a tensor holding NaN or infinity; fit with {} to store it"
        )
    y = x.copy()
    flat = y.reshape(-1)
    zero = np.zeros((), dtype=x.dtype)
    if "pattern" in options:
        n, m = parse_pattern(options["pattern"])
        if x.ndim == 0 or x.shape[-1] % m:
            raise CmfError(
                f"sparse: pattern {n}:{m} needs a last axis that is a multiple of {m}, "
                f"found shape {list(x.shape)}"
            )
        groups = np.abs(xf).reshape(-1, m)  # (groups, m)
        order = np.argsort(groups, axis=1, kind="stable")  # smallest first, ties: lowest
        drop = order[:, : m - n] + (np.arange(groups.shape[0]) * m)[:, None]
        flat[drop.reshape(-1)] = zero
    elif "structured" in options:
        if x.ndim < 2:
            raise CmfError(
                f"sparse: structured pruning needs rank >= 2, found shape {list(x.shape)}"
            )
        axis = 0 if options["structured"] == "rows" else 1
        sq = np.moveaxis(xf, axis, 0).reshape(x.shape[axis], -1)
        norms = np.sqrt(np.einsum("ij,ij->i", sq, sq, dtype=np.float64))
        drop = smallest(norms, round_count(_fraction(options, "sparsity"), x.shape[axis]))
        index: list[Any] = [slice(None)] * x.ndim
        index[axis] = drop
        y[tuple(index)] = zero
    else:
        k = round_count(_fraction(options, "sparsity"), x.size)
        flat[smallest(np.abs(xf).reshape(-1), k)] = zero
    return y


# ----------------------------------------------------------------------------- codec


@register
@dataclass(frozen=True, kw_only=True)
class Sparse(Codec):
    """Non-zeros in ``values`` and their positions as a bitmask or delta codes; see the module
    docstring and spec/codecs/sparse.md."""

    name = "sparse"
    since_minor: ClassVar[int] = 1  # defined by cmf 1.1: a writer using it writes minor 1
    layout: str
    nnz: int
    bits: int | None = None  # delta only
    entries: int | None = None  # delta only
    # Not part of the config (decoding never needs it): set by fit when pruning changed the
    # tensor, so the writer measures and records the error against the original.
    pruned: bool = field(default=False, compare=False, repr=False)

    @property
    def lossless(self) -> bool:  # type: ignore[override]
        return not self.pruned

    def __post_init__(self) -> None:
        if not isinstance(self.layout, str) or self.layout not in LAYOUTS:
            raise fail(
                self.name, f"config 'layout' must be one of {list(LAYOUTS)}, found {self.layout!r}"
            )
        check_int(self.name, "nnz", self.nnz, 0, MAX_COUNT)
        if self.layout == "delta":
            check_int(self.name, "bits", self.bits, 1, MAX_INDEX_BITS)
            check_int(self.name, "entries", self.entries, 0, MAX_COUNT)
        elif self.bits is not None or self.entries is not None:
            raise fail(self.name, "layout 'bitmask' takes no 'bits' or 'entries'")

    def to_config(self) -> dict:
        return {k: getattr(self, k) for k in _KEYS[self.layout]}

    @classmethod
    def from_config(cls, config: Any) -> Sparse:
        if not isinstance(config, dict):
            raise fail(cls.name, f"config must be a map, found {type(config).__name__}")
        layout = config.get("layout")
        if not isinstance(layout, str) or layout not in LAYOUTS:
            raise fail(
                cls.name, f"config 'layout' must be one of {list(LAYOUTS)}, found {layout!r}"
            )
        return cls(**check_keys(cls.name, config, _KEYS[layout]))

    # ------------------------------------------------------------------------- specs

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        spec = require_array_spec(self.name, spec)
        n = spec.numel
        if self.nnz > n:
            raise fail(
                self.name, f"nnz {self.nnz} is more than the {n} elements of {spec.describe()}"
            )
        parts: dict[str, Spec] = {"values": ArraySpec(spec.dtype, (self.nnz,))}
        if self.layout == "bitmask":
            parts["mask"] = BytesSpec((n + 7) // 8)
        else:
            assert self.bits is not None and self.entries is not None
            check_delta_counts(self.name, self.nnz, self.entries, n, self.bits)
            parts["index"] = ArraySpec(BY_NAME[index_dtype(self.bits)], (self.entries,))
        return parts

    # ------------------------------------------------------------------------- decode

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        spec = require_array_spec(self.name, spec)
        specs = self.resolve(spec)
        n = spec.numel
        values = part_array(self.name, parts, "values", specs["values"])  # type: ignore[arg-type]
        if self.layout == "bitmask":
            data = parts.get("mask")
            if isinstance(data, np.ndarray) or not isinstance(data, (bytes, bytearray, memoryview)):
                raise fail(self.name, f"part 'mask' must be bytes, found {type(data).__name__}")
            raw = np.frombuffer(data, dtype=np.uint8)
            if raw.size != (n + 7) // 8:
                raise fail(
                    self.name, f"part 'mask' holds {raw.size} bytes, {(n + 7) // 8} expected"
                )
            used = n % 8
            if used and int(raw[-1]) >> used:
                raise fail(
                    self.name, f"the {8 - used} padding bits of the mask's last byte must be zero"
                )
            pieces = range(0, raw.size, _MASK_CHUNK)
            set_bits = sum(
                int(_POPCOUNT.take(raw[a : a + _MASK_CHUNK]).sum(dtype=np.int64)) for a in pieces
            )
            if set_bits != self.nnz:
                raise fail(self.name, f"the mask has {set_bits} bits set, nnz is {self.nnz}")
            chunks: Iterator[np.ndarray] = _mask_positions(raw, pieces)
        else:
            assert self.bits is not None
            codes = part_array(self.name, parts, "index", specs["index"])  # type: ignore[arg-type]
            chunks = delta_chunks(self.name, codes, self.nnz, n, self.bits)
        out = np.zeros(n, dtype=_UINT[spec.dtype.itemsize])
        scatter(out, chunks, bits_view(values))
        return out.view(spec.dtype.numpy).reshape(spec.shape)

    # ------------------------------------------------------------------------- encode

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        spec = require_array_spec(self.name, spec)
        x = input_array(self.name, value, spec)
        self.resolve(spec)
        bits = bits_view(x)
        nonzero = bits != 0
        positions = np.flatnonzero(nonzero)
        if positions.size != self.nnz:
            raise CmfError(
                f"sparse: the array has {positions.size} non-zeros, the config says {self.nnz} "
                "(use the codec's fit to configure it)"
            )
        out: dict[str, Value] = {"values": bits[positions].view(spec.dtype.numpy)}
        if self.layout == "bitmask":
            out["mask"] = np.packbits(nonzero, bitorder="little").tobytes()
        else:
            assert self.bits is not None
            codes = delta_encode(positions, self.bits)
            if codes.size != self.entries:
                raise CmfError(
                    f"sparse: the positions take {codes.size} {self.bits}-bit codes, the config "
                    f"says {self.entries} (use the codec's fit to configure it)"
                )
            out["index"] = codes
        return out

    # ------------------------------------------------------------------------- fit

    @classmethod
    def check_fit(cls, options: Any) -> None:
        if not isinstance(options, dict):
            raise CmfError(f"sparse: fit options must be a map, found {type(options).__name__}")
        unknown = sorted(str(k) for k in options if k not in _FIT_KEYS)
        if unknown:
            raise CmfError(
                f"sparse: unknown fit options {unknown}; expected some of {list(_FIT_KEYS)}"
            )
        if "pattern" in options:
            parse_pattern(options["pattern"])
            if "sparsity" in options or "structured" in options:
                raise CmfError("sparse: fit option 'pattern' excludes 'sparsity' and 'structured'")
        if "structured" in options:
            if options["structured"] not in ("rows", "columns"):
                raise CmfError(
                    f"sparse: fit option 'structured' must be 'rows' or 'columns', "
                    f"found {options['structured']!r}"
                )
            if "sparsity" not in options:
                raise CmfError("sparse: fit option 'structured' needs a 'sparsity'")
        if "sparsity" in options:
            _fraction(options, "sparsity")
        layout = options.get("layout", "auto")
        if layout not in ("auto", *LAYOUTS):
            raise CmfError(
                "sparse: fit option 'layout' must be 'auto', 'bitmask' or 'delta', "
                f"found {layout!r}"
            )
        check_index_bits(cls.name, options)

    @classmethod
    def fit(cls, value: Value, spec: Spec, options: dict[str, Any]) -> tuple[Sparse, Value]:
        cls.check_fit(options)
        spec = require_array_spec(cls.name, spec)
        x = input_array(cls.name, value, spec)
        y = prune(x, spec, options)
        bits = bits_view(y)
        pruned = y is not x and not np.array_equal(bits, bits_view(x))
        positions = np.flatnonzero(bits)
        nnz = int(positions.size)
        layout = options.get("layout", "auto")
        bitmask = cls(layout="bitmask", nnz=nnz, pruned=pruned)
        if layout == "bitmask":
            return bitmask, y
        b, entries, delta_size = choose_index_bits(
            positions, check_index_bits(cls.name, options), measure=layout == "auto"
        )
        delta = cls(layout="delta", nnz=nnz, bits=b, entries=entries, pruned=pruned)
        if layout == "delta":
            return delta, y
        from ..pipeline import best_bytes  # lazy: cmf.pipeline imports cmf.codecs

        mask = np.packbits(bits != 0, bitorder="little").tobytes()
        mask_size = best_bytes(mask, BytesSpec(len(mask))).stored
        assert delta_size is not None
        return (bitmask if mask_size <= delta_size else delta), y
