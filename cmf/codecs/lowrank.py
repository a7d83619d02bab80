"""``lowrank`` codec (spec/codecs/lowrank.md): a tensor viewed as a matrix ``W ≈ U·V``.

A float tensor of rank >= 2 is viewed as a ``(rows, cols)`` matrix (rows = the product of the
dims before ``split``, cols = the product of the rest) and stored as two float factors: part
``u`` of shape ``(rows, rank)`` and part ``v`` of shape ``(rank, cols)``, in ``factor_dtype``.
Each part is an ordinary array part, so its sub-tree can quantize it further. Decoding is::

    x[i, j] = round_T( sum_k u[i, k] * v[k, j] )     computed in binary64, any order

Matrix products are not bit-reproducible across BLAS libraries (summation order, FMA, blocking
differ), so the page does not pin bits: it pins binary64 arithmetic and a per-element tolerance
(``decode_tolerance``, ``same_decoding``) that every conforming decoder meets.

The encoder takes a truncated SVD ``W = U_r S_r V_r^T`` and balances the factors,
``u = U_r sqrt(S_r)``, ``v = sqrt(S_r) V_r^T``, so rank component ``k`` has norm ``sqrt(s_k)``
in both (they quantize alike). ``fit`` chooses the rank from a target (a rank, an energy
fraction or a relative Frobenius error) and raises :class:`FitRefused` where the rank needed
stores no fewer elements than the matrix itself (``rank * (rows + cols) >= rows * cols``).
The SVD is LAPACK's (``numpy.linalg.svd``, gesdd) in float64 up to min(rows, cols) = 1024;
beyond, a randomized SVD with power iterations for small ranks, else the eigendecomposition of
the Gram matrix (several times faster than gesdd there). ``fit`` hands its factors to
``encode`` with the value, so the SVD runs once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..dtypes import BY_NAME
from ..errors import CmfError, FitRefused, FormatError
from .base import ArraySpec, Codec, Spec, Value, require_array_spec, require_config_keys
from .registry import register

TENSOR_DTYPES = ("f32", "f16", "bf16", "f64")
FACTOR_DTYPES = ("f32", "f64", "f16", "bf16")
MAX_RANK = (1 << 32) - 1  # keeps the binary64 error bound simple (spec: r < 2^32)
FACTOR_BOUND = 2.0**480  # |factor| must be below this: no binary64 sum can overflow
_CONFIG = {"rank": (int,), "split": (int,), "factor_dtype": (str,)}
_FIT_TARGETS = ("rank", "energy", "rel_error")
_FIT_KEYS = _FIT_TARGETS + ("split", "factor_dtype")
_F64 = np.dtype("<f8")
# (precision p, emin, emax) of each tensor dtype, for the decoding tolerance
_FORMAT = {
    "f32": (24, -126, 127),
    "f16": (11, -14, 15),
    "bf16": (8, -126, 127),
    "f64": (53, -1022, 1023),
}

_EXACT_MAX = 1024  # min(rows, cols) up to which the encoder uses LAPACK's full SVD
_OVERSAMPLE = 16  # randomized SVD: extra columns beyond the rank sought ...
_POWER = 3  # ... and power iterations (trained weights have flat spectra)
_RANK_SHARE = 8  # a given rank uses the randomized SVD if rank <= min(rows, cols) / 8;
_TARGET_SHARE = 16  # a target tries widths 64, 128, ... while <= min(rows, cols) / 16
_SEED = 0x10F1  # fixed: the same tensor gives the same factors
_TILE = 1 << 20  # elements of the binary64 product computed at once while decoding


def _fail(msg: str) -> FormatError:
    return FormatError(f"lowrank: {msg}")


def break_even_rank(rows: int, cols: int) -> int:
    """The largest rank whose factors hold fewer elements than the matrix (0: none)."""
    return max(0, (rows * cols - 1) // (rows + cols)) if rows and cols else 0


def matrix_shape(shape: tuple[int, ...], split: int) -> tuple[int, int]:
    """``(rows, cols)`` of a tensor of ``shape`` split before axis ``split`` (FormatError if
    the tensor has rank < 2 or ``split`` is out of range for it)."""
    rank = len(shape)
    if rank < 2:
        raise _fail(f"needs a tensor of rank >= 2 to view as a matrix, found rank {rank}")
    if not (-rank < split < rank) or split == 0:
        raise _fail(
            f"split {split} is out of range for a rank-{rank} tensor "
            f"(1..{rank - 1} or -{rank - 1}..-1)"
        )
    s = split % rank
    return math.prod(shape[:s]), math.prod(shape[s:])


@register
@dataclass(frozen=True, kw_only=True)
class LowRank(Codec):
    """``W ≈ U·V``; see the module docstring and spec/codecs/lowrank.md."""

    name = "lowrank"
    since_minor: ClassVar[int] = 1  # defined by cmf 1.1: a writer using it writes minor 1
    lossless = False
    rank: int = 1
    split: int = -1
    factor_dtype: str = "f32"

    def __post_init__(self) -> None:
        for key, types in _CONFIG.items():
            value = getattr(self, key)
            if not isinstance(value, types) or isinstance(value, bool):
                raise _fail(f"config {key!r} must be {types[0].__name__}, found {value!r}")
        if not 1 <= self.rank <= MAX_RANK:
            raise _fail(f"rank must be in [1, {MAX_RANK}], found {self.rank}")
        if not -64 <= self.split < 64 or self.split == 0:
            raise _fail(f"split must be in [-64, 64) and not 0, found {self.split}")
        if self.factor_dtype not in FACTOR_DTYPES:
            raise _fail(
                f"factor_dtype must be one of {', '.join(FACTOR_DTYPES)}, "
                f"found {self.factor_dtype!r}"
            )

    def to_config(self) -> dict:
        return {key: getattr(self, key) for key in _CONFIG}

    @classmethod
    def from_config(cls, config: Any) -> LowRank:
        return cls(**require_config_keys(cls.name, config, _CONFIG))

    # ------------------------------------------------------------------------- specs

    def _check(self, spec: Spec) -> tuple[ArraySpec, int, int]:
        spec = require_array_spec(self.name, spec)
        if spec.dtype.name not in TENSOR_DTYPES:
            raise _fail(f"decodes to {', '.join(TENSOR_DTYPES)}, not {spec.dtype.name}")
        rows, cols = matrix_shape(spec.shape, self.split)
        if self.rank > min(rows, cols):  # also bounds the parts by the tensor: checked first
            raise _fail(
                f"rank {self.rank} exceeds min(rows, cols) = {min(rows, cols)} of the "
                f"{rows}x{cols} matrix view of {spec.describe()}"
            )
        return spec, rows, cols

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        _, rows, cols = self._check(spec)
        f = BY_NAME[self.factor_dtype]
        return {"u": ArraySpec(f, (rows, self.rank)), "v": ArraySpec(f, (self.rank, cols))}

    # ------------------------------------------------------------------------- decode

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        spec, rows, cols = self._check(spec)
        specs = self.resolve(spec)
        u = _factor(parts, "u", specs["u"])
        v = _factor(parts, "v", specs["v"]).astype(_F64)  # exact
        out = np.empty((rows, cols), dtype=spec.dtype.numpy)
        step = max(1, _TILE // max(cols, 1))
        with np.errstate(over="ignore"):  # rounding to f32/f16/bf16 may overflow: IEEE inf
            for i in range(0, rows, step):  # binary64 products and sums, then rounded to T
                out[i : i + step] = np.matmul(u[i : i + step].astype(_F64), v)
        return out.reshape(spec.shape)

    # ------------------------------------------------------------------------- encode

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        spec, rows, cols = self._check(spec)
        cached = getattr(value, "_lowrank", None)
        if cached is not None and cached[0] == (self, spec):
            return {"u": cached[1], "v": cached[2]}  # factors computed by fit
        w = _matrix(value, spec, rows, cols)
        U, s, Vt = _top_svd(w, self.rank)
        u, v = _balanced(U, s, Vt, self.rank, self.factor_dtype)
        return {"u": u, "v": v}

    # ------------------------------------------------------------------------- fit

    @classmethod
    def check_fit(cls, options: Any) -> None:
        _fit_options(options)

    @classmethod
    def fit(cls, value: Value, spec: Spec, options: dict[str, Any]) -> tuple[LowRank, Value]:
        """The codec for ``value`` at the target of ``options`` (one of ``rank``, ``energy``,
        ``rel_error``; optionally ``split``, ``factor_dtype``), and ``value`` carrying the
        factors for ``encode``. FitRefused where low rank stores no fewer elements."""
        opts = _fit_options(options)
        if not isinstance(spec, ArraySpec) or spec.dtype.name not in TENSOR_DTYPES:
            shown = spec.describe() if isinstance(spec, ArraySpec) else "bytes"
            raise FitRefused(f"lowrank: cannot fit {shown}; it takes {', '.join(TENSOR_DTYPES)}")
        split = opts.get("split", -1)
        try:
            rows, cols = matrix_shape(spec.shape, split)
        except FormatError as exc:
            raise FitRefused(str(exc)) from None
        factor_dtype = opts.get("factor_dtype", "f64" if spec.dtype.name == "f64" else "f32")
        limit = break_even_rank(rows, cols)
        where = f"{rows}x{cols} matrix view of {spec.describe()}"
        if limit < 1:
            raise FitRefused(f"lowrank: the {where} is too small to save anything at rank 1")
        if opts.get("rank", 0) > limit:
            raise FitRefused(
                f"lowrank: rank {opts['rank']} stores no fewer elements than the "
                f"{where} (rank <= {limit} does)"
            )
        w = _matrix(value, spec, rows, cols)
        if "rank" in opts:
            rank = opts["rank"]
            U, s, Vt = _top_svd(w, rank)
        else:
            if "energy" in opts:
                allowed, asked = 1.0 - opts["energy"], f"energy {opts['energy']}"
            else:
                allowed, asked = opts["rel_error"] ** 2, f"rel_error {opts['rel_error']}"
            U, s, Vt, rank = _target_svd(w, allowed, limit, f"{asked} on the {where}")
        codec = cls(rank=rank, split=split, factor_dtype=factor_dtype)
        u, v = _balanced(U, s, Vt, rank, factor_dtype)
        fitted = np.asarray(value).view(_Fitted)
        fitted._lowrank = ((codec, spec), u, v)
        return codec, fitted


class _Fitted(np.ndarray):
    """The fitted value, carrying ``((codec, spec), u, v)`` from ``fit`` to ``encode``."""

    _lowrank: tuple | None = None


# ----------------------------------------------------------------------------- fit options


def _fit_options(options: Any) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise CmfError(f"lowrank: fit options must be a map, found {type(options).__name__}")
    unknown = set(options) - set(_FIT_KEYS)
    if unknown:
        raise CmfError(
            f"lowrank: unknown fit options {sorted(map(str, unknown))}; "
            f"expected one of {list(_FIT_TARGETS)}, optionally split, factor_dtype"
        )
    targets = [key for key in _FIT_TARGETS if key in options]
    if len(targets) != 1:
        raise CmfError(f"lowrank: fit needs exactly one of {list(_FIT_TARGETS)}, found {targets}")
    for key, value in options.items():
        if key in ("rank", "split"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise CmfError(f"lowrank: fit option {key!r} must be an int, found {value!r}")
        elif key in ("energy", "rel_error"):
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not (math.isfinite(value))
            ):
                raise CmfError(f"lowrank: fit option {key!r} must be a number, found {value!r}")
    if "rank" in options and not 1 <= options["rank"] <= MAX_RANK:
        raise CmfError(f"lowrank: fit rank must be in [1, {MAX_RANK}], found {options['rank']}")
    if "energy" in options and not 0 < options["energy"] <= 1:
        raise CmfError(f"lowrank: fit energy must be in (0, 1], found {options['energy']}")
    if "rel_error" in options and not 0 <= options["rel_error"] < 1:
        raise CmfError(f"lowrank: fit rel_error must be in [0, 1), found {options['rel_error']}")
    # split and factor_dtype: the config's own checks
    LowRank(split=options.get("split", -1), factor_dtype=options.get("factor_dtype", "f32"))
    return options


# ----------------------------------------------------------------------------- SVD


def _matrix(value: Value, spec: ArraySpec, rows: int, cols: int) -> np.ndarray:
    """``value`` as a finite (rows, cols) binary64 matrix; CmfError otherwise."""
    x = np.asarray(value)
    if x.shape != spec.shape:
        raise CmfError(f"lowrank: array of shape {list(x.shape)}, {spec.describe()} expected")
    x = np.asarray(x, dtype=spec.dtype.numpy)
    finite = np.isfinite(x)
    if not finite.all():
        where = np.unravel_index(int(np.argmin(finite.reshape(-1))), x.shape)
        raise CmfError(
            f"lowrank: cannot factor a non-finite value ({x[where]} at index "
            f"{list(map(int, where))}); store the tensor losslessly or clean it first"
        )
    return x.reshape(rows, cols).astype(_F64)


def _exact_svd(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        return np.linalg.svd(w, full_matrices=False)
    except np.linalg.LinAlgError as exc:
        raise CmfError(
            f"lowrank: the SVD of a {w.shape[0]}x{w.shape[1]} matrix failed: {exc}"
        ) from exc


def _gram_svd(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every singular triplet from the eigendecomposition of the smaller Gram matrix (W·Wᵀ or
    Wᵀ·W): several times faster than gesdd on large matrices, and as accurate for every
    component with s > ~1e-7·s_1 (its square is what the eigensolver sees)."""
    tall = w.shape[0] > w.shape[1]
    a = w.T if tall else w  # (k, N), k <= N
    try:
        lam, q = np.linalg.eigh(a @ a.T)
    except np.linalg.LinAlgError as exc:
        raise CmfError(
            f"lowrank: the eigendecomposition of a {a.shape[0]}-square Gram matrix failed: {exc}"
        ) from exc
    q = q[:, ::-1]  # decreasing eigenvalues
    b = q.T @ a  # (k, N): row i has norm s_i
    s = np.linalg.norm(b, axis=1)
    order = np.argsort(-s, kind="stable")  # eigenvalue order can differ from the norms'
    q, b, s = q[:, order], b[order], s[order]
    unit = b / np.where(s > 0, s, 1.0)[:, None]
    return (unit.T, s, q.T) if tall else (q, s, unit)


