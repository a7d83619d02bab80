"""``cmf report``: where a file's bytes went and which tensors carry the error.

``report(path)`` reads a .cmf file's index — or every shard's of a sharded set, named by its
``.cmf.index.json`` or directory — (no tensor is decoded) and returns a JSON-able map:
per tensor its shape, parameters, stored bytes, bits per weight, encoding, recorded error (the
index's ``rel_rmse``) and — for a file the planner wrote (metadata ``cmf.plan.tensors``) — the
planner's choice, its sensitivity and predicted share of the output error; plus the file totals
and the plan summary (``cmf.plan``). ``render_png`` draws it with matplotlib (``pip install
'cmf-container[report]'``); the text and JSON reports need nothing beyond cmf.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import CmfError
from ..extras import install_hint
from ..index import iter_leaves
from ..pipeline import describe
from .planner import META_PLAN, META_TENSORS


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def report(path: str | os.PathLike) -> dict[str, Any]:
    from ..shards import ShardedFile, open_model

    with open_model(path) as f:
        meta = f.metadata()
        plan = meta.get(META_PLAN) if isinstance(meta.get(META_PLAN), dict) else None
        planned = meta.get(META_TENSORS) if isinstance(meta.get(META_TENSORS), dict) else {}
        rows = []
        params = tensor_bytes = 0
        files = f.shards if isinstance(f, ShardedFile) else [f]
        entries = [(shard, entry) for shard in files for entry in shard.index.tensors]
        for shard, entry in entries:
            numel = entry.spec.numel
            params += numel
            if entry.alias is not None:
                stored, encoding = 0, f"alias of {entry.alias}"
            else:
                stored = sum(
                    shard.index.segments[leaf.segment].length
                    for leaf in iter_leaves(entry.encoding)
                )
                encoding = describe(entry.encoding)
            tensor_bytes += stored
            row: dict[str, Any] = {
                "name": entry.name,
                "dtype": entry.spec.dtype.name,
                "shape": list(entry.spec.shape),
                "parameters": numel,
                "stored_bytes": stored,
                "bits_per_weight": stored * 8 / numel if numel else 0.0,
                "encoding": encoding,
                "rel_rmse": _number((entry.error or {}).get("rel_rmse")),
            }
            p = planned.get(entry.name)
            if isinstance(p, dict):
                row["choice"] = p.get("choice")
                row["sensitivity"] = _number(p.get("sensitivity"))
                row["predicted_error"] = _number(p.get("predicted"))
            if len(files) > 1:
                row["shard"] = os.path.basename(shard.path)
            rows.append(row)
        size = f.size  # a sharded set: its shards' bytes
        shards = list(f.shard_names) if isinstance(f, ShardedFile) else None
        gguf = None
        if (
            isinstance(plan, dict)
            and isinstance(plan.get("target"), dict)
            and plan["target"].get("gguf")
        ):
            from .ggml_report import gguf_columns  # a --gguf plan: types beside llama.cpp's recipes

            gguf = gguf_columns(f)
    for r in rows:
        if gguf is not None and r["name"] in gguf["types"]:
            r["ggml"] = gguf["types"][r["name"]]
    predicted_total = sum(r.get("predicted_error") or 0.0 for r in rows)
    for r in rows:
        if r.get("predicted_error") is not None and predicted_total > 0:
            r["error_share"] = r["predicted_error"] / predicted_total
    out = {
        "path": os.fspath(path),
        "file_bytes": size,
        "tensor_bytes": tensor_bytes,
        "parameters": params,
        "bits_per_parameter": size * 8 / params if params else None,
        "weights_bits_per_parameter": tensor_bytes * 8 / params if params else None,
        "plan": plan,
        "tensors": rows,
    }
    if shards is not None:
        out["shards"] = shards
    if gguf is not None:
        out["gguf_bytes"] = gguf["gguf_bytes"]
        out["gguf_bits_per_parameter"] = gguf["gguf_bytes"] * 8 / params if params else None
    return out


def _short(name: str, width: int) -> str:
    if len(name) <= width:
        return name
    return "…" + name[-(width - 1) :]


def _target_text(plan: dict) -> str:
    """ "balanced", "error <= 0.001", "<= 4.5 bits/parameter" or "<= 12000000 bytes"."""
    if plan.get("preset"):
        return str(plan["preset"])
    t = plan.get("target")
    if isinstance(t, dict):
        if _number(t.get("error")) is not None:
            return f"error <= {t['error']:g}"
        if _number(t.get("bits_per_parameter")) is not None:
            return f"<= {t['bits_per_parameter']:g} bits/parameter"
        if _number(t.get("bytes")) is not None:
            return f"<= {int(t['bytes'])} bytes"
    return str(t)


def render_text(rep: dict[str, Any], printable: Any = str) -> list[str]:
    rows = rep["tensors"]
    width = min(max((len(printable(r["name"])) for r in rows), default=4), 56)
    has_plan = any("sensitivity" in r for r in rows)
    head = f"{'tensor':<{width}}  {'params':>9} {'bits/w':>7} {'rel_rmse':>9}"
    recipes = next((list(r["ggml"])[1:] for r in rows if isinstance(r.get("ggml"), dict)), [])
    if recipes:  # a --gguf plan: the GGUF's type, then llama.cpp's recipes' types
        head += f" {'sensitivity':>11} {'err share':>9} {'GGUF':>7} " + " ".join(
            f"{t:>7}" for t in recipes
        )
    elif has_plan:
        head += f" {'sensitivity':>11} {'err share':>9}  choice"
    else:
        head += "  encoding"
    lines = [head]
    for r in rows:
        rel = f"{r['rel_rmse']:.2e}" if r["rel_rmse"] is not None else "-"
        line = (
            f"{_short(printable(r['name']), width):<{width}}  {r['parameters']:>9} "
            f"{r['bits_per_weight']:>7.3f} {rel:>9}"
        )
        if recipes:
            sens = f"{r['sensitivity']:.3e}" if r.get("sensitivity") is not None else "-"
            share = f"{100 * r['error_share']:.1f}%" if r.get("error_share") is not None else "-"
            g = r.get("ggml") or {}
            line += f" {sens:>11} {share:>9} {g.get('gguf') or '-':>7} " + " ".join(
                f"{g.get(t) or '-':>7}" for t in recipes
            )
        elif has_plan:
            sens = f"{r['sensitivity']:.3e}" if r.get("sensitivity") is not None else "-"
            share = f"{100 * r['error_share']:.1f}%" if r.get("error_share") is not None else "-"
            line += f" {sens:>11} {share:>9}  {printable(str(r.get('choice') or r['encoding']))}"
        else:
            line += f"  {r['encoding']}"
        lines.append(line)
    bpp = rep["bits_per_parameter"]
    where = f" in {len(rep['shards'])} shards" if rep.get("shards") else ""
    lines.append(
        f"{len(rows)} tensors, {rep['parameters']} parameters, {rep['file_bytes']} bytes{where}: "
        f"{bpp:.3f} bits/parameter (whole file), "
        f"{rep['weights_bits_per_parameter']:.3f} (tensor data)"
        if bpp is not None
        else f"{len(rows)} tensors, {rep['file_bytes']} bytes{where}"
    )
    if rep.get("gguf_bytes") is not None:
        lines.append(
            f"GGUF (cmf unpack -o x.gguf): {rep['gguf_bytes']} bytes, "
            f"{rep['gguf_bits_per_parameter']:.3f} bits/parameter; beside it, the types "
            f"llama.cpp's {', '.join(recipes)} recipes give each tensor"
        )
    plan = rep.get("plan")
    if isinstance(plan, dict):
        parts = [f"plan: {printable(_target_text(plan))[:200]}"]
        for key, label in (("predicted_error", "predicted"), ("measured_error", "measured")):
            v = _number(plan.get(key))
            if v is not None:
                parts.append(f"{label} {v:.3g}")
        output = plan.get("output") if isinstance(plan.get("output"), dict) else {}
        kl, top1, ppl = (
            _number(output.get(k)) for k in ("kl_mean", "top1_agreement", "perplexity")
        )
        ppl0 = _number(output.get("perplexity_original"))
        if kl is not None:  # a decoder: next-token distributions
            parts.append(f"KL {kl:.4g}")
        if top1 is not None:
            parts.append(f"top-1 agreement {top1:.4f}")
        if ppl is not None:
            parts.append(
                f"perplexity {ppl:.4g}" + (f" (original {ppl0:.4g})" if ppl0 is not None else "")
            )
        cm = _number(plan.get("cosine_mean"))
        if cm is not None and kl is None:
            parts.append(f"cosine mean {cm:.5f}")
        parts.append(
            f"({printable(str(plan.get('metric', '?')))}, {printable(str(plan.get('kind', '?')))})"
        )
        lines.append(", ".join(parts[:-1]) + " " + parts[-1])
        for message in plan.get("warnings") or []:  # the fallbacks the pack printed
            lines.append(f"warning: {printable(str(message))[:500]}")
    return lines


def _plain(text: str) -> str:
    """``text`` for a matplotlib label: printable characters only, no mathtext."""
    return "".join(c if c.isprintable() else "?" for c in text).replace("$", r"\$")


def render_png(rep: dict[str, Any], path: str | os.PathLike) -> None:
    """Bits per weight and share of the predicted output error (or the recorded relative error)
    per tensor, one bar each; the plan's summary as the title."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CmfError(f"--png needs matplotlib: {install_hint('report')}") from None
    rows = [r for r in rep["tensors"] if r["parameters"] > 0]
    planned = [
        r for r in rows if r.get("sensitivity") is not None or r.get("predicted_error") is not None
    ]
    lossy = [r for r in rows if r["rel_rmse"] is not None]
    rows = (
        planned or lossy or rows
    )  # the tensors worth a bar; small lossless ones only if nothing else
    if not rows:
        raise CmfError("the file holds no tensors to draw")
    names = [_plain(_short(r["name"], 48)) for r in rows]
    bits = [r["bits_per_weight"] for r in rows]
    has_plan = any(r.get("error_share") is not None for r in rows)
    err = [
        100 * (r.get("error_share") or 0.0) if has_plan else (r["rel_rmse"] or 0.0) for r in rows
    ]
    height = max(4.0, 0.22 * len(rows) + 1.5)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, height), sharey=True)
    y = list(range(len(rows)))
    size = [r["parameters"] for r in rows]
    top = max(size)
    a1.barh(y, bits, color=[(0.2, 0.4, 0.8, 0.35 + 0.65 * s / top) for s in size])
    a1.set_yticks(y)
    a1.set_yticklabels(names, fontsize=7)
    a1.invert_yaxis()
    a1.set_xlabel("bits per weight (darker: more parameters)")
    a2.barh(y, err, color="#c0504d")
    a2.set_xlabel("share of predicted output error (%)" if has_plan else "recorded relative RMSE")
    plan = rep.get("plan") or {}
    title = f"{os.path.basename(str(rep['path']))}: {rep['bits_per_parameter']:.3f} bits/parameter"
    if len(rows) < len(rep["tensors"]):
        title += f" ({len(rows)} of {len(rep['tensors'])} tensors shown)"
    if isinstance(plan, dict) and plan:
        title += f", plan {_target_text(plan)[:80]}"
        if _number(plan.get("measured_error")) is not None:
            title += f", measured {str(plan.get('metric'))[:40]} {plan['measured_error']:.3g}"
    fig.suptitle(_plain(title), fontsize=10)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)
