"""Allocation: one point of each tensor's curve, minimising total bytes under an output-error
budget, or output error under a byte budget.

Each tensor ``t`` offers the points of its lower convex hull, ``(bytes_k, e_k)`` with bytes
increasing and error decreasing, and has a sensitivity ``s_t``; the predicted output error of
an allocation is ``sum_t s_t e_t(k_t)``. Greedy marginal analysis (Shoham & Gersho 1988): every
tensor starts at its cheapest point; the moves to the next hull point are taken in decreasing
order of output error saved per byte, ``s_t (e_k - e_k+1) / (bytes_k+1 - bytes_k)`` (on a convex
hull these decrease along each tensor's curve, so the order respects each curve; moves that save
no output error, of a tensor the model never reads, are never taken). Every
allocation along the way is optimal for its own total size — it solves the Lagrangian problem
``min bytes + e / lambda`` for the current slope ``lambda`` — so:

* with an error budget the walk stops at the first allocation whose predicted error fits, then
  steps tensors back down their hulls (the least efficient move first) while it still fits —
  the last move may have overshot by a lot;
* with a byte budget it takes every move that still fits (a move that does not fit ends that
  tensor's walk; later, smaller moves of other tensors may still fit), then spends what is left
  on the single upgrade, from any measured point (hull or not), that saves the most error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Item:
    """One tensor: its hull ``points`` as ``(bytes, error)`` (bytes increasing, error
    decreasing), its sensitivity, and optionally all its measured points (for the byte-budget
    fill)."""

    name: str
    points: Sequence[tuple[int, float]]
    sensitivity: float
    extra: Sequence[tuple[int, float]] = field(default_factory=tuple)


@dataclass
class Allocation:
    choice: dict[str, int]  # name -> index into its hull points (or -1 - index into extra)
    bytes: int  # planned bytes (plus the fixed offset)
    error: float  # predicted output error
    feasible: bool  # the budget is met


def _point(item: Item, k: int) -> tuple[int, float]:
    return item.points[k] if k >= 0 else item.extra[-1 - k]


def evaluate(items: Sequence[Item], choice: dict[str, int], fixed: int = 0) -> tuple[int, float]:
    nbytes, err = fixed, 0.0
    for it in items:
        b, e = _point(it, choice[it.name])
        nbytes += b
        err += it.sensitivity * e
    return nbytes, err


def _moves(items: Sequence[Item]) -> list[tuple[float, int, int, int]]:
    """(-efficiency, item index, step, delta bytes) of every hull move, best first."""
    moves = []
    for i, it in enumerate(items):
        for k in range(len(it.points) - 1):
            (b0, e0), (b1, e1) = it.points[k], it.points[k + 1]
            db = max(b1 - b0, 1)
            if it.sensitivity * (e0 - e1) <= 0:
                break  # saves no output error (an unused tensor): never worth bytes
            moves.append((-(it.sensitivity * (e0 - e1)) / db, i, k, db))
    moves.sort(key=lambda m: (m[0], m[1], m[2]))
    return moves


def _trim(items: Sequence[Item], choice: dict[str, int], max_error: float) -> None:
    """The walk's last move may overshoot the error budget by a lot: step tensors back down
    their hulls (the move saving the least error per byte first) while the budget still holds."""
    _, err = evaluate(items, choice)
    while True:
        best = None
        for it in items:
            k = choice[it.name]
            if k <= 0:
                continue
            (b0, e0), (b1, e1) = it.points[k - 1], it.points[k]
            extra = it.sensitivity * (e0 - e1)
            if err + extra <= max_error:
                eff = extra / max(b1 - b0, 1)
                if best is None or eff < best[0]:
                    best = (eff, it, extra)
        if best is None:
            return
        _, it, extra = best
        choice[it.name] -= 1
        err += extra


def allocate(
    items: Sequence[Item],
    *,
    max_error: float | None = None,
    max_bytes: int | None = None,
    fixed: int = 0,
) -> Allocation:
    """The allocation for exactly one of ``max_error`` (predicted output error) or
    ``max_bytes`` (total, ``fixed`` bytes included); see the module docstring."""
    if (max_error is None) == (max_bytes is None):
        raise ValueError("give exactly one of max_error and max_bytes")
    choice = {it.name: 0 for it in items}
    nbytes, err = evaluate(items, choice, fixed)
    if max_error is not None:
        if err <= max_error:
            return Allocation(choice, nbytes, err, True)
        for _, i, k, _db in _moves(items):
            it = items[i]
            if choice[it.name] != k:
                continue  # cannot happen on convex hulls; kept as a guard
            (b0, e0), (b1, e1) = it.points[k], it.points[k + 1]
            choice[it.name] = k + 1
            nbytes += b1 - b0
            err += it.sensitivity * (e1 - e0)
            if err <= max_error:
                break
        if err <= max_error:
            _trim(items, choice, max_error)
        nbytes, err = evaluate(items, choice, fixed)
        return Allocation(choice, nbytes, err, err <= max_error * (1 + 1e-12))
    stuck: set[str] = set()
    for _, i, k, _db in _moves(items):
        it = items[i]
        if it.name in stuck or choice[it.name] != k:
            continue
        (b0, e0), (b1, e1) = it.points[k], it.points[k + 1]
        if nbytes + (b1 - b0) > max_bytes:
            stuck.add(it.name)
            continue
        choice[it.name] = k + 1
        nbytes += b1 - b0
        err += it.sensitivity * (e1 - e0)
    while True:  # spend the rest on the best single upgrade from any measured point
        best = None
        for it in items:
            b0, e0 = _point(it, choice[it.name])
            options = [(k, p) for k, p in enumerate(it.points)] + [
                (-1 - j, p) for j, p in enumerate(it.extra)
            ]
            for k, (b1, e1) in options:
                gain = it.sensitivity * (e0 - e1)
                if (
                    gain > 0
                    and nbytes + (b1 - b0) <= max_bytes
                    and (best is None or gain > best[0])
                ):
                    best = (gain, it, k, b1 - b0)
        if best is None:
            break
        gain, it, k, db = best
        choice[it.name] = k
        nbytes += db
        err -= gain
    nbytes, err = evaluate(items, choice, fixed)
    return Allocation(choice, nbytes, err, nbytes <= max_bytes)