def _full_svd(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _exact_svd(w) if min(w.shape) <= _EXACT_MAX else _gram_svd(w)


def _randomized_svd(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ``rank`` singular triplets by a randomized range finder (Halko, Martinsson and
    Tropp 2011) with ``_POWER`` re-orthonormalized power iterations."""
    m, n = w.shape
    width = min(rank + _OVERSAMPLE, m, n)
    omega = np.random.default_rng(_SEED).standard_normal((n, width))
    q, _ = np.linalg.qr(w @ omega)
    for _ in range(_POWER):
        z, _ = np.linalg.qr(w.T @ q)
        q, _ = np.linalg.qr(w @ z)
    ub, s, vt = _exact_svd(q.T @ w)
    return q @ ub[:, :rank], s[:rank], vt[:rank]


def _top_svd(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At least the top ``rank`` singular triplets: all of them where the matrix is small or
    the rank a large part of it, else a randomized SVD."""
    k = min(w.shape)
    if k <= _EXACT_MAX or rank > k // _RANK_SHARE:
        return _full_svd(w)
    return _randomized_svd(w, rank)


def _target_svd(
    w: np.ndarray, allowed: float, limit: int, asked: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Singular triplets and the smallest rank r whose dropped energy (the sum of s_i^2 for
    i > r) is at most ``allowed`` times the total; FitRefused if that needs r > ``limit``.
    Large matrices try randomized SVDs of width 64, 128, ... up to min(rows, cols) / 16, then
    compute every component."""
    total = float(np.vdot(w, w))
    k = min(w.shape)
    width = min(limit, 64)
    while True:
        if k <= _EXACT_MAX or width > k // _TARGET_SHARE:
            U, s, Vt = _full_svd(w)
            s2 = s.astype(_F64) ** 2
            dropped = np.append(np.cumsum(s2[::-1])[::-1][1:], 0.0)  # dropped[r-1]: keep r
            exhaustive = True
        else:
            U, s, Vt = _randomized_svd(w, width)
            dropped = np.maximum(total - np.cumsum(s.astype(_F64) ** 2), 0.0)
            exhaustive = width >= limit
        ok = dropped <= allowed * total
        rank = int(np.argmax(ok)) + 1 if ok.any() else None
        if rank is not None and rank <= limit:
            return U, s, Vt, rank
        if exhaustive:
            best = math.sqrt(dropped[min(limit, len(dropped)) - 1] / total) if total else 0.0
            need = f"rank {rank}" if rank is not None else f"a rank above {len(dropped)}"
            raise FitRefused(
                f"lowrank: {asked} needs {need}, but only rank <= {limit} stores fewer "
                f"elements (rank {limit} leaves rel_error {best:.4g})"
            )
        width = min(2 * width, limit)


def _balanced(
    U: np.ndarray, s: np.ndarray, Vt: np.ndarray, rank: int, factor_dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """``u = U_r sqrt(S_r)``, ``v = sqrt(S_r) V_r^T`` in ``factor_dtype``, each component's
    sign chosen so that its largest entry of ``v`` is positive (a deterministic choice)."""
    root = np.sqrt(np.maximum(s[:rank], 0.0))
    u = U[:, :rank] * root
    v = Vt[:rank] * root[:, None]
    if v.size:
        top = np.take_along_axis(v, np.abs(v).argmax(axis=1)[:, None], axis=1)[:, 0]
        sign = np.where(top < 0, -1.0, 1.0)
        u *= sign
        v *= sign[:, None]
    dt = BY_NAME[factor_dtype].numpy
    with np.errstate(over="ignore"):
        u, v = u.astype(dt), v.astype(dt)
    for name, f in (("u", u), ("v", v)):
        f64 = f.astype(_F64)
        if not np.isfinite(f64).all() or (f.size and float(np.abs(f64).max()) >= FACTOR_BOUND):
            big = float(np.abs(np.concatenate([U[:, :rank].ravel(), Vt[:rank].ravel()])).max())
            raise CmfError(
                f"lowrank: factor {name!r} does not fit {factor_dtype} (singular values up "
                f"to {float(s[0]) if s.size else 0:.6g}, vectors up to {big:.3g}); use a "
                f"wider factor_dtype"
            )
    return np.ascontiguousarray(u), np.ascontiguousarray(v)


# ----------------------------------------------------------------------------- decoding


def _factor(parts: dict[str, Value], name: str, spec: ArraySpec) -> np.ndarray:
    """Part ``name`` checked against ``spec``: dtype, shape, every value finite and below
    FACTOR_BOUND in magnitude."""
    value = parts.get(name)
    if not isinstance(value, np.ndarray) or value.dtype != spec.dtype.numpy:
        found = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise _fail(f"part {name!r} must be a {spec.describe()} array, found {found}")
    if value.shape != spec.shape:
        raise _fail(f"part {name!r} has shape {list(value.shape)}, {spec.describe()} expected")
    with np.errstate(invalid="ignore"):  # ml_dtypes flags a bf16 signalling NaN as invalid
        finite = np.isfinite(value)
    if not finite.all():
        bad = value[~finite].reshape(-1)[0]
        raise _fail(f"part {name!r} holds a non-finite value ({bad}); factors must be finite")
    if value.dtype == _F64 and value.size and float(np.abs(value).max()) >= FACTOR_BOUND:
        raise _fail(
            f"part {name!r} holds {float(np.abs(value).max()):.6g}; factor values must "
            f"be below 2^480 in magnitude"
        )
    return value


def ulp(y: np.ndarray, dtype: str) -> np.ndarray:
    """ulp_T(y) of the spec, elementwise (y binary64, finite or clamped): the spacing of
    ``dtype`` at |y|, the subnormal spacing below its normal range, and ulp(max) above it."""
    p, emin, emax = _FORMAT[dtype]
    y = np.asarray(y, dtype=_F64)
    _, e = np.frexp(np.abs(y))  # |y| = m * 2^e, m in [0.5, 1): floor(log2|y|) = e - 1
    e = np.where(y == 0, emin, np.clip(e - 1, emin, emax))
    return np.ldexp(1.0, (e - p + 1).astype(np.int32))


def decode_tolerance(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """delta of the spec per element: ``r 2^-52 sum_k |u_ik v_kj| + r 2^-1073`` (binary64,
    enlarged by a relative 2^-20, more than the error of computing it for r < 2^32)."""
    r = u.shape[1]
    a = np.abs(u.astype(_F64)) @ np.abs(v.astype(_F64))
    return (a * (r * 2.0**-52) + r * 2.0**-1073) * (1 + 2.0**-20)


def _clamp(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` as binary64 clamped to ±2^(emax+1) (so ±inf counts as that; f64: unchanged)."""
    x = np.asarray(x).astype(_F64)
    if dtype == "f64":
        return x
    big = 2.0 ** (_FORMAT[dtype][2] + 1)
    return np.clip(x, -big, big)


def same_decoding(a: np.ndarray, b: np.ndarray, u: np.ndarray, v: np.ndarray, dtype: str) -> bool:
    """True if tensors ``a`` and ``b`` (same shape) can both be conforming decodings of the
    factors ``u``, ``v`` to ``dtype``: ``|a - b| <= ulp(a) + ulp(b) + 2 delta`` elementwise
    (after clamping), the check golden vectors use instead of byte equality."""
    rows, cols = u.shape[0], v.shape[1]
    a2 = _clamp(a, dtype).reshape(rows, cols)
    b2 = _clamp(b, dtype).reshape(rows, cols)
    same = a2 == b2  # includes equal infinities (f64) and ±0
    bound = ulp(a2, dtype) + ulp(b2, dtype) + 2 * decode_tolerance(u, v)
    with np.errstate(invalid="ignore"):
        return bool((same | (np.abs(a2 - b2) <= bound)).all())
