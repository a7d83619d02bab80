"""The planner's allocation rounds (cmf.plan.planner): allocate on the hulls, encode the
chosen points, run the model with them, and allocate again while the measured error misses an
error target or stays far under it (the smallest allocation that met it is kept); re-measure
sensitivities at the chosen errors; shrink a byte budget after a file came out over a size
target. The ``result`` is a cmf.plan.planner.PlanResult."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .. import heap
from ..blas import one_blas_thread
from ..errors import CmfError
from . import sensitivity as sens_mod
from .allocate import Allocation, Item, allocate
from .candidates import Curve, Point, encode_point
from .contracts import PlanOptions, PlanResult, TensorPlan
from .harness import Harness
from .spill import EncodingStore

LOOSEN_BELOW = 0.9  # a measured error under this share of an error target: allocate again, looser
REFINE_FACTOR = 3.0  # re-measure a sensitivity where the chosen error is this far from the noise
OUTPUT_KEYS = (
    "kl_mean",
    "kl_max",
    "top1_agreement",
    "perplexity_original",
    "perplexity",
)  # decoders
SEGMENT_PADDING = 32  # mean zero padding per segment (segments are 64-byte aligned)


def _progress(options: PlanOptions, stage: str, done: int, total: int) -> None:
    if options.progress is not None:
        options.progress(stage, done, total)


def refine_sensitivity(
    result: PlanResult,
    tensors: Mapping[str, Any],
    harness: Harness,
    options: PlanOptions,
    fixed_bytes: int,
) -> None:
    """Output error is not exactly quadratic in a tensor's error (saturating nonlinearities):
    measure the sensitivity again, at the relative error the first allocation chose, for the
    tensors whose choice is more than ``REFINE_FACTOR`` away from the noise first measured."""
    items = _items(result)
    if "error" in result.target:
        alloc = allocate(items, max_error=result.target["error"])
    else:
        alloc = allocate(items, max_bytes=max(_byte_budget(result, fixed_bytes), 0))
    redo = []
    for name, tp in result.tensors.items():
        e = _point_of(tp, alloc.choice[name]).error
        if e <= 0 or tp.curve.energy <= 0 or tp.sensitivity <= 0:
            continue
        rel = math.sqrt(e / tp.curve.energy)
        if not sens_mod.REL_NOISE / REFINE_FACTOR <= rel <= sens_mod.REL_NOISE * REFINE_FACTOR:
            redo.append((name, min(max(rel, 1e-4), 0.3)))
    for k, (name, rel) in enumerate(redo):
        tp = result.tensors[name]
        got = sens_mod.measured(
            harness,
            [(name, tensors[name], tp.curve.axis, tp.curve.weights, tp.curve.energy)],
            rel=rel,
            copies=result.copies,
        )
        tp.sensitivity = float(got[name]["sensitivity"])
        _progress(options, "refining sensitivity", k + 1, len(redo))


def _byte_budget(result: PlanResult, fixed_bytes: int) -> int:
    """The bytes the planned tensors may take under a size target."""
    t = result.target
    goal = (
        int(t["bytes"])
        if "bytes" in t
        else int(math.floor(t["bits_per_parameter"] * result.parameters / 8))
    )
    return (
        goal
        - fixed_bytes
        - SEGMENT_PADDING * sum(_segments(tp.curve) for tp in result.tensors.values())
    )


def _items(result: PlanResult) -> list[Item]:
    return [
        Item(
            n,
            [(p.bytes, p.error) for p in tp.curve.hull],
            tp.sensitivity,
            [(p.bytes, p.error) for p in tp.curve.points],
        )
        for n, tp in result.tensors.items()
    ]


def _point_of(tp: TensorPlan, k: int) -> Point:
    return tp.curve.hull[k] if k >= 0 else tp.curve.points[-1 - k]


class Workers:
    """Worker processes that encode the rounds' chosen points (``options.jobs`` > 1 with the
    process executor; otherwise None is used and they are encoded here). ``sources``: name ->
    cmf.parallel.FileTensor for tensors a worker reads from the source file itself."""

    def __init__(self, options: PlanOptions, sources: Mapping[str, Any] | None) -> None:
        from ..parallel import make_executor

        self.jobs, self.sources = options.jobs, dict(sources or {})
        self.executor = make_executor(options.jobs)

    def close(self, cancel: bool = False) -> None:
        self.executor.close(cancel)


def workers_for(options: PlanOptions, sources: Mapping[str, Any] | None) -> Workers | None:
    """The rounds' worker processes, or None to encode in this process."""
    return Workers(options, sources) if options.jobs > 1 and options.executor == "process" else None


