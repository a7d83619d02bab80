"""Fisher-information traces of a Llama-family decoder's weights, one streamed backward pass per
drawn sample (cmf.plan.decoder explains why they are the sensitivities of the mean KL).

The forward pass is the one the harness already made (its cached block inputs); the backward
pass goes from the head down, one block at a time: the block's weights are fetched, the block is
run again on its cached input with gradients on, and the gradient is carried to its input. Memory
holds one block's weights and activations, the head, and ``samples`` gradients of the hidden
states ([n, d] each). The arithmetic mirrors cmf.runtime.llama.block in torch float32.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..runtime import llama


def _rms(torch: Any, x: Any, w: Any, eps: float) -> Any:  # [n, d], [d] -> [n, d]
    return x / torch.sqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps) * w


def _rope(torch: Any, x: Any, cos: Any, sin: Any) -> Any:  # [h, n, hd] -> [h, n, hd]
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def _linear(x: Any, w: Any, b: Any) -> Any:
    y = x @ w.T
    return y if b is None else y + b


def _block(torch: Any, x: Any, w: dict, layer: Any, cfg: Any, cos: Any, sin: Any, mask: Any) -> Any:
    """cmf.runtime.llama.block in torch; ``w`` the fused weights (tensors that may need grad)."""
    n, H, K, hd = x.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    t = torch.from_numpy
    h = _rms(torch, x, t(layer.attn_norm), cfg.rms_norm_eps)  # [n, d]
    qkv = _linear(
        h, w["w_qkv"], None if layer.b_qkv is None else t(layer.b_qkv)
    )  # [n, (H + 2K) hd]
    q = qkv[:, : H * hd].reshape(n, H, hd).transpose(0, 1)  # [H, n, hd]
    k = qkv[:, H * hd : (H + K) * hd].reshape(n, K, hd).transpose(0, 1)  # [K, n, hd]
    v = qkv[:, (H + K) * hd :].reshape(n, K, hd).transpose(0, 1)  # [K, n, hd]
    q, k = _rope(torch, q, cos, sin), _rope(torch, k, cos, sin)
    q4 = q.reshape(K, H // K, n, hd)  # query head = kv * g + r
    scores = torch.einsum("kgnd,ktd->kgnt", q4, k) * (1.0 / math.sqrt(hd)) + mask  # [K, g, n, n]
    a = torch.einsum("kgnt,ktd->kgnd", torch.softmax(scores, dim=-1), v)  # [K, g, n, hd]
    a = a.reshape(H, n, hd).transpose(0, 1).reshape(n, H * hd)  # [n, H hd]
    x = x + _linear(a, w["w_o"], None if layer.b_o is None else t(layer.b_o))  # [n, d]
    h2 = _rms(torch, x, t(layer.mlp_norm), cfg.rms_norm_eps)
    gu = _linear(
        h2, w["w_gate_up"], None if layer.b_gate_up is None else t(layer.b_gate_up)
    )  # [n, 2 ff]
    gate, up = gu.chunk(2, dim=-1)
    return x + _linear(
        torch.nn.functional.silu(gate) * up,
        w["w_down"],
        None if layer.b_down is None else t(layer.b_down),
    )  # [n, d]


def fisher_traces(torch: Any, harness: Any, samples: int, seed: int) -> dict[str, float]:
    """``{tensor name: mean over samples of |d log p(y) / d W|^2}`` for every weight matrix of the
    decoder ``harness`` (a cmf.plan.decoder.DecoderHarness whose reference pass has run), ``y``
    drawn at each position from the original next-token distribution."""
    _ = harness.reference
    inputs = harness._inputs
    runner = harness._runner(harness.tensors.__getitem__)
    cfg = runner.config
    n_layers = cfg.n_layers
    ids = torch.from_numpy(np.asarray(harness.ids, np.int64))
    n = len(harness.ids)
    traces: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        # the head: log p of drawn tokens y. The gradient to the logits is G = onehot(y) - p
        # [n, V], to the head matrix G^T h ([V, d], h the normalized final states [n, d]),
        # whose square sum is sum((h h^T) * (G G^T)) over [n, n] Gram matrices: neither the
        # [V, d] gradient nor an autograd graph through the [n, V] logits is made
        x_n = torch.from_numpy(np.array(inputs[n_layers], np.float32)).requires_grad_(True)
        head = torch.from_numpy(np.asarray(runner.lm_head, np.float32))  # [V, d]
        h = _rms(torch, x_n, torch.from_numpy(runner.norm), cfg.rms_norm_eps)  # [n, d]
        with torch.no_grad():
            p = torch.log_softmax(h @ head.T, dim=-1).exp_()  # [n, V]
            gram_h = (h @ h.T).double()  # [n, n]
        drawn = [torch.multinomial(p, 1, generator=gen) for _ in range(samples)]  # [n, 1] each
        grads_x, head_sq, head_rows = [], 0.0, []
        uniq, inverse = torch.unique(ids, return_inverse=True)
        positions = torch.arange(n)
        for y in drawn:
            with torch.no_grad():
                g = torch.neg(p)  # [n, V]
                g[positions, y[:, 0]] += 1.0
                head_sq += float((gram_h * (g @ g.T).double()).sum())
                head_rows.append(g[:, uniq].T @ h)  # [u, d]: gradient rows of the tied embedding
                g_h = g @ head  # [n, d]
                del g
            (gx,) = torch.autograd.grad(h, [x_n], grad_outputs=g_h, retain_graph=True)
            grads_x.append(gx)
        del p, h, gram_h, head  # the [V, d] head is not held through the blocks
        head_name = harness.head_name()
        tied = runner.lm_head is runner.embed
        cos_np, sin_np = llama.rope_cos_sin(np.arange(n), runner.inv_freq)
        cos, sin = torch.from_numpy(cos_np), torch.from_numpy(sin_np)
        # the blocks, last first
        for i in reversed(range(n_layers)):
            layer = runner.layers[i]
            mask = torch.from_numpy(llama.causal_mask(n, 0, layer.window))
            w = {
                a: torch.from_numpy(getattr(layer, a)).requires_grad_(True)
                for a in ("w_qkv", "w_o", "w_gate_up", "w_down")
            }
            x_i = torch.from_numpy(np.array(inputs[i], np.float32)).requires_grad_(True)
            out = _block(torch, x_i, w, layer, cfg, cos, sin, mask)
            # attr -> [(name, fused rows)]; a group not matching the fused layout is left to
            # the noise measurement
            spans = {}
            for attr, group in harness.layer_names(i):
                rows = _spans(attr, w[attr].shape[0], cfg)
                if group and len(group) == len(rows):
                    spans[attr] = list(zip(group, rows, strict=True))
            for k in range(samples):
                got = torch.autograd.grad(
                    out, [x_i, *w.values()], grad_outputs=grads_x[k], retain_graph=k + 1 < samples
                )
                grads_x[k] = got[0]
                for attr, g in zip(w, got[1:], strict=True):
                    for name, (a, b) in spans.get(attr, ()):
                        traces[name] = traces.get(name, 0.0) + _square_sum(torch, g[a:b]) / samples
            del out, w, x_i
        # the embedding: a lookup of the input tokens (and the head too when tied)
        embed_name = harness.embedding_name()
        embed_sq = head_sq / samples if tied else 0.0  # mean |g_head|^2, then the lookup's part
        for k in range(samples):
            rows = torch.zeros(len(uniq), grads_x[k].shape[1], dtype=torch.float64)
            rows.index_add_(
                0, inverse, grads_x[k].double()
            )  # [u, d]: gradient of the looked-up rows
            sq = float((rows**2).sum())
            if tied:  # |g_head + g_lookup|^2 = |g_head|^2 + 2 <g_head, g_lookup> + |g_lookup|^2
                sq += 2.0 * float((rows * head_rows[k].double()).sum())
            embed_sq += sq / samples
        if embed_name is not None:
            traces[embed_name] = embed_sq
        if head_name is not None and not tied:
            traces[head_name] = head_sq / samples
    return traces


def _square_sum(torch: Any, g: Any) -> float:
    """``sum(g^2)`` of a float32 gradient without a float64 copy of it: one dot product per
    chunk of rows (float32 accumulation within a chunk), the chunks summed in float64."""
    flat = g.reshape(g.shape[0], -1) if g.dim() > 1 else g.reshape(1, -1)
    step = max(1, (1 << 16) // max(flat.shape[1], 1))
    total = 0.0
    for i in range(0, flat.shape[0], step):
        part = flat[i : i + step].reshape(-1)
        total += float(torch.dot(part, part))
    return total


def _spans(attr: str, rows: int, cfg: Any) -> list[tuple[int, int]]:
    """Row ranges of the tensors fused into weight ``attr`` of ``rows`` rows: q, k, v (by head
    counts) or gate, up (halves); one range for the others."""
    if attr == "w_qkv":
        sizes = [
            cfg.n_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
        ]
    elif attr == "w_gate_up":
        sizes = [rows // 2, rows // 2]
    else:
        sizes = [rows]
    bounds = np.cumsum([0, *sizes])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
