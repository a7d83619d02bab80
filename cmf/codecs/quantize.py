"""``quantize`` codec (spec/codecs/quantize.md): uniform affine quantization in blocks.

A float tensor becomes one unsigned code per element (part ``q``) and one scale per block
(``scale``), plus a float offset (``min``, scheme ``asymmetric``) or an integer zero point
(``zero``, scheme ``zero_point``). Blocks are runs of ``block`` elements along ``axis`` (the
whole axis when ``block`` is 0; the whole tensor, flattened, when ``axis`` is null); the last
block of a run may be shorter. Decoding is pinned to float32 with one rounding per operation,
in a fixed order, so every decoder gives the same bits, and GGML's Q8_0/Q4_0/Q4_1/Q5_0/Q5_1
blocks decode exactly as gguf-py's ``dequantize`` (cmf.convert.gguf_legacy converts them)::

    symmetric   x = s * (u - 2**(bits-1))
    zero_point  x = s * (u - z)
    asymmetric  x = s * u + m

Internally a tensor of shape ``(..., n, ...)`` is viewed as ``(pre, n, post)`` with ``n`` the
blocked axis; the ``F`` full blocks of each run are a strided ``(pre, F, B, post)`` view and
the partial tail ``(pre, r, post)`` is handled alone. The encoder fits every block at once:
round to nearest, then (``search``) a grid of candidate scales, each refitted by least squares
on its codes, keeping per block the candidate with the smallest squared error as decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..dtypes import BY_NAME
from ..errors import CmfError, FormatError
from ..kernels import PIECE_MIN, in_pieces
from ..kernels import speedups as _speedups  # optional C kernels; same bits either way
from .base import ArraySpec, Codec, Spec, Value, require_array_spec, require_config_keys
from .registry import register

MAX_BITS = 16
SCHEMES = ("symmetric", "asymmetric", "zero_point")
TENSOR_DTYPES = ("f32", "f16", "bf16", "f64")
SCALE_DTYPES = ("f32", "f16", "bf16")
_F32 = np.dtype("<f4")
_KERNEL_SCHEMES = {"symmetric": 0, "zero_point": 1, "asymmetric": 2}  # _speedups.dequantize's
_CONFIG = {  # key -> allowed Python types (bool kept apart from int)
    "bits": (int,),
    "block": (int,),
    "axis": (int, type(None)),
    "scheme": (str,),
    "scale_dtype": (str,),
    "search": (bool,),
}
# Search grid: candidate scale = (round-to-nearest scale) * factor; factors < 1 clip the block's
# extremes. Each candidate is refitted by least squares on its codes before it is scored.
_FACTORS = tuple(1.0 - 0.035 * i for i in range(14)) + (1.03,)
_CHUNK = 1 << 18  # elements fitted at once (scratch arrays stay in cache; memory is bounded)


def _fail(msg: str) -> FormatError:
    return FormatError(f"quantize: {msg}")


def code_dtype(bits: int) -> str:
    """The dtype of codes (and zero points) of ``bits`` bits: u8 up to 8 bits, else u16."""
    return "u8" if bits <= 8 else "u16"


@dataclass(frozen=True)
class Layout:
    """How a tensor of some shape splits into blocks (all sizes are Python ints)."""

    pre: int  # product of the dims before the blocked axis
    n: int  # length of the blocked axis (numel when axis is null)
    post: int  # product of the dims after it
    size: int  # elements per full block, B
    full: int  # full blocks per run, F = n // B
    tail: int  # elements of the partial last block, r = n % B (0: none)
    blocks_shape: tuple[int, ...]  # shape of `scale`, `min`, `zero`

    @property
    def nblocks(self) -> int:
        return self.full + (1 if self.tail else 0)


def block_layout(
    shape: tuple[int, ...], axis: int | None, block: int, codec: str = "quantize"
) -> Layout:
    """How a tensor of ``shape`` splits into blocks of ``block`` elements along ``axis``
    (spec/codecs/quantize.md § Blocks; codebook's scales use the same rule). FormatError naming
    ``codec`` if ``axis`` is out of range for the rank."""
    if axis is None:
        pre, n, post = 1, math.prod(shape), 1
    else:
        rank = len(shape)
        if not -rank <= axis < rank:
            raise FormatError(f"{codec}: axis {axis} is out of range for a rank-{rank} tensor")
        a = axis % rank
        pre, n, post = math.prod(shape[:a]), shape[a], math.prod(shape[a + 1 :])
    size = block if block > 0 else max(n, 1)
    full, tail = divmod(n, size)
    nblocks = full + (1 if tail else 0)
    if axis is None:
        blocks_shape: tuple[int, ...] = (nblocks,)
    else:
        a = axis % len(shape)
        blocks_shape = shape[:a] + (nblocks,) + shape[a + 1 :]
    return Layout(pre, n, post, size, full, tail, blocks_shape)


@register
@dataclass(frozen=True, kw_only=True)
class Quantize(Codec):
    """Uniform affine quantization; see the module docstring and spec/codecs/quantize.md."""

    name = "quantize"
    lossless = False
    bits: int = 8
    block: int = 0
    axis: int | None = -1
    scheme: str = "symmetric"
    scale_dtype: str = "f32"
    search: bool = True

    def __post_init__(self) -> None:
        for key, types in _CONFIG.items():
            value = getattr(self, key)
            if not isinstance(value, types) or isinstance(value, bool) != (bool in types):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise _fail(f"config {key!r} must be {names}, found {value!r}")
        if not 1 <= self.bits <= MAX_BITS:
            raise _fail(f"bits must be in [1, {MAX_BITS}], found {self.bits}")
        if not 0 <= self.block < 2**53:
            raise _fail(f"block must be 0 (whole axis) or a positive length, found {self.block}")
        if self.axis is not None and not -64 <= self.axis < 64:
            raise _fail(f"axis must be null or in [-64, 64), found {self.axis}")
        if self.scheme not in SCHEMES:
            raise _fail(f"scheme must be one of {', '.join(SCHEMES)}, found {self.scheme!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise _fail(
                f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}, found {self.scale_dtype!r}"
            )

    def to_config(self) -> dict:
        return {key: getattr(self, key) for key in _CONFIG}

    @classmethod
    def from_config(cls, config: Any) -> Quantize:
        return cls(**require_config_keys(cls.name, config, _CONFIG))

    # ------------------------------------------------------------------------- specs

    @property
    def offset(self) -> int:
        """The code that stands for 0 in the symmetric scheme, 2**(bits-1)."""
        return 1 << (self.bits - 1)

    def _check(self, spec: Spec) -> ArraySpec:
        spec = require_array_spec(self.name, spec)
        if spec.dtype.name not in TENSOR_DTYPES:
            raise _fail(f"decodes to {', '.join(TENSOR_DTYPES)}, not {spec.dtype.name}")
        return spec

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """The block layout of a tensor of ``shape`` (FormatError if ``axis`` is out of range)."""
        return block_layout(shape, self.axis, self.block, self.name)

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        spec = self._check(spec)
        lay = self.layout(spec.shape)
        codes = BY_NAME[code_dtype(self.bits)]
        scales = ArraySpec(BY_NAME[self.scale_dtype], lay.blocks_shape)
        parts: dict[str, Spec] = {"q": ArraySpec(codes, spec.shape), "scale": scales}
        if self.scheme == "asymmetric":
            parts["min"] = scales
        elif self.scheme == "zero_point":
            parts["zero"] = ArraySpec(codes, lay.blocks_shape)
        return parts

    # ------------------------------------------------------------------------- decode

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        spec = self._check(spec)
        lay = self.layout(spec.shape)
        specs = self.resolve(spec)
        q = _part(parts, "q", specs["q"])
        limit = 1 << self.bits
        if _speedups is not None and lay.post == 1 and q.size:
            return self._decode_rows(q, parts, specs, spec, lay, None)
        if q.size and int(q.max()) >= limit:
            raise _fail(f"code {int(q.max())} is out of range for {self.bits} bits (< {limit})")
        scale = _finite_part(parts, "scale", specs["scale"])
        t = q.astype(_F32).reshape(lay.pre, lay.n, lay.post)  # (pre, n, post) owned, f32
        if self.scheme == "symmetric":
            t -= np.float32(self.offset)  # exact: integers below 2**16
        elif self.scheme == "zero_point":
            zero = _part(parts, "zero", specs["zero"])
            if zero.size and int(zero.max()) >= limit:
                raise _fail(f"zero point {int(zero.max())} is out of range for {self.bits} bits")
            _blockwise(t, zero.astype(_F32), lay, np.subtract)  # exact
        with np.errstate(over="ignore"):  # IEEE overflow to infinity, f32 too (spec): no warning
            _blockwise(t, scale, lay, np.multiply)  # one rounding
            if self.scheme == "asymmetric":
                _blockwise(t, _finite_part(parts, "min", specs["min"]), lay, np.add)  # one rounding
            return t.reshape(spec.shape).astype(spec.dtype.numpy, copy=False)  # f16/bf16 too

    def decode_into(self, parts: dict[str, Value], spec: Spec, out: np.ndarray) -> None:
        """decode() written into ``out`` (C-contiguous, writable, the spec's dtype and shape):
        by the C kernel straight into it for a float32 tensor blocked along its rows."""
        spec = self._check(spec)
        lay = self.layout(spec.shape)
        if _speedups is not None and lay.post == 1 and spec.numel and spec.dtype.name == "f32":
            specs = self.resolve(spec)
            q = _part(parts, "q", specs["q"])
            self._decode_rows(q, parts, specs, spec, lay, out.reshape(lay.pre, lay.n))
        else:
            out[...] = self.decode(parts, spec)

    def _decode_rows(
        self,
        q: np.ndarray,
        parts: dict[str, Value],
        specs: dict[str, Spec],
        spec: ArraySpec,
        lay: Layout,
        into: np.ndarray | None,
    ) -> np.ndarray:
        """decode() by the C kernel where blocks run along contiguous rows (``post`` is 1):
        one pass, rows split over threads; the same float32 operations in the same order.
        ``into``: a (pre, n) float32 array to write (else a new one)."""
        limit = 1 << self.bits
        scale = _finite_part(parts, "scale", specs["scale"]).reshape(lay.pre, lay.nblocks)
        extra = None
        if self.scheme == "zero_point":
            zero = _part(parts, "zero", specs["zero"])
            if zero.size and int(zero.max()) >= limit:
                raise _fail(f"zero point {int(zero.max())} is out of range for {self.bits} bits")
            extra = zero.astype(_F32).reshape(lay.pre, lay.nblocks)
        elif self.scheme == "asymmetric":
            extra = _finite_part(parts, "min", specs["min"]).reshape(lay.pre, lay.nblocks)
        out = np.empty((lay.pre, lay.n), dtype=_F32) if into is None else into  # owned, writable
        codes = q.reshape(lay.pre, lay.n)
        tops: list[int] = []

        def rows(a: int, b: int) -> None:
            tops.append(
                _speedups.dequantize(
                    out[a:b],
                    codes[a:b],
                    scale[a:b],
                    None if extra is None else extra[a:b],
                    lay.n,
                    lay.size,
                    _KERNEL_SCHEMES[self.scheme],
                    self.offset,
                )
            )

        in_pieces(rows, lay.pre, max(1, PIECE_MIN // lay.n))
        top = max(tops)
        if top >= limit:
            raise _fail(f"code {top} is out of range for {self.bits} bits (< {limit})")
        with np.errstate(over="ignore"):  # IEEE overflow to infinity (spec): no warning
            return out.reshape(spec.shape).astype(spec.dtype.numpy, copy=False)  # f16/bf16 too

    # ------------------------------------------------------------------------- encode

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        spec = self._check(spec)
        lay = self.layout(spec.shape)
        x = np.asarray(value)
        if x.shape != spec.shape:
            raise CmfError(f"quantize: array of shape {x.shape}, {spec.describe()} expected")
        x = np.ascontiguousarray(x, dtype=spec.dtype.numpy)
        xf = finite_f32(x)
        x3 = xf.reshape(lay.pre, lay.n, lay.post)
        q3 = np.empty((lay.pre, lay.n, lay.post), dtype=BY_NAME[code_dtype(self.bits)].numpy)
        specs = self.resolve(spec)
        params = {  # name -> (pre, nblocks, post)
            name: np.empty((lay.pre, lay.nblocks, lay.post), dtype=s.dtype.numpy)
            for name, s in specs.items()
            if name != "q"
        }
        groups = []  # (x view, q view, first block): views are (pre, blocks, length, post)
        if lay.full:
            groups.append((_full_blocks(x3, lay), _full_blocks(q3, lay), 0))
        if lay.tail:  # the partial last block of each run
            a = lay.full * lay.size
            groups.append((x3[:, None, a:, :], q3[:, None, a:, :], lay.full))
        for xv, qv, first in groups:
            pre, nb, length, post = xv.shape
            m = pre * nb * post
            if length < m:  # blocks as columns (length, m): per-block values broadcast along rows
                blocks = np.ascontiguousarray(xv.transpose(2, 0, 1, 3)).reshape(length, m)
                fitted, codes = self.quantize_blocks(blocks, spec.dtype.numpy, axis=0)
                qv[...] = codes.reshape(length, pre, nb, post).transpose(1, 2, 0, 3)
            else:  # blocks as rows (m, length)
                blocks = np.ascontiguousarray(xv.transpose(0, 1, 3, 2)).reshape(m, length)
                fitted, codes = self.quantize_blocks(blocks, spec.dtype.numpy, axis=1)
                qv[...] = codes.reshape(pre, nb, post, length).transpose(0, 1, 3, 2)
            for name, p in fitted.items():
                params[name][:, first : first + nb, :] = p.reshape(pre, nb, post)
        out: dict[str, Value] = {"q": q3.reshape(spec.shape)}
        out.update({name: p.reshape(lay.blocks_shape) for name, p in params.items()})
        return out

    def quantize_blocks(
        self, x: np.ndarray, dtype: np.dtype, axis: int = 1
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Quantize the blocks of ``x`` (2-D float32, finite; each block is a row if ``axis`` is
        1, a column if 0) for a tensor of numpy ``dtype``: the parameters ((m,) arrays in their
        part dtypes, m blocks) and the codes (shaped like ``x``)."""
        m, k = x.shape[1 - axis], x.shape[axis]
        step = max(1, _CHUNK // max(k, 1))  # blocks per piece: bounded scratch memory
        if m <= step:
            return _Fitter(self, x, dtype, axis).run()
        pieces = [
            _Fitter(
                self,
                np.ascontiguousarray(x[i : i + step] if axis else x[:, i : i + step]),
                dtype,
                axis,
            ).run()
            for i in range(0, m, step)
        ]
        params = {name: np.concatenate([p[name] for p, _ in pieces]) for name in pieces[0][0]}
        return params, np.concatenate([c for _, c in pieces], axis=1 - axis)


class _Fitter:
    """Round-to-nearest, then a scored grid of least-squares refits, for all blocks at once.

    ``x`` is 2-D with one block per row (``ax`` = 1) or per column (``ax`` = 0); per-block
    values have shape ``pshape`` ((m, 1) or (1, m)) so they broadcast over their block.
    Parameters are ``(s, a)``: the scale, and ``a`` = the code of 0 (symmetric: 2**(bits-1);
    zero_point: the zero point) or the min (asymmetric). *Levels* are what the scale multiplies:
    ``u - a``, or ``u`` for asymmetric. A candidate's levels come from rounding with its scale;
    the scale (and min) are then refitted to those levels by least squares, rounded to the scale
    dtype, and scored in closed form from block sums (``sum (x - s*t - m)**2``). The best
    candidate's codes are recomputed as the nearest ones, and each block keeps it only if its
    exact decoded error beats round-to-nearest's.
    """

    def __init__(self, codec: Quantize, x: np.ndarray, dtype: np.dtype, ax: int) -> None:
        self.c = codec
        self.asym = codec.scheme == "asymmetric"
        self.x = x  # 2-D f32, finite
        self.ax = ax
        self.k = x.shape[ax]  # elements per block
        self.m = x.shape[1 - ax]  # blocks
        self.pshape = (self.m, 1) if ax == 1 else (1, self.m)
        self.sum_spec = "ij,ij->i" if ax == 1 else "ij,ij->j"
        self.dtype = dtype  # tensor dtype: decoded values are rounded to it before scoring
        self.qmax = (1 << codec.bits) - 1
        self.sdt = BY_NAME[codec.scale_dtype].numpy
        self.acc = np.float64  # block sums: near-exact, so results do not depend on sum order
        self.t = np.empty_like(x)  # scratch: levels
        self.y = np.empty_like(x)  # scratch: decoded values

    def stored(self, v: np.ndarray) -> np.ndarray:
        """``v`` rounded to the scale dtype, back in f32 (overflow gives inf)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(v, dtype=_F32).astype(self.sdt).astype(_F32)

    def dot(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Per-block sums of u*v, f64, shaped ``pshape``."""
        out = np.einsum(self.sum_spec, u, v, dtype=self.acc)
        return out.astype(np.float64).reshape(self.pshape)

    def levels(self, s: np.ndarray, a: np.ndarray, exact: bool) -> np.ndarray:
        """Nearest levels (f32, in self.t) for parameters (s, a); 0 where s is 0. ``exact``
        divides by s; otherwise multiplies by 1/s (faster; the search only ranks with it)."""
        x, t = self.x, self.t
        src = np.subtract(x, a, out=t) if self.asym else x
        zero = s == 0
        if exact:
            np.divide(src, np.where(zero, np.float32(1), s), out=t)
        else:
            with np.errstate(divide="ignore"):
                inv = np.where(zero, np.float32(0), np.float32(1) / s)
            np.multiply(src, inv, out=t)
        if exact and zero.any():
            t[np.broadcast_to(zero, t.shape)] = 0
        np.rint(t, out=t)
        if self.asym:
            np.clip(t, 0, self.qmax, out=t)
        elif self.c.scheme == "symmetric":
            o = self.c.offset
            np.clip(t, -o, self.qmax - o, out=t)
        else:
            np.maximum(t, -a, out=t)
            np.minimum(t, self.qmax - a, out=t)
        return t

    def exact_error(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Squared error per block (f64, ``pshape``) of the nearest codes for (s, a), decoded
        exactly as a reader does (spec formula, then rounding to the tensor dtype)."""
        t = self.levels(s, a, exact=True)
        y = np.multiply(t, s, out=self.y)  # symmetric/zero_point: t holds u - a (exact)
        if self.asym:
            y += a
        if self.dtype not in (_F32, np.dtype(np.float64)):
            with np.errstate(over="ignore"):
                y[...] = y.astype(self.dtype)
        y -= self.x
        err = np.einsum(self.sum_spec, y, y, dtype=np.float64).reshape(self.pshape)
        return np.where(np.isfinite(s) & np.isfinite(a), err, np.inf)

    def rtn(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Round-to-nearest parameters from the block's range (stored), and the unrounded base
        scale the search grid multiplies."""
        x, c, ax = self.x, self.c, self.ax
        if c.scheme == "symmetric":
            # GGUF Q4_0/Q5_0: the value of largest magnitude maps to code 0 (u - o = -o), so
            # the scale's sign picks which side gets the extra level.
            idx = np.abs(x).argmax(axis=ax, keepdims=True)
            xm = np.take_along_axis(x, idx, axis=ax)  # signed
            base = xm / np.float32(-c.offset)
            return self.stored(base), np.full_like(base, c.offset), base
        lo = x.min(axis=ax, keepdims=True)
        hi = x.max(axis=ax, keepdims=True)
        if self.asym:
            base = (hi - lo) / np.float32(self.qmax)
            self.lo = lo
            return self.stored(base), self.stored(lo), base
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)  # the range must hold 0 exactly
        base = (hi - lo) / np.float32(self.qmax)
        s = self.stored(base)
        z = np.divide(-lo, s, out=np.zeros_like(s), where=s != 0)
        return s, np.clip(np.rint(z), 0, self.qmax), base

    def candidates(self, base: np.ndarray, a_rtn: np.ndarray):
        """Unrounded (scale, a) starting points of the search."""
        c = self.c
        for f in _FACTORS:
            f32 = np.float32(f)
            if c.scheme == "symmetric":
                yield base * f32, a_rtn
                if c.bits > 1:  # the other orientation: largest magnitude at the top code
                    yield base * np.float32(-c.offset / (c.offset - 1) * f), a_rtn
            elif self.asym:
                s = base * f32  # shrink the range about its middle
                yield s, self.lo + (base - s) * np.float32(self.qmax / 2)
            else:
                yield base * f32, a_rtn

    def refit(self, s: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Least-squares (scale, a) for the levels (s, a) gives, stored, and the squared error
        per block of the stored pair on those levels (f64, closed form; inf if not storable)."""
        t = self.levels(s, a, exact=False)
        k = self.k
        sxt, stt = self.dot(self.x, t), self.dot(t, t)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.asym:
                st = t.sum(axis=self.ax, keepdims=True, dtype=self.acc).astype(np.float64)
                den = k * stt - st * st
                s_fit = np.where(den > 0, (k * sxt - self.sx * st) / den, s)
                m_fit = np.where(den > 0, (self.sx - s_fit * st) / k, a)
                s2, a2 = self.stored(s_fit), self.stored(m_fit)
                sf, mf = s2.astype(np.float64), a2.astype(np.float64)
                err = (
                    self.sxx
                    + sf * sf * stt
                    + k * mf * mf
                    - 2 * sf * sxt
                    - 2 * mf * self.sx
                    + 2 * sf * mf * st
                )
            else:
                s2, a2 = self.stored(np.where(stt > 0, sxt / stt, s)), a
                sf = s2.astype(np.float64)
                err = self.sxx - 2 * sf * sxt + sf * sf * stt
        return s2, a2, np.where(np.isfinite(s2) & np.isfinite(a2), err, np.inf)

    def run(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        c = self.c
        s, a, base = self.rtn()
        if not (np.isfinite(s).all() and np.isfinite(a).all()):
            raise CmfError(
                f"quantize: a block's scale or min does not fit {c.scale_dtype} "
                f"(values up to {float(np.abs(self.x).max()):.6g}); use a wider scale_dtype"
            )
        if c.search and self.m and self.k > 1:
            x = self.x
            self.sxx = self.dot(x, x)
            self.sx = x.sum(axis=self.ax, keepdims=True, dtype=self.acc).astype(np.float64)
            bs, ba = s, a
            best = np.full(self.pshape, np.inf)
            starts = list(self.candidates(base, a))
            for i in range(len(starts) + 2):  # the grid, then two refits from the best (Lloyd)
                s2, a2, err = self.refit(*(starts[i] if i < len(starts) else (bs, ba)))
                better = err < best
                best = np.where(better, err, best)
                bs = np.where(better, s2, bs)
                ba = np.where(better, a2, ba)
            keep = self.exact_error(s, a) <= self.exact_error(bs, ba)  # RTN where as good
            s, a = np.where(keep, s, bs), np.where(keep, a, ba)
        t = self.levels(s, a, exact=True)
        if not self.asym:
            t += a
        codes = t.astype(BY_NAME[code_dtype(c.bits)].numpy)
        params = {"scale": s.reshape(-1).astype(self.sdt)}
        if self.asym:
            params["min"] = a.reshape(-1).astype(self.sdt)
        elif c.scheme == "zero_point":
            params["zero"] = a.reshape(-1).astype(codes.dtype)
        return params, codes


# ----------------------------------------------------------------------------- helpers


def _part(parts: dict[str, Value], name: str, spec: ArraySpec) -> np.ndarray:
    """Part ``name`` as an array of ``spec`` (FormatError otherwise)."""
    value = parts[name]
    if not isinstance(value, np.ndarray) or value.dtype != spec.dtype.numpy:
        found = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise _fail(f"part {name!r} must be a {spec.describe()} array, found {found}")
    if value.shape != spec.shape:
        raise _fail(f"part {name!r} has shape {list(value.shape)}, {spec.describe()} expected")
    return value


def _finite_part(parts: dict[str, Value], name: str, spec: ArraySpec) -> np.ndarray:
    """A float part as f32, every value finite."""
    value = _part(parts, name, spec).astype(_F32)
    if not np.isfinite(value).all():
        bad = value[~np.isfinite(value)].reshape(-1)[0]
        raise _fail(f"part {name!r} holds a non-finite value ({bad}); every {name} must be finite")
    return value


def finite_f32(x: np.ndarray, codec: str = "quantize", verb: str = "quantize") -> np.ndarray:
    """``x`` as float32 (the input array itself when it already is); CmfError naming ``codec``
    on NaN or infinity (or f64 values beyond float32)."""
    finite = np.isfinite(x)
    if not finite.all():
        bad = x[~finite].reshape(-1)[0]
        where = np.unravel_index(int(np.argmin(finite.reshape(-1))), x.shape)
        raise CmfError(
            f"{codec}: cannot {verb} a non-finite value ({bad} at index "
            f"{list(map(int, where))}); store the tensor losslessly or clean it first"
        )
    if x.dtype == _F32:
        return x
    with np.errstate(over="ignore"):
        xf = x.astype(_F32)
    if not np.isfinite(xf).all():
        raise CmfError(f"{codec}: a value is beyond the float32 range that decoding computes in")
    return xf


def _full_blocks(a3: np.ndarray, lay: Layout) -> np.ndarray:
    """The full blocks of a (pre, n, post) array as a (pre, F, B, post) view (no copy)."""
    s0, s1, s2 = a3.strides
    shape = (lay.pre, lay.full, lay.size, lay.post)
    strides = (s0, lay.size * s1, s1, s2)
    return as_strided(a3, shape=shape, strides=strides, writeable=a3.flags.writeable)


def _blockwise(t: np.ndarray, p: np.ndarray, lay: Layout, ufunc: np.ufunc) -> None:
    """``t = ufunc(t, p)`` in place, with p's block values broadcast over their elements.

    ``t`` is (pre, n, post) float32; ``p`` holds one value per block (any shape with
    pre * nblocks * post elements), converted to float32.
    """
    p3 = np.asarray(p, dtype=_F32).reshape(lay.pre, lay.nblocks, lay.post)
    if lay.full:
        v = _full_blocks(t, lay)
        ufunc(v, p3[:, : lay.full, None, :], out=v)
    if lay.tail:
        v = t[:, lay.full * lay.size :, :]
        ufunc(v, p3[:, lay.full :, :], out=v)
