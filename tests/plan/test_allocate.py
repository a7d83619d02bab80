"""Allocation (cmf.plan.allocate): budgets hold, the greedy walk is optimal where the theory says
(checked by brute force on toy problems), and a bigger budget never gives a larger error."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cmf.plan.allocate import Item, _moves, allocate, evaluate


def convex_curve(rng, n):
    """A random convex, decreasing (bytes, error) curve of n points."""
    steps = np.sort(rng.random(n - 1))[::-1] + 0.01  # falling savings per byte
    widths = rng.integers(1, 50, n - 1)
    b = np.concatenate([[int(rng.integers(1, 20))], widths]).cumsum()
    drops = steps * widths
    e = np.concatenate([[drops.sum() + rng.random()], drops]).copy()
    e = e[0] - np.concatenate([[0], drops.cumsum()])
    return [(int(x), float(y)) for x, y in zip(b, e, strict=True)]


def toy(seed, tensors=3, points=4):
    rng = np.random.default_rng(seed)
    return [
        Item(f"t{i}", convex_curve(rng, points), float(rng.random() + 0.1)) for i in range(tensors)
    ]


def brute(items):
    """Every allocation: (bytes, error, choice)."""
    out = []
    for ks in itertools.product(*[range(len(it.points)) for it in items]):
        choice = {it.name: k for it, k in zip(items, ks, strict=True)}
        b, e = evaluate(items, choice)
        out.append((b, e, choice))
    return out


@pytest.mark.parametrize("seed", range(25))
def test_budgets_hold(seed):
    items = toy(seed)
    everything = brute(items)
    lo, hi = min(b for b, _, _ in everything), max(b for b, _, _ in everything)
    for budget in np.linspace(lo, hi, 9).astype(int):
        a = allocate(items, max_bytes=int(budget))
        assert a.feasible and a.bytes <= budget
        assert (a.bytes, a.error) == evaluate(items, a.choice)
    emin, emax = min(e for _, e, _ in everything), max(e for _, e, _ in everything)
    for target in np.linspace(emin, emax, 9):
        a = allocate(items, max_error=float(target))
        assert a.feasible and a.error <= target * (1 + 1e-12)


@pytest.mark.parametrize("seed", range(25))
def test_greedy_is_optimal_at_its_breakpoints(seed):
    """Each allocation the walk passes through solves the Lagrangian problem, so no allocation
    of at most its bytes has a smaller error, and none of at most its error fewer bytes."""
    items = toy(seed, tensors=3, points=5)
    everything = brute(items)
    choice = {it.name: 0 for it in items}
    for _, i, k, _ in _moves(items):
        choice[items[i].name] = k + 1
        b, e = evaluate(items, choice)
        best_e = min(ee for bb, ee, _ in everything if bb <= b)
        assert e == pytest.approx(best_e, rel=1e-12, abs=1e-12)
        best_b = min(bb for bb, ee, _ in everything if ee <= e * (1 + 1e-12))
        assert b == best_b
        # and allocate() lands exactly there for either budget
        assert allocate(items, max_bytes=b).error == pytest.approx(e, rel=1e-12, abs=1e-12)
        assert allocate(items, max_error=e * (1 + 1e-12)).bytes == b


@pytest.mark.parametrize("seed", range(25))
def test_error_target_is_close_to_the_brute_force_optimum(seed):
    """Between breakpoints the problem is a knapsack; the walk (with its trimming) stays within
    one move of the optimum."""
    items = toy(seed, tensors=3, points=5)
    everything = brute(items)
    biggest_move = max(
        b1 - b0 for it in items for (b0, _), (b1, _) in zip(it.points, it.points[1:], strict=False)
    )
    errors = sorted({e for _, e, _ in everything})
    for target in errors[:: max(1, len(errors) // 10)]:
        a = allocate(items, max_error=target * (1 + 1e-12))
        best = min(b for b, e, _ in everything if e <= target * (1 + 1e-12))
        assert best <= a.bytes <= best + biggest_move


@pytest.mark.parametrize("seed", range(15))
def test_more_budget_never_more_error(seed):
    items = toy(seed, tensors=5, points=6)
    total_lo = sum(it.points[0][0] for it in items)
    total_hi = sum(it.points[-1][0] for it in items)
    last = float("inf")
    for budget in range(total_lo, total_hi + 1, max(1, (total_hi - total_lo) // 40)):
        e = allocate(items, max_bytes=budget).error
        assert e <= last + 1e-12
        last = e
    last_bytes = -1
    for target in sorted(
        np.linspace(0, evaluate(items, {it.name: 0 for it in items})[1], 30), reverse=True
    ):
        b = allocate(items, max_error=float(target)).bytes
        assert b >= last_bytes
        last_bytes = b


def test_fixed_bytes_and_infeasible_budgets():
    items = toy(0)
    cheapest = sum(it.points[0][0] for it in items)
    a = allocate(items, max_bytes=cheapest + 100, fixed=100)
    assert a.bytes == cheapest + 100
    assert not allocate(items, max_bytes=cheapest - 1).feasible
    assert not allocate(items, max_error=-1.0).feasible
    with pytest.raises(ValueError):
        allocate(items)


def test_insensitive_tensors_get_their_cheapest_point():
    items = toy(1) + [Item("unused", [(10, 5.0), (100, 0.0)], 0.0)]
    a = allocate(items, max_error=1e-9)
    assert a.choice["unused"] == 0