def _encode_choices(
    result: PlanResult,
    alloc: Allocation,
    tensors: Mapping[str, Any],
    options: PlanOptions,
    cache: EncodingStore,
    workers: Workers | None = None,
) -> None:
    total = len(result.tensors)
    points = {name: _point_of(tp, alloc.choice[name]) for name, tp in result.tensors.items()}
    todo = [n for n, p in points.items() if (n, p.choice.label) not in cache]
    done = 0
    if workers is not None and len(todo) > 1:
        from ..parallel import (
            HEAVY_TASK_ELEMENTS,
            big_first,
            encode_point_task,
            from_portable,
            map_as_done,
        )

        calls = (
            (
                n,
                (
                    n,
                    workers.sources[n] if n in workers.sources else tensors[n],
                    points[n].choice,
                    result.tensors[n].curve.axis,
                    result.tensors[n].curve.weights,
                    *_feedback_args(result, n, options.level),
                ),
            )
            for n in big_first(todo, {n: result.tensors[n].curve.numel for n in todo})
        )
        for name, portable in map_as_done(
            workers.executor,
            encode_point_task,
            calls,
            workers.jobs + 1,
            doing="encoding",
            heavy=lambda n: result.tensors[n].curve.numel >= HEAVY_TASK_ELEMENTS,
        ):
            cache[(name, points[name].choice.label)] = from_portable(portable, [])
            done += 1
            _progress(options, "encoding", done, len(todo))
    with one_blas_thread():  # as in the workers: the same codes with any --jobs
        _encode_here(result, todo, points, tensors, options, cache, done)
    for name, tp in result.tensors.items():
        tp.point = points[name]
        tp.pending = cache[(name, points[name].choice.label)]
    if not todo:
        _progress(options, "encoding", total, total)


def _feedback_args(result: PlanResult, name: str, level: int) -> tuple[Any, int, str | None]:
    """``(moments, level, kept_feedback)`` of :func:`encode_point` for ``name``: the file of its
    error-feedback factor that the curves stage kept for this plan (cmf.plan.feedback) and no
    moments, or the moments to recompute it from where there is no such file."""
    path = result.tensors[name].curve.feedback
    if result.feedback is not None and result.feedback.holds(path):
        return None, level, path
    return result.moments.get(name), level, None


def _encode_here(
    result: PlanResult,
    todo: list[str],
    points: dict[str, Point],
    tensors: Mapping[str, Any],
    options: PlanOptions,
    cache: EncodingStore,
    done: int,
) -> None:
    """Encode the chosen points of ``todo`` not in ``cache`` yet in this process."""
    for name in todo:
        key = (name, points[name].choice.label)
        if key in cache:
            continue
        curve = result.tensors[name].curve
        cache[key] = encode_point(  # decoded again when a run asks for it (result.decoded())
            points[name].choice,
            tensors[name],
            curve.axis,
            curve.weights,
            *_feedback_args(result, name, options.level),
        )
        done += 1
        _progress(options, "encoding", done, max(len(todo), 1))


def allocate_and_verify(
    result: PlanResult,
    tensors: Mapping[str, Any],
    options: PlanOptions,
    harness: Harness | None,
    fixed_bytes: int,
    sources: Mapping[str, Any] | None = None,
) -> None:
    """Allocate, encode the chosen points and run the model with them, in rounds (module
    docstring); the encodings in ``options.jobs`` worker processes when more than one
    (``sources``: name -> FileTensor the workers read themselves)."""
    workers = workers_for(options, sources)
    try:
        _allocate_and_verify(result, tensors, options, harness, fixed_bytes, workers)
    finally:
        if workers is not None:
            workers.close()


