"""``codebook`` codec (spec/codecs/codebook.md): palettization (Deep Compression's weight sharing).

A float tensor becomes one index per element (part ``indices``, ``u8`` for ``k <= 256``, else
``u16``) into a table of ``k`` float32 values (part ``codebook``), optionally times one scale
per block (part ``scale``; blocks as in ``quantize``: runs of ``block`` elements along ``axis``).
Decoding is pinned to float32::

    v = codebook[u]                 (exact)
    v = round_f32(v * s)            (only with a scale part)
    x = v rounded to the tensor dtype (nearest, ties to even)

The encoder fits the codebook by weighted 1-D k-means (Lloyd iterations on the sorted distinct
values with prefix sums, so one iteration costs O(k log n)), or uses a fixed table: NF4 (QLoRA)
or FP4 (OCP E2M1, index = the E2M1 bit pattern), both normalized to [-1, 1] and meant for
per-block absmax scales. The codebook part is an ordinary part, so a group of tensors can share
one (``cmf.plan.recipe.prepare`` fits it on a sample of every member; the file stores it once as
a shared value, spec/format.md §3.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from ..dtypes import BY_NAME
from ..errors import CmfError, FormatError
from .base import ArraySpec, Codec, Spec, Value, require_array_spec, require_config_keys
from .quantize import Layout, _blockwise, _full_blocks, block_layout, finite_f32
from .registry import register

MAX_K = 1 << 16
TENSOR_DTYPES = ("f32", "f16", "bf16", "f64")
SCALE_DTYPES = ("f32", "f16", "bf16")
_F32 = np.dtype("<f4")
_CONFIG = {  # key -> allowed Python types (bool kept apart from int)
    "k": (int,),
    "block": (int,),
    "axis": (int, type(None)),
    "scale_dtype": (str, type(None)),
}
_CHUNK = 1 << 20  # elements assigned at once (bounded f64 scratch)
_MAX_ITER = 300  # Lloyd iterations at most (1-D Lloyd from quantiles converges well before)
_DP_MAX_K = 256  # up to this k, the start is the exact optimum on a compressed form (below)
_ATOMS = 4096  # values are compressed to at most this many weighted atoms for that
SAMPLE = 1 << 16  # values per member tensor when a group's codebook is fitted

# NF4 (QLoRA, bitsandbytes): the 16 levels in index order; exact float32 values.
NF4 = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=_F32,
)


def _e2m1(code: int) -> float:
    """The OCP FP4 E2M1 value of a 4-bit code (sign | 2 exponent bits | 1 mantissa bit)."""
    sign = -1.0 if code & 8 else 1.0
    e, m = (code >> 1) & 3, code & 1
    return sign * (m * 0.5 if e == 0 else 2.0 ** (e - 1) * (1 + m / 2))


# FP4: E2M1 values divided by their largest magnitude 6 (index = E2M1 code; code 8 is -0.0).
FP4 = np.array([_e2m1(i) / 6 for i in range(16)], dtype=_F32)
FIXED = {"nf4": NF4, "fp4": FP4}
for _table in FIXED.values():
    _table.setflags(write=False)


def _fail(msg: str) -> FormatError:
    return FormatError(f"codebook: {msg}")


def index_dtype(k: int) -> str:
    """The dtype of indices into a codebook of ``k`` entries: u8 up to 256, else u16."""
    return "u8" if k <= 256 else "u16"


@register
@dataclass(frozen=True, kw_only=True)
class Codebook(Codec):
    """Palettization; see the module docstring and spec/codecs/codebook.md.

    ``centroids`` is not configuration: it is the codebook the encoder writes (set by ``fit``
    or by a group pre-pass); when it is None, ``encode`` fits ``k`` centroids to the data.
    """

    name = "codebook"
    lossless = False
    shared_parts: ClassVar[tuple[str, ...]] = ("codebook",)  # parts a group of tensors can share
    since_minor: ClassVar[int] = 1  # defined by cmf 1.1: a writer using it writes minor 1
    k: int = 16
    block: int = 0
    axis: int | None = None
    scale_dtype: str | None = None
    centroids: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        for key, types in _CONFIG.items():
            value = getattr(self, key)
            if not isinstance(value, types) or isinstance(value, bool):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise _fail(f"config {key!r} must be {names}, found {value!r:.100}")
        if not 1 <= self.k <= MAX_K:
            raise _fail(f"k must be in [1, {MAX_K}], found {self.k}")
        if not 0 <= self.block < 2**53:
            raise _fail(f"block must be 0 (whole run) or a positive length, found {self.block}")
        if self.axis is not None and not -64 <= self.axis < 64:
            raise _fail(f"axis must be null or in [-64, 64), found {self.axis}")
        if self.scale_dtype is None:
            if self.block != 0 or self.axis is not None:
                raise _fail(
                    "without a scale (scale_dtype null), block must be 0 and axis null; "
                    f"found block {self.block}, axis {self.axis}"
                )
        elif self.scale_dtype not in SCALE_DTYPES:
            raise _fail(
                f"scale_dtype must be null or one of {', '.join(SCALE_DTYPES)}, "
                f"found {self.scale_dtype!r:.100}"
            )
        if self.centroids is not None:
            c = np.array(self.centroids, dtype=_F32).reshape(-1)  # a private, read-only copy
            if c.shape != (self.k,) or not np.isfinite(c).all():
                raise CmfError(f"codebook: centroids must be {self.k} finite values")
            c.setflags(write=False)
            object.__setattr__(self, "centroids", c)

    def to_config(self) -> dict:
        return {key: getattr(self, key) for key in _CONFIG}

    @classmethod
    def from_config(cls, config: Any) -> Codebook:
        return cls(**require_config_keys(cls.name, config, _CONFIG))

    # ------------------------------------------------------------------------- specs

    @property
    def scaled(self) -> bool:
        return self.scale_dtype is not None

    def _check(self, spec: Spec) -> ArraySpec:
        spec = require_array_spec(self.name, spec)
        if spec.dtype.name not in TENSOR_DTYPES:
            raise _fail(f"decodes to {', '.join(TENSOR_DTYPES)}, not {spec.dtype.name}")
        return spec

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """The scale blocks of a tensor of ``shape`` (as quantize's; FormatError on a bad axis)."""
        return block_layout(shape, self.axis, self.block, self.name)

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        spec = self._check(spec)
        parts: dict[str, Spec] = {
            "indices": ArraySpec(BY_NAME[index_dtype(self.k)], spec.shape),
            "codebook": ArraySpec(BY_NAME["f32"], (self.k,)),
        }
        if self.scaled:
            blocks = self.layout(spec.shape).blocks_shape
            parts["scale"] = ArraySpec(BY_NAME[self.scale_dtype], blocks)
        return parts

    # ------------------------------------------------------------------------- decode

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        spec = self._check(spec)
        specs = self.resolve(spec)
        idx = _part(parts, "indices", specs["indices"])
        table = _finite(_part(parts, "codebook", specs["codebook"]), "codebook")
        if idx.size and int(idx.max()) >= self.k:
            bad = int(idx.max())
            raise _fail(f"index {bad} is out of range for a codebook of {self.k} entries")
        t = np.take(table, idx.reshape(-1)).reshape(spec.shape)  # a new f32 array (exact)
        if self.scaled:
            lay = self.layout(spec.shape)
            scale = _finite(_part(parts, "scale", specs["scale"]).astype(_F32), "scale")
            with np.errstate(over="ignore"):  # IEEE overflow to infinity (spec): no warning
                _blockwise(t.reshape(lay.pre, lay.n, lay.post), scale, lay, np.multiply)
        with np.errstate(over="ignore"):  # f16/bf16: IEEE overflow to infinity (spec)
            return t.astype(spec.dtype.numpy, copy=False)

    # ------------------------------------------------------------------------- encode

    def normalized(self, value: Value, spec: Spec) -> tuple[np.ndarray, np.ndarray | None]:
        """``(t, scale)``: the values the codebook must approximate, flat float32 in C order
        (``value / scale`` per block when scaled), and the scale part (None when unscaled)."""
        spec = self._check(spec)
        x = np.asarray(value)
        if x.shape != spec.shape:
            raise CmfError(f"codebook: array of shape {x.shape}, {spec.describe()} expected")
        xf = finite_f32(np.ascontiguousarray(x, dtype=spec.dtype.numpy), self.name, "encode")
        if not self.scaled:
            return xf.reshape(-1), None
        lay = self.layout(spec.shape)
        x3 = xf.reshape(lay.pre, lay.n, lay.post)
        amax = np.zeros((lay.pre, lay.nblocks, lay.post), dtype=_F32)
        if lay.full:
            np.max(np.abs(_full_blocks(x3, lay)), axis=2, out=amax[:, : lay.full, :])
        if lay.tail:
            tail = x3[:, lay.full * lay.size :, :]
            amax[:, lay.full :, :] = np.abs(tail).max(axis=1, keepdims=True)
        sdt = BY_NAME[self.scale_dtype].numpy
        with np.errstate(over="ignore"):
            scale = amax.astype(sdt)
        s32 = scale.astype(_F32)
        if not np.isfinite(s32).all():
            raise CmfError(
                f"codebook: a block's absmax does not fit {self.scale_dtype} "
                f"(values up to {float(amax.max()):.6g}); use a wider scale_dtype"
            )
        s32[s32 == 0] = 1  # an all-zero block: any level times its zero scale decodes to zero
        t = x3.copy() if np.may_share_memory(xf, x) else x3  # never divide the caller's array
        _blockwise(t, s32, lay, np.divide)
        return t.reshape(-1), scale.reshape(lay.blocks_shape)

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        spec = self._check(spec)
        t, scale = self.normalized(value, spec)
        table = self.centroids
        if table is None:  # fit k centroids to this tensor (config given without 'fit')
            table = _pad(kmeans_1d(t, None, self.k), self.k)
        idx = assign(t, table).astype(BY_NAME[index_dtype(self.k)].numpy)
        out: dict[str, Value] = {
            "indices": idx.reshape(spec.shape),
            "codebook": np.array(table, dtype=_F32),
        }
        if scale is not None:
            out["scale"] = scale
        return out

    # ------------------------------------------------------------------------- fitting

    @classmethod
    def check_fit(cls, options: Any) -> None:
        _fit_options(options)

    @classmethod
    def fit(cls, value: Value, spec: Spec, options: dict[str, Any]) -> tuple[Codebook, Value]:
        o = _fit_options(options)
        if o.get("shared") is not None:
            raise CmfError(
                f"codebook: fit option 'shared' ({o['shared']!r}) needs the recipe's group "
                "pre-pass (cmf.plan.recipe.prepare) before encoding"
            )
        base = cls(**o["config"])
        if o["fixed"] is not None:
            base._check(spec)
            return replace(base, centroids=FIXED[o["fixed"]]), value
        table = kmeans_1d(base.normalized(value, spec)[0], None, base.k)
        table = _distinct_f32(table if table.size else np.zeros(1))  # an empty tensor: k = 1
        return replace(base, k=len(table), centroids=table), value

    @classmethod
    def group_sample(
        cls, value: Value, spec: Spec, options: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """A member's share of a group fit: up to ``sample`` of its normalized values (a fixed
        pseudo-random choice, so it is deterministic) and each one's weight (the elements it
        stands for). Non-finite values are left out (encoding that tensor fails later)."""
        o = _fit_options(options)
        codec = cls(**o["config"])
        if o["fixed"] is not None:
            codec._check(spec)
            return np.zeros(0, _F32), np.zeros(0)
        x = np.asarray(value)
        finite = np.isfinite(x)
        if not finite.all():
            x = np.where(finite, x, 0).astype(x.dtype)
        t, _ = codec.normalized(x, spec)
        n = t.size
        if n > o["sample"]:
            rng = np.random.default_rng(0x5EED)
            t = t[np.sort(rng.integers(0, n, o["sample"]))]
        return np.ascontiguousarray(t, dtype=_F32), np.full(t.size, n / max(t.size, 1))

    @classmethod
    def fit_group(
        cls, samples: list[tuple[np.ndarray, np.ndarray]], options: dict[str, Any]
    ) -> Codebook:
        """The one codec a group shares: its codebook fitted on every member's sample."""
        o = _fit_options(options)
        base = cls(**o["config"])
        if o["fixed"] is not None:
            return replace(base, centroids=FIXED[o["fixed"]])
        t = np.concatenate([s for s, _ in samples]) if samples else np.zeros(0, _F32)
        w = np.concatenate([w for _, w in samples]) if samples else np.zeros(0)
        table = kmeans_1d(t, w, base.k)
        table = _distinct_f32(table if table.size else np.zeros(1))
        return replace(base, k=len(table), centroids=table)

    def shared_values(self) -> dict[str, np.ndarray]:
        """The values of ``shared_parts`` this codec writes (the same for every tensor)."""
        if self.centroids is None:
            raise CmfError("codebook: a shared codebook must be fitted first")
        return {"codebook": self.centroids}


# ----------------------------------------------------------------------------- fit options

_FIT_KEYS = ("k", "fixed", "shared", "block", "axis", "scale_dtype", "sample")


def _fit_options(options: Any) -> dict[str, Any]:
    """Check fit options; return ``{"config": {...}, "fixed", "shared", "sample"}``.

    Exactly one of ``k`` (1..65536, learned by k-means) or ``fixed`` ("nf4" or "fp4", k = 16).
    ``shared``: a group name (one codebook for every tensor of the group). ``block``, ``axis``,
    ``scale_dtype``: the scale blocks; a fixed codebook defaults to absmax scales in blocks of
    64 along the last axis (as bitsandbytes), a learned one to no scale unless ``block`` or
    ``axis`` is given (then ``scale_dtype`` defaults to f32). ``sample``: values per member
    tensor for a group fit (default 65536).
    """
    if not isinstance(options, dict):
        raise CmfError(f"codebook: fit options must be a map, found {type(options).__name__}")
    unknown = sorted(set(map(str, options)) - set(_FIT_KEYS))
    if unknown:
        raise CmfError(
            f"codebook: unknown fit options {unknown}; expected some of {list(_FIT_KEYS)}"
        )
    if ("k" in options) == ("fixed" in options):
        raise CmfError("codebook: fit options need exactly one of 'k' (learned) and 'fixed'")
    fixed = options.get("fixed")
    if fixed is not None and fixed not in FIXED:
        raise CmfError(f"codebook: 'fixed' must be one of {', '.join(FIXED)}, found {fixed!r:.100}")
    k = options.get("k", 16)
    shared = options.get("shared")
    if shared is not None and (not isinstance(shared, str) or not shared):
        raise CmfError(f"codebook: 'shared' must be a non-empty group name, found {shared!r:.100}")
    sample = options.get("sample", SAMPLE)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise CmfError(f"codebook: 'sample' must be a positive integer, found {sample!r:.100}")
    scaled = fixed is not None or "block" in options or "axis" in options
    default_dtype = "f32" if scaled else None
    scale_dtype = options.get("scale_dtype", default_dtype)
    if scale_dtype is None:
        config = {"k": k, "block": options.get("block", 0), "axis": options.get("axis")}
    else:
        config = {
            "k": k,
            "block": options.get("block", 64 if fixed else 0),
            "axis": options.get("axis", -1),
        }
    config["scale_dtype"] = scale_dtype
    Codebook(**config)  # check the config values
    return {"config": config, "fixed": fixed, "shared": shared, "sample": sample}


# ----------------------------------------------------------------------------- k-means


def kmeans_1d(values: np.ndarray, weights: np.ndarray | None, k: int) -> np.ndarray:
    """Weighted 1-D k-means: at most ``k`` sorted float64 centroids (fewer only when ``values``
    has fewer distinct values). Deterministic; the algorithm is on spec/codecs/codebook.md.

    Values collapse to sorted distinct values with weights, so a cluster is an interval and
    prefix sums give any interval's error in O(1). Start: for ``k <= 256`` the exact optimum
    (dynamic programming) over at most 4096 weighted atoms; else the better of the weighted
    quantiles and the quantiles of density^(1/3) (Panter-Dite). Then Lloyd on all values.
    """
    x = np.asarray(values).reshape(-1)
    if weights is None:
        u, counts = np.unique(x, return_counts=True)
        u, w = u.astype(np.float64), counts.astype(np.float64)
    else:
        w_in = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w_in.shape != x.shape:
            raise CmfError("codebook: one weight per value is needed")
        order = np.argsort(x, kind="stable")
        xs, ws = x[order].astype(np.float64), w_in[order]
        keep = ws > 0
        xs, ws = xs[keep], ws[keep]
        if xs.size == 0:
            return np.zeros(0)
        first = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
        u, w = xs[first], np.add.reduceat(ws, first)
    if u.size <= k:
        return u
    p = _Prefix(u, w)
    if k <= _DP_MAX_K:
        return p.lloyd(p.optimum_of_atoms(k), k)
    q = (np.arange(k) + 0.5) / k
    starts = [u[np.minimum(np.searchsorted(p.cw[1:], q * p.cw[-1], side="right"), u.size - 1)]]
    hist, edges = np.histogram(u, bins=int(min(1 << 16, 16 * k)), weights=w)
    cum = np.concatenate(([0.0], np.cumsum(np.cbrt(hist))))
    starts.append(np.interp(q * cum[-1], cum, edges))
    fits = [p.lloyd(np.unique(start), k) for start in starts]
    return min(fits, key=p.sse)


class _Prefix:
    """Sorted distinct values ``u`` with weights, and prefix sums of w, w*u and w*u^2.
    Centroids ``c`` are sorted; cluster j is the interval [cuts[j], cuts[j+1]) of ``u``."""

    def __init__(self, u: np.ndarray, w: np.ndarray) -> None:
        self.u, self.n = u, u.size
        self.cw = np.concatenate(([0.0], np.cumsum(w)))
        self.cs = np.concatenate(([0.0], np.cumsum(w * u)))
        self.cq = np.concatenate(([0.0], np.cumsum(w * u * u)))

    def cuts(self, c: np.ndarray) -> np.ndarray:
        mids = np.searchsorted(self.u, (c[:-1] + c[1:]) / 2, side="right")
        return np.concatenate(([0], mids, [self.n]))

    def sums(self, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = cuts[:-1], cuts[1:]
        return self.cw[b] - self.cw[a], self.cs[b] - self.cs[a], self.cq[b] - self.cq[a]

    def sse(self, c: np.ndarray) -> float:
        """Weighted squared error of assigning every value to its nearest centroid."""
        w, s, q = self.sums(self.cuts(c))
        return float(np.sum(np.maximum(q - 2 * c * s + c * c * w, 0.0)))

    def lloyd(self, c: np.ndarray, k: int) -> np.ndarray:
        u = self.u
        tol = 1e-9 * (u[-1] - u[0])
        for _ in range(_MAX_ITER):
            if c.size < k:
                c = self.split(c, k)
            cuts = self.cuts(c)
            wc, sc, _ = self.sums(cuts)
            live = wc > 0
            new = sc[live] / wc[live]
            new = np.clip(new, u[cuts[:-1][live]], u[cuts[1:][live] - 1])  # rounding stays inside
            done = new.size == c.size and float(np.max(np.abs(new - c))) <= tol
            c = new
            if done:
                break
        return c

    def cost(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Squared error of each interval [a, b) about its mean (0 when empty)."""
        w = self.cw[b] - self.cw[a]
        s = self.cs[b] - self.cs[a]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.maximum((self.cq[b] - self.cq[a]) - np.where(w > 0, s * s / w, 0.0), 0.0)

    def optimum_of_atoms(self, k: int) -> np.ndarray:
        """Centroids of the optimal k clusters of the values compressed to atoms (exact when
        the values are few), as means over the full values of the intervals found."""
        n = self.n
        if n <= _ATOMS:
            cuts = np.arange(n + 1)
        else:
            half = _ATOMS // 2
            weights = np.linspace(0, self.cw[-1], half + 1)[1:-1]
            by_weight = np.searchsorted(self.cw[1:], weights, side="right")
            widths = np.linspace(self.u[0], self.u[-1], half + 1)[1:-1]
            by_width = np.searchsorted(self.u, widths)
            cuts = np.unique(np.concatenate(([0, n], by_weight, by_width)))
        w, s, q = self.sums(cuts)
        atoms = _Prefix(s / w, w)  # atom means: the within-atom error is a constant
        bounds = cuts[optimal_intervals(atoms, k)]
        wc, sc, _ = self.sums(bounds)
        return sc[wc > 0] / wc[wc > 0]

    def split(self, c: np.ndarray, k: int) -> np.ndarray:
        """Grow ``c`` towards ``k`` centroids by splitting the clusters of largest squared
        error, each at its mean (values below it form one half)."""
        u = self.u
        while c.size < k:
            cuts = self.cuts(c)
            a, b = cuts[:-1], cuts[1:]
            wc, sc, qc = self.sums(cuts)
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = np.where(wc > 0, sc / wc, 0.0)
                sse = qc - np.where(wc > 0, sc * mean, 0.0)
            sse[b - a < 2] = -1  # a single distinct value cannot be split
            order = np.argsort(-sse, kind="stable")[: k - c.size]
            order = order[sse[order] >= 0]
            if order.size == 0:
                break
            extra = []
            for j in order:
                m = int(np.clip(np.searchsorted(u, mean[j], side="right"), a[j] + 1, b[j] - 1))
                for lo, hi in ((a[j], m), (m, b[j])):
                    extra.append((self.cs[hi] - self.cs[lo]) / (self.cw[hi] - self.cw[lo]))
            grown = np.unique(np.concatenate((np.delete(c, order), extra)))
            if grown.size <= c.size:
                break
            c = grown
        return c


def optimal_intervals(p: _Prefix, k: int) -> np.ndarray:
    """Cut positions ``0 = b_0 <= ... <= b_k = n`` of the k intervals of ``p``'s sorted values
    with the least total squared error (clusters may be empty only when n < k).

    D_l(j) = min over i <= j of D_{l-1}(i) + cost(i, j); the minimizing i is monotone in j, so
    each layer is solved by divide and conquer, one numpy step per recursion level."""
    n = p.n
    every = np.arange(n + 1)
    d = p.cost(np.zeros(n + 1, np.int64), every)
    opts = []
    for _ in range(1, k):
        d_new, opt = np.empty(n + 1), np.empty(n + 1, np.int64)
        jlo, jhi = np.array([0]), np.array([n])  # nodes: j in [jlo, jhi], i in [ilo, ihi]
        ilo, ihi = np.array([0]), np.array([n])
        while jlo.size:
            mid = (jlo + jhi) // 2
            cnt = np.minimum(ihi, mid) - ilo + 1
            starts = np.cumsum(cnt) - cnt
            seg = np.repeat(np.arange(mid.size), cnt)
            i = ilo[seg] + (np.arange(int(cnt.sum())) - starts[seg])
            vals = d[i] + p.cost(i, mid[seg])
            mins = np.minimum.reduceat(vals, starts)
            hit = np.flatnonzero(vals == mins[seg])
            first = hit[np.searchsorted(seg[hit], np.arange(mid.size))]  # the first minimum
            d_new[mid], opt[mid] = mins, i[first]
            om = opt[mid]
            left, right = mid > jlo, mid < jhi
            jlo, jhi, ilo, ihi = (
                np.concatenate((jlo[left], mid[right] + 1)),
                np.concatenate((mid[left] - 1, jhi[right])),
                np.concatenate((ilo[left], om[right])),
                np.concatenate((om[left], ihi[right])),
            )
        d = d_new
        opts.append(opt)
    cuts, j = [n], n
    for opt in reversed(opts):
        j = int(opt[j])
        cuts.append(j)
    cuts.append(0)
    return np.array(cuts[::-1])


def assign(t: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook entry for every value of ``t`` (flat float32), as int64.

    Ties between equal entries go to the first one (so FP4's +0 wins over -0 at code 8)."""
    values, first = np.unique(np.asarray(table, dtype=np.float64), return_index=True)
    mids = (values[:-1] + values[1:]) / 2
    out = np.empty(t.size, dtype=np.int64)
    for i in range(0, t.size, _CHUNK):
        piece = t[i : i + _CHUNK].astype(np.float64)
        out[i : i + _CHUNK] = np.searchsorted(mids, piece, side="left")
    return first[out]


def _distinct_f32(c: np.ndarray) -> np.ndarray:
    """Sorted centroids rounded to float32, duplicates (after rounding) removed."""
    return np.unique(np.asarray(c, dtype=np.float64).astype(_F32))


def _pad(c: np.ndarray, k: int) -> np.ndarray:
    """``c`` padded to ``k`` entries by repeating its last value (indices never use the copies)."""
    c = np.asarray(c, dtype=_F32)
    if c.size == 0:
        c = np.zeros(1, _F32)
    return np.concatenate((c, np.full(k - c.size, c[-1], dtype=_F32))) if c.size < k else c


# ----------------------------------------------------------------------------- helpers


def _part(parts: dict[str, Value], name: str, spec: ArraySpec) -> np.ndarray:
    value = parts[name]
    if not isinstance(value, np.ndarray) or value.dtype != spec.dtype.numpy:
        found = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise _fail(f"part {name!r} must be a {spec.describe()} array, found {found}")
    if value.shape != spec.shape:
        raise _fail(f"part {name!r} has shape {list(value.shape)}, {spec.describe()} expected")
    return value


def _finite(value: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(value).all():
        bad = value[~np.isfinite(value)].reshape(-1)[0]
        raise _fail(f"part {name!r} holds a non-finite value ({bad}); every entry must be finite")
    return value