def _allocate_and_verify(
    result: PlanResult,
    tensors: Mapping[str, Any],
    options: PlanOptions,
    harness: Harness | None,
    fixed_bytes: int,
    workers: Workers | None,
) -> None:
    items = _items(result)
    cache = EncodingStore()  # the kept encodings wait on disk (cmf.plan.spill)
    target = result.target
    if "error" in target:
        goal = target["error"]
        budget = goal
        best = None
        for r in range(options.rounds):
            alloc = allocate(items, max_error=budget)
            if harness is not None:
                _progress(options, "verifying", r + 1, options.rounds)
            row = _round(result, alloc, budget, tensors, options, cache, harness, workers)
            planned, measured = row["planned_bytes"], row.get("measured_error")
            ok = measured is None or measured <= goal
            if ok and (best is None or planned < best[0]):
                best = (planned, alloc, row)
            _evict(cache, result, [alloc] + ([best[1]] if best is not None else []))
            if measured is None or (ok and measured >= LOOSEN_BELOW * goal):
                break
            ratio = measured / max(alloc.error, 1e-300)  # type: ignore[operator]
            if ok:  # well under the target (predictions add up worst cases): spend fewer bytes
                new_budget = max(budget * 1.03, goal / max(ratio, 1e-12) * 0.97)
            else:
                new_budget = min(budget * 0.97, goal / max(ratio, 1e-12) * 0.97)
            if alloc.error <= 0 and not ok:
                break  # everything is already at its most accurate point
            budget = new_budget
        if best is None:
            result.target_met = False
            result.notes.append(
                f"the measured error stayed above the target {goal:g} after "
                f"{options.rounds} rounds; the most accurate allocation tried is kept"
            )
            alloc = allocate(items, max_error=budget)
            _encode_choices(result, alloc, tensors, options, cache, workers)
            row = result.rounds[-1]
        else:
            _, alloc, row = best
            _encode_choices(result, alloc, tensors, options, cache, workers)
        _evict(cache, result, [alloc])  # only the chosen encodings stay
        _finish(result, alloc, row)
        return
    # a size target: bytes of the whole file
    if "bytes" in target:
        goal_bytes = int(target["bytes"])
    else:
        goal_bytes = int(math.floor(target["bits_per_parameter"] * result.parameters / 8))
    result.target["file_bytes"] = goal_bytes
    segments = sum(_segments(tp.curve) for tp in result.tensors.values())
    overhead = fixed_bytes + SEGMENT_PADDING * segments
    budget = goal_bytes - overhead
    minimum = sum(tp.curve.hull[0].bytes for tp in result.tensors.values())
    if budget < minimum:
        raise CmfError(
            f"target size {goal_bytes} bytes is below the smallest file the planner can make "
            f"(about {minimum + overhead} bytes: {minimum} for the planned tensors, "
            f"{overhead} for the rest)"
        )
    alloc = allocate(items, max_bytes=budget)
    row = _round(result, alloc, budget, tensors, options, cache, harness, workers)
    result._size_state = (items, cache, budget, goal_bytes)  # type: ignore[attr-defined]
    _finish(result, alloc, row)


def shrink_for_size(
    result: PlanResult,
    tensors: Mapping[str, Any],
    options: PlanOptions,
    harness: Harness | None,
    excess: int,
) -> bool:
    """After a written file came out ``excess`` bytes over a size target: allocate again with a
    smaller byte budget. False when nothing smaller is possible."""
    items, cache, budget, goal = result._size_state  # type: ignore[attr-defined]
    budget -= excess + 64
    if budget < sum(tp.curve.hull[0].bytes for tp in result.tensors.values()):
        return False
    alloc = allocate(items, max_bytes=budget)
    row = _round(result, alloc, budget, tensors, options, cache, harness)
    result._size_state = (items, cache, budget, goal)  # type: ignore[attr-defined]
    _finish(result, alloc, row)
    return True


def _round(
    result: PlanResult,
    alloc: Allocation,
    budget: float,
    tensors: Mapping[str, Any],
    options: PlanOptions,
    cache: EncodingStore,
    harness: Harness | None,
    workers: Workers | None = None,
) -> dict:
    """One round: encode ``alloc``'s choices, run the model with them (if it runs), and append
    the round's row (budget, predicted and measured error, planned bytes) to ``result.rounds``."""
    _encode_choices(result, alloc, tensors, options, cache, workers)
    planned = sum(tp.pending.stored for tp in result.tensors.values())  # type: ignore[union-attr]
    row = {
        "round": len(result.rounds) + 1,
        "budget": budget,
        "predicted_error": alloc.error,
        "planned_bytes": planned,
    }
    if harness is not None:
        stats = harness.stats(result.decoded())
        heap.trim()
        row.update(
            {
                "measured_error": stats["error"],
                "cosine_mean": stats["cosine_mean"],
                "cosine_min": stats["cosine_min"],
            }
        )
        row.update({k: stats[k] for k in OUTPUT_KEYS if k in stats})
        if "domains" in stats:  # per kind of calibration text; the error is the worst one's
            row["domains"] = stats["domains"]
    result.rounds.append(row)
    return row


def _evict(cache: EncodingStore, result: PlanResult, keep: list[Allocation]) -> None:
    """Drop the encodings of ``cache`` that no allocation of ``keep`` chooses (the current and
    the best so far): the cache holds at most two encoded models, not one per round."""
    wanted = {
        (name, _point_of(tp, a.choice[name]).choice.label)
        for a in keep
        for name, tp in result.tensors.items()
    }
    for key in [k for k in cache if k not in wanted]:
        del cache[key]


def _segments(curve: Curve) -> int:
    return 6  # a step choice with outliers has 5 leaves; an estimate is enough for padding


def _finish(result: PlanResult, alloc: Allocation, row: dict) -> None:
    result.predicted_error = float(alloc.error)
    result.measured_error = row.get("measured_error")
    result.cosine_mean = row.get("cosine_mean")
    result.cosine_min = row.get("cosine_min")
    result.output = {k: row[k] for k in OUTPUT_KEYS if k in row}
    if "error" in result.target and result.measured_error is None:
        result.target_met = result.predicted_error <= result.target["error"] * (1 + 1e-9)
