"""The planner: the smallest file for a given output error (or the best output error for a given
size), chosen per tensor from measured rate-distortion curves and measured sensitivities, then
verified by running the file (spec/planner.md).

Stages (``plan_and_write``):

1. **curves** (cmf.plan.candidates): every float weight matrix is encoded with every candidate
   choice; bytes and (importance-weighted) error are measured, the lower convex hull is kept;
2. **sensitivity** (cmf.plan.sensitivity): noise of known size in one tensor at a time, the
   model run on the calibration inputs (cmf.plan.harness), the output error measured — or the
   data-free proxy when the model cannot be run;
3. **allocation** (cmf.plan.allocate): greedy marginal analysis on the hulls; sensitivities
   measured again where the first allocation puts a tensor far from the noise first used;
4. **verification** (cmf.plan.rounds): the chosen encodings are decoded as a reader decodes
   them, the model is run with them, and the measured output error is compared with the
   prediction. If it misses an error target the prediction budget is scaled by
   ``target / measured`` and the allocation redone (at most ``rounds`` times); a size target is
   checked on the written file and the byte budget shrunk by the excess;
5. the file is written with the planner's decisions in its metadata (``cmf.plan``,
   ``cmf.plan.tensors``) and, for a model that runs, run again from the file.

``PlanOptions.jobs`` > 1 (``cmf pack --jobs``) measures the curves of stage 1 in that many
spawned processes (cmf.parallel's executors; ``executor="dask"`` on a cluster): the same curves,
hence the same plan and the same bytes as one process. ``shard_size`` writes a sharded set
(cmf.shards) with the plan's metadata in its last shard; the set is what stage 5 runs again.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import dtypes, heap
from ..blas import one_blas_thread
from ..checksum import content_digest
from ..codecs import ArraySpec, BytesSpec
from ..errors import CmfError
from ..jsonable import json_safe
from ..pipeline import Pending, best_bytes, decode_pending, encode_lossless
from . import sensitivity as sens_mod
from .candidates import (
    LOSSLESS,
    Curve,
    Point,
    forget_hessians,
    measure,
    plannable,
    step_choices,
    template_choices,
)
from .contracts import (
    ATTACHMENT_LEVEL,
    INDEX_BYTES_PER_TENSOR,
    META_PLAN,
    META_TENSORS,
    PLANNED_PRESETS,
    PlanOptions,
    PlanResult,
    PlanTarget,
    TensorPlan,
    parse_target_size,
    resolved_jobs,
)
from .feedback import FeedbackFiles
from .harness import DECODER_METRIC, METRIC, Harness, fallback_warnings, open_harness
from .lazy import LazyItems, LazyMapping, file_tensors, float32_view
from .rounds import SEGMENT_PADDING, allocate_and_verify, refine_sensitivity, shrink_for_size


# Presets: output-error targets (1 - mean cosine on the calibration inputs), and the data-free
# equivalents (parameter-weighted mean squared relative weight error) for models that cannot run.
def _progress(options: PlanOptions, stage: str, done: int, total: int) -> None:
    if options.progress is not None:
        options.progress(stage, done, total)


def _all_finite(x: np.ndarray, chunk: int = 1 << 22) -> bool:
    """Every value of float array ``x`` finite, checked ``chunk`` values at a time (no
    whole-tensor bool array or float32 copy: a 1 B model's embedding is 100 M values)."""
    flat = np.asarray(x).reshape(-1)
    return all(
        bool(np.isfinite(np.asarray(flat[i : i + chunk], np.float32)).all())
        for i in range(0, flat.size, chunk)
    )


def _spec(x: np.ndarray) -> ArraySpec:
    return ArraySpec(dtypes.of_array(x), tuple(int(d) for d in x.shape))


def plan(
    tensors: Mapping[str, Any],
    options: PlanOptions,
    harness: Harness | None = None,
    *,
    fixed_bytes: int = 0,
    sources: Mapping[str, Any] | None = None,
) -> PlanResult:
    """Plan the encodings of ``tensors`` (name -> array; other values are left alone) and
    return the result with every planned tensor's pending tree (not yet written).

    ``harness``: the runnable model (None: data-free). ``fixed_bytes``: bytes of the file that
    the plan does not choose (other tensors, attachments, index), for a size target.
    ``sources``: name -> cmf.parallel.FileTensor for tensors that workers (``options.jobs`` > 1
    or a dask executor) read from the source file themselves; the others are sent as arrays."""
    options.check()
    t_start = time.perf_counter()
    parameters = sum(int(np.asarray(v).size) for v in tensors.values() if isinstance(v, np.ndarray))
    # which tensors to plan: float matrices, each distinct content once (copies become aliases)
    seen: dict[bytes, str] = {}
    copies: dict[str, list[str]] = {}  # planned name -> identical tensors (written as aliases)
    names = []
    sizes: dict[str, int] = {}  # planned name -> elements (from its spec: nothing read again)
    for name, x in tensors.items():
        if not isinstance(x, np.ndarray):
            continue
        try:
            spec = _spec(x)
        except CmfError:
            continue
        if not plannable(spec) or not _all_finite(x):
            continue
        d = content_digest(x)
        if d in seen:
            copies.setdefault(seen[d], []).append(name)
            continue
        seen[d] = name
        names.append(name)
        sizes[name] = spec.numel
    jobs = resolved_jobs(options.jobs, sum(sizes.values()))
    if jobs != options.jobs:
        options = dataclasses.replace(options, jobs=jobs)
    kind = harness.kind if harness is not None else "data-free"
    metric = (
        (DECODER_METRIC if kind == "decoder" else METRIC)
        if harness is not None
        else "relative weight error"
    )
    if harness is not None and harness.groups is not None:
        metric = f"{METRIC} of the worst of {len(harness.group_names)} kinds of text"
    target: PlanTarget
    if options.preset is not None:
        key = ("kl" if kind == "decoder" else "error") if harness is not None else "data_free"
        target = PlanTarget(error=PLANNED_PRESETS[options.preset][key])
    elif options.target_error is not None:
        target = PlanTarget(error=float(options.target_error))
    else:
        unit, value = parse_target_size(options.target_size)  # type: ignore[arg-type]
        target = (
            PlanTarget(bits_per_parameter=value) if unit == "bpp" else PlanTarget(bytes=int(value))
        )
    if "bytes" in target or "bits_per_parameter" in target:
        goal = target.get("bytes") or target["bits_per_parameter"] * parameters / 8
        if goal <= fixed_bytes:  # fail before measuring anything
            raise CmfError(
                f"target size {int(goal)} bytes is below the smallest file the planner can make "
                f"(the tensors it does not plan, the attachments and the index alone take "
                f"about {fixed_bytes} bytes)"
            )
    result = PlanResult(kind, metric, target, options.preset, parameters, {})
    result.copies = copies
    if harness is not None:
        result.calibration = {
            "samples": harness.samples,
            "tokens": getattr(harness, "tokens", harness.samples),
        }

    # 1. moments and curves
    t0 = time.perf_counter()
    moments: dict = {}
    if harness is not None:
        harness.token_prior = options.token_prior
        if options.gguf and hasattr(harness, "ggml_activations"):  # as llama.cpp will compute
            harness.ggml_activations = True
        moments = harness.input_moments()
        if harness.token_note:
            result.warnings.append(harness.token_note)
    result.moments = moments
    result.seconds["moments"] = time.perf_counter() - t0
    choices = step_choices(per_bit=options.steps_per_bit)
    choices += template_choices(options.thorough) if options.templates else []
    choices.append(LOSSLESS)
    if options.gguf:  # GGML types only, bytes counted as the GGUF's (cmf.plan.ggml_candidates)
        from .ggml_candidates import PLANNED_TYPES

        result.target["gguf"] = True
        choices = list(PLANNED_TYPES)
    total = len(names) * len(choices)
    done = 0
    t0 = time.perf_counter()

    def tick() -> None:
        nonlocal done
        done += 1
        _progress(options, "measuring candidates", done, total)

    curves: dict[str, Curve] = {}
    parallel = options.jobs > 1 or options.executor != "process"
    if harness is not None and options.executor == "process":  # this machine's workers
        result.feedback = FeedbackFiles()  # factors for the rounds (cmf.plan.feedback)
    kept = result.feedback.root if result.feedback is not None else None
    if options.gguf:  # cached curves reused; the others in the workers when parallel
        from .ggml_candidates import gguf_measure_task, measure_gguf_curves

        def in_workers(todo: list[str]) -> dict[str, Curve]:
            return _measure_in_workers(
                todo,
                tensors,
                choices,
                moments,
                options,
                sources or {},
                sizes,
                gguf_measure_task,
                kept,
            )

        with one_blas_thread():  # as in the workers: the same curves with any --jobs
            curves = measure_gguf_curves(
                names,
                tensors,
                moments,
                level=options.level,
                progress=tick,
                in_workers=in_workers if parallel else None,
                feedback_dir=kept,
            )
    elif parallel:
        curves = _measure_in_workers(
            names, tensors, choices, moments, options, sources or {}, sizes, feedback_dir=kept
        )
    else:
        with one_blas_thread():  # as in the workers: the same curves with any --jobs
            for name in names:
                curves[name] = measure(
                    name,
                    tensors[name],
                    choices,
                    moments.get(name),
                    level=options.level,
                    progress=tick,
                    feedback_dir=kept,
                    templates_with_feedback=options.thorough,
                )
    result.seconds["curves"] = time.perf_counter() - t0

    # 2. sensitivity
    t0 = time.perf_counter()
    if harness is not None:
        k = 0

        def tick_s(_: str) -> None:
            nonlocal k
            k += 1
            _progress(options, "measuring sensitivity", k, len(names))

        rows = [(n, curves[n].axis, curves[n].weights, curves[n].energy) for n in names]
        fisher = getattr(harness, "sensitivities", None)  # decoders with torch: all at once
        sens = (
            fisher(LazyItems(tensors, rows), copies=copies, progress=tick_s)
            if fisher is not None
            else None
        ) or {}
        if getattr(harness, "fisher_note", None):
            result.warnings.append(harness.fisher_note)
        rest = LazyItems(
            tensors, [r for r in rows if r[0] not in sens]
        )  # each array read when measured
        sens.update(
            sens_mod.measured(harness, rest, copies=copies, progress=tick_s) if len(rest) else {}
        )
    else:
        plain = {n: float(np.sum(np.square(np.asarray(tensors[n], np.float64)))) for n in names}
        total_planned = sum(int(np.asarray(tensors[n]).size) for n in names) or 1
        sens = sens_mod.data_free(
            [(n, int(np.asarray(tensors[n]).size), plain[n]) for n in names], total_planned
        )
    for n in names:
        result.tensors[n] = TensorPlan(n, curves[n], float(sens[n]["sensitivity"]))
    if harness is not None:
        _floor_unexercised(result, options)
        refine_sensitivity(result, tensors, harness, options, fixed_bytes)  # at the chosen errors
        _floor_generated(result, options, harness, fixed_bytes)
    result.seconds["sensitivity"] = time.perf_counter() - t0
    heap.trim()  # the backward passes' buffers

    # 3-4. allocate, encode, verify
    t0 = time.perf_counter()
    allocate_and_verify(result, tensors, options, harness, fixed_bytes, sources)
    result.seconds["allocate_and_verify"] = time.perf_counter() - t0
    result.seconds["total"] = time.perf_counter() - t_start
    forget_hessians()  # the matrices kept for tensors sharing an input
    return result


def _measure_in_workers(
    names: list[str],
    tensors: Mapping[str, Any],
    choices: list,
    moments: Mapping[str, Any],
    options: PlanOptions,
    sources: Mapping[str, Any],
    sizes: Mapping[str, int],
    task: Any = None,
    feedback_dir: str | None = None,
) -> dict[str, Curve]:
    """The curves stage on ``options.jobs`` spawned processes (or a dask cluster) with
    cmf.parallel's executors: each worker measures one tensor at a time, exactly as
    :func:`measure` does here, so the curves are the same as with one process. A worker reads
    its tensor from the source file where ``sources`` names it (nothing large is sent, and
    nothing is read here). ``sizes``: name -> elements.

    The tensors much bigger than the median go first, largest first, so that no worker is left
    alone with a big one at the end (an embedding table can be half of a model); the others
    follow in file order, which is block order for a decoder, whose moments are computed a
    block at a time. Local processes get ``jobs + 1`` tasks in flight and the next as any
    finishes (the moments, up to tens of MB a tensor, are made when a task is sent); a dask
    cluster gets ``executor.window`` at a time, in order. ``task``: the worker function
    (default cmf.parallel.measure_task; ``--gguf``: its GGML counterpart). ``feedback_dir``:
    where the workers keep the error-feedback factors (cmf.plan.feedback)."""
    from ..parallel import (
        HEAVY_TASK_ELEMENTS,
        ProcessExecutor,
        big_first,
        closing,
        make_executor,
        map_as_done,
        map_in_order,
        measure_task,
    )

    calls = (
        (
            n,
            (
                n,
                sources[n] if n in sources else tensors[n],
                choices,
                moments.get(n),
                options.level,
                feedback_dir,
                options.thorough,
            ),
        )
        for n in big_first(names, sizes)
    )
    executor = make_executor(options.jobs, options.executor, options.scheduler)
    got: dict[str, Curve] = {}
    with closing(executor):
        if isinstance(executor, ProcessExecutor):
            results = map_as_done(
                executor,
                task or measure_task,
                calls,
                options.jobs + 1,
                doing="measuring",
                heavy=lambda n: sizes[n] >= HEAVY_TASK_ELEMENTS,  # > 1 GB each in a worker
            )
        else:
            results = map_in_order(executor, task or measure_task, calls, doing="measuring")
        for name, curve in results:
            got[name] = curve
            _progress(
                options, "measuring candidates", len(got) * len(choices), len(names) * len(choices)
            )
    return {n: got[n] for n in names}


def _floor_unexercised(result: PlanResult, options: PlanOptions) -> None:
    """A tensor whose noise did not move the outputs (s = 0) is one the calibration inputs never
    exercised — a BERT pooler under a sentence encoder, the recurrent weights of a model fed
    zero states, the branch of a graph no input took — not necessarily one nobody uses. It
    keeps at least the data-free quality of the preset (of ``small`` for explicit targets):
    its cheaper hull points are dropped."""
    floor = PLANNED_PRESETS["balanced" if options.preset == "balanced" else "small"]["data_free"]
    for name, tp in result.tensors.items():
        if tp.sensitivity > 0 or tp.curve.plain_energy <= 0:
            continue
        keep = [p for p in tp.curve.hull if p.plain / tp.curve.plain_energy <= floor]
        if keep and len(keep) < len(tp.curve.hull):
            tp.curve.hull = keep
            result.notes.append(
                f"{name}: the calibration inputs never moved the outputs through it; "
                f"kept at relative weight error <= {floor**0.5:.3g}"
            )


GENERATED_OUTPUT_FACTOR = 0.25  # tensors feeding an output: a quarter of the floor (half the error)


def _floor_generated(
    result: PlanResult, options: PlanOptions, harness: Harness, fixed_bytes: int
) -> None:
    """Generated calibration inputs (``harness.generated``: made from the graph's input types)
    may leave a tensor nearly idle that real inputs use — a classifier whose classes random
    pictures never call measures as insensitive and would be driven to a large error. So, from
    data-free measures only, every planned tensor keeps a relative weight error
    ``|dW|^2 / |W|^2`` within the preset's data-free target (``small``'s for explicit targets)
    and one that feeds a graph output directly (``harness.output_weights()``) within
    ``GENERATED_OUTPUT_FACTOR`` of it: hull points beyond the bound are dropped, as for
    unexercised tensors. Under a size target the bounds are loosened 4x at a time (2x the
    relative error) until the floored tensors fit the byte budget, or dropped. A note names
    what held and what it cost against the allocation without the floor (the verification
    rounds may still move the others). Real inputs (``--calibrate``) are trusted: no floor."""
    if not getattr(harness, "generated", False):
        return
    from .allocate import allocate
    from .rounds import _byte_budget, _items

    base = PLANNED_PRESETS["balanced" if options.preset == "balanced" else "small"]["data_free"]
    outputs = harness.output_weights() if hasattr(harness, "output_weights") else set()
    outputs |= {n for n, cs in result.copies.items() if outputs & set(cs)}
    sized = "error" not in result.target
    start = {n: 0 for n in result.tensors}  # the hull point each tensor gets without the floor
    if not sized:
        start = dict(allocate(_items(result), max_error=result.target["error"]).choice)
    for loosen in (1, 4, 16) if sized else (1,):
        hulls: dict[str, list[Point]] = {}
        for name, tp in result.tensors.items():
            if tp.curve.plain_energy <= 0:
                continue
            bound = base * loosen * (GENERATED_OUTPUT_FACTOR if name in outputs else 1.0)
            keep = [p for p in tp.curve.hull if p.plain / tp.curve.plain_energy <= bound]
            if keep and len(keep) < len(tp.curve.hull):
                hulls[name] = keep
        least = sum((hulls.get(n) or tp.curve.hull)[0].bytes for n, tp in result.tensors.items())
        if not sized or not hulls or least <= _byte_budget(result, fixed_bytes):
            break
    else:
        result.notes.append(
            "calibrated on generated inputs: the data-free floor on each "
            "tensor's relative weight error does not fit the size target and was "
            "not applied"
        )
        return
    held, added = [], 0
    for name, keep in hulls.items():
        tp = result.tensors[name]
        chosen = tp.curve.hull[start[name]]
        if chosen not in keep:  # the floor changes its choice
            held.append(name)
            added += keep[0].bytes - chosen.bytes
        tp.curve.hull = keep
    if not held:
        return
    params = sum(result.tensors[n].curve.numel for n in held)
    at_output = [n for n in held if n in outputs]
    bound = base * loosen
    tight = (bound * GENERATED_OUTPUT_FACTOR) ** 0.5
    result.notes.append(
        f"calibrated on generated inputs: {len(held)} tensors ({params} parameters) held at "
        f"relative weight error <= {bound**0.5:.3g}"
        + (f", {', '.join(at_output)} (feeding an output) <= {tight:.3g}" if at_output else "")
        + (
            " (loosened to fit the size target)"
            if loosen > 1
            else f", {added * 8 / max(result.parameters, 1):.3g} bits per parameter more"
        )
    )


# ----------------------------------------------------------------------------- writing


def fixed_bytes_of(
    tensors: Mapping[str, Any],
    planned: set[str],
    attachments: Mapping[str, bytes],
    metadata_bytes: int,
    level: int,
) -> int:
    """Bytes of everything in the file the plan does not choose (lossless tensors, attachments,
    index)."""
    total = 64 + metadata_bytes  # preamble, trailer
    seen: set[bytes] = set()
    for name, x in tensors.items():
        total += INDEX_BYTES_PER_TENSOR
        if name in planned or not isinstance(x, np.ndarray):
            continue
        d = content_digest(x)
        if d in seen:
            continue
        seen.add(d)
        try:
            total += (
                encode_lossless(x, _spec(x), max(level, ATTACHMENT_LEVEL)).stored
                + 2 * SEGMENT_PADDING
            )
        except CmfError:
            total += x.nbytes
    for data in attachments.values():
        total += (
            best_bytes(data, BytesSpec(len(data)), max(level, ATTACHMENT_LEVEL)).stored
            + INDEX_BYTES_PER_TENSOR // 2
            + SEGMENT_PADDING
        )
    return total


def write_planned(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    result: PlanResult,
    *,
    metadata: Mapping[str, Any] | None = None,
    attachments: Mapping[str, bytes] | None = None,
    level: int = 3,
    on_tensor: Callable[[str], None] | None = None,
    shard_size: int | None = None,
) -> int:
    """Write the planned file — or, with ``shard_size``, a sharded set named by ``path`` as
    ``cmf pack --shard-size`` writes one (cmf.shards.ShardedWriter; the plan's metadata in the
    last shard) — and return its size in bytes (the shards' sizes for a set). ``result.files``
    lists what was written (for a set: the shards, then the shard index)."""
    from ..parallel import WriterSink, write_tensors
    from ..shards import ShardedWriter
    from ..writer import Writer

    meta = dict(metadata or {})
    meta[META_PLAN] = json_safe(result.summary(timings=False))  # no timings: reproducible bytes
    meta[META_TENSORS] = json_safe(result.tensor_table())
    # the planned tensors arrive encoded; what is left (small tensors, scales' lossless trees,
    # attachments such as tokenizer.json) is worth zstd's slower levels
    lossless_level = max(level, ATTACHMENT_LEVEL)
    copy_of = {c: n for n, cs in result.copies.items() for c in cs}

    def encoder(name: str) -> Callable[[np.ndarray, ArraySpec], Pending]:
        tp = result.tensors.get(name) or result.tensors.get(copy_of.get(name, ""))
        if (
            tp is not None and tp.pending is not None
        ):  # a copy in another shard: the plan's encoding too
            return lambda a, s, p=tp.pending: p
        return lambda a, s: encode_lossless(a, s, lossless_level)

    def entry_written(entry: Any) -> None:
        if on_tensor is not None:
            on_tensor(entry.name)

    def as_stored(name: str, x: Any) -> Any:  # a --gguf F16 / BF16 choice: the tensor is that dtype
        tp = result.tensors.get(name) or result.tensors.get(copy_of.get(name, ""))
        p = tp.pending if tp is not None else None
        if (
            p is not None
            and isinstance(x, np.ndarray)
            and isinstance(p.spec, ArraySpec)
            and p.spec.dtype != _spec(x).dtype
        ):
            return decode_pending(p)
        return x

    items = ((n, as_stored(n, x)) for n, x in tensors.items())
    if shard_size is not None:
        with ShardedWriter(path, shard_size, metadata=meta, level=lossless_level) as sink:
            write_tensors(sink, items, encoder, (attachments or {}).items(), entry_written)
        result.file_bytes = sink.stored_bytes
        result.files = [*sink.files, sink.index_file]
        return result.file_bytes
    with Writer(path, metadata=meta, level=lossless_level) as w:
        write_tensors(WriterSink(w), items, encoder, (attachments or {}).items(), entry_written)
    result.file_bytes = os.path.getsize(path)
    result.files = [os.fspath(path)]
    return result.file_bytes


def _write_and_fit(
    output: str | os.PathLike,
    tensors: Mapping[str, Any],
    result: PlanResult,
    options: PlanOptions,
    harness: Harness | None,
    *,
    metadata: Mapping[str, Any] | None,
    attachments: Mapping[str, bytes] | None,
    on_tensor: Callable[[str], None] | None = None,
    shard_size: int | None = None,
) -> None:
    """Write the plan; under a size target, shrink the byte budget by the excess and write
    again while the file is over it. Shards of an earlier try that the last one did not
    write again (a set with fewer shards) are removed."""
    earlier: set[str] = set()
    for _ in range(options.rounds + 1):
        size = write_planned(
            output,
            tensors,
            result,
            metadata=metadata,
            attachments=attachments,
            level=options.level,
            on_tensor=on_tensor,
            shard_size=shard_size,
        )
        if options.gguf:  # a size target counts the GGUF the file unpacks to
            from .ggml_size import gguf_file_bytes

            size = result.gguf_bytes = gguf_file_bytes(output)
        earlier.update(result.files)
        goal = result.target.get("file_bytes")
        if goal is None or size <= goal:
            break
        if not shrink_for_size(result, tensors, options, harness, size - goal):
            break
    for stale in earlier - set(result.files):
        try:
            os.unlink(stale)
        except FileNotFoundError:
            pass
    goal = result.target.get("file_bytes")
    size = getattr(result, "gguf_bytes", None) if options.gguf else result.file_bytes
    if goal is not None and size is not None and size > goal:
        result.target_met = False
        result.notes.append(
            f"the {'GGUF' if options.gguf else 'file'} is {size} bytes, over the target {goal}"
        )


def verify_file(path: str | os.PathLike, harness: Harness) -> dict[str, float]:
    """Run the written file or sharded set (its tensors decoded by the reader) on the
    calibration inputs."""
    from ..shards import open_model

    with open_model(path) as f:  # read as the run asks: a streamed decoder holds one block
        tensors = LazyMapping([n for n in f.keys() if n in harness.tensors], f.get_tensor)
        if getattr(harness, "ggml_activations", False):  # the GGML type of each, as unpacked
            from ..runtime.ggml_acts import file_ggml_types

            tensors.ggml_types = file_ggml_types(f)
        return harness.stats(tensors)


# ----------------------------------------------------------------------------- one call


def plan_and_write(
    source: str | os.PathLike,
    output: str | os.PathLike,
    options: PlanOptions,
    *,
    extra_attachments: Mapping[str, bytes] | None = None,
    on_tensor: Callable[[str], None] | None = None,
    shard_size: int | None = None,
) -> PlanResult:
    """Pack the model at ``source`` (as ``cmf pack``) into ``output`` with a planned recipe:
    one file, or a sharded set named by ``output`` with ``shard_size`` (then ``result.path`` is
    its shard index). ``options.jobs`` > 1 measures the candidates in that many processes.

    The stages are those of this module's docstring. A model that cannot be run is planned
    data-free (on weight error) with a warning in ``result.warnings``, unless
    ``options.calibrate`` asks for calibration. A missed target is no error:
    ``result.target_met`` is False and ``result.notes`` says by how much.

    Args:
        source: the model: a Hugging Face model directory, or a safetensors, GGUF, ONNX or
            PyTorch checkpoint file (as :func:`cmf.convert.open_source` opens).
        output: the ``.cmf`` file to write (or the name of the sharded set); never ``source``.
        options: one of a planning preset, a target error or a target size, and the rest of
            the planner's settings (:class:`~cmf.plan.contracts.PlanOptions`).
        extra_attachments: name -> bytes carried in the file beside the source's own.
        on_tensor: called with each tensor's name as it is written.
        shard_size: write a sharded set of shards of about this many bytes.

    Returns:
        The :class:`~cmf.plan.contracts.PlanResult`: per-tensor choices, predicted and
        measured errors, ``file_bytes``, ``files`` written and ``path`` to open.

    Raises:
        UsageError: ``options`` that cannot go together or are out of range, or ``output`` is
            an input of the command.
        CmfError: the source cannot be opened or converted; ``options.calibrate`` is given for
            a model that cannot be run or with ``data_free``.

    Example:
        >>> import numpy as np
        >>> from safetensors.numpy import save_file
        >>> from cmf.plan.planner import PlanOptions, plan_and_write
        >>> save_file({"w": np.random.rand(64, 64).astype(np.float32)}, "model.safetensors")
        >>> options = PlanOptions(preset="balanced", data_free=True)
        >>> result = plan_and_write("model.safetensors", "model.cmf", options)
        >>> result.path
        'model.cmf'
    """
    from ..convert import Encoded, open_source
    from ..outputs import check_outputs
    from ..parallel import file_refs

    options.check()
    check_outputs([os.fspath(output)], [os.fspath(source)], force=True)  # never onto the model
    heap.keep_big_blocks_off_heap()  # the stages make and drop many arrays of a few MiB
    src = open_source(source)
    refs = file_refs(src)  # safetensors-backed: tensors read from the files as the plan asks
    tensors: Mapping[str, Any] = file_tensors(refs) if refs else dict(src.items())
    attachments = dict(src.attachments)
    attachments.update(extra_attachments or {})
    if (
        options.gguf
    ):  # refused before any work; float tensors as f32 (the ggml codec decodes to f32)
        from .ggml_plan import gguf_source

        tensors = gguf_source(tensors, attachments, shard_size, options)
    harness = None
    warnings = []
    if not options.data_free:
        if not refs and any(isinstance(v, Encoded) for v in tensors.values()):
            warnings.append(
                "the source holds pre-quantized GGUF blocks: planned data-free (on weight error, "
                "not on the model's outputs)"
            )
        else:
            try:
                floats = float32_view(tensors, _as_float32)
                harness = open_harness(source, options.calibrate, tensors=floats)
            except CmfError as exc:
                if options.calibrate is not None:
                    raise CmfError(f"cannot calibrate on this model: {exc}") from None
                warnings.append(
                    f"the model cannot be run ({exc}): planned data-free (on weight error, "
                    "not on the model's outputs)"
                )
    if harness is None and options.calibrate is not None and options.data_free:
        raise CmfError("--calibrate needs a model that runs; it cannot go with a data-free plan")
    if harness is not None:
        harness.calibration_source = (
            os.fspath(options.calibrate)
            if isinstance(options.calibrate, (str, os.PathLike))
            else ("given" if options.calibrate is not None else "built-in")
        )
    planned_names = {
        n for n, v in tensors.items() if isinstance(v, np.ndarray) and plannable(_spec_or_none(v))
    }
    meta_guess = 4096 + 600 * len(planned_names)  # the plan's own metadata
    if options.gguf:  # sizes are the GGUF's (the target was checked by gguf_source)
        from .ggml_plan import gguf_fixed

        fixed = gguf_fixed(tensors, planned_names, attachments, options)
    elif options.target_size is not None:  # only a size target counts them (zstd -19: seconds)
        fixed = fixed_bytes_of(tensors, planned_names, attachments, meta_guess, options.level)
    else:
        fixed = 0
    result = plan(tensors, options, harness, fixed_bytes=fixed, sources=refs)  # read by workers
    result.warnings[:0] = warnings + (fallback_warnings(harness) if harness is not None else [])
    if harness is not None:
        result.calibration["source"] = harness.calibration_source
    try:
        _write_and_fit(
            output,
            tensors,
            result,
            options,
            harness,
            metadata=src.metadata,
            attachments=attachments,
            on_tensor=on_tensor,
            shard_size=shard_size,
        )
    finally:
        if result.feedback is not None:  # a size target's last re-encodings are done
            result.feedback.close()
    if harness is not None:
        t0 = time.perf_counter()
        stats = verify_file(result.path or output, harness)
        result.file_error = stats["error"]
        result.seconds["verify_file"] = time.perf_counter() - t0
    return result


def _as_float32(v: Any) -> Any:
    return np.asarray(v, np.float32) if isinstance(v, np.ndarray) and _is_float(v) else v


def _is_float(x: np.ndarray) -> bool:
    try:
        return dtypes.of_array(x).is_float
    except CmfError:
        return False


def _spec_or_none(x: np.ndarray) -> ArraySpec:
    try:
        return _spec(x)
    except CmfError:
        return ArraySpec(dtypes.BY_NAME["u8"], (0,))


def save_planned(
    tensors: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    options: PlanOptions,
    *,
    metadata: Mapping[str, Any] | None = None,
    attachments: Mapping[str, bytes] | None = None,
    shard_size: int | None = None,
) -> PlanResult:
    """``cmf.save_file(..., preset="balanced")``: plan a dict of arrays with the data-free proxy
    (no model to run), write it (one file, or a sharded set with ``shard_size``), check a size
    target on the file. ``options.jobs`` > 1 sends the arrays to that many processes to measure
    the candidates.

    Args:
        tensors: name -> numpy array; float matrices are planned, the rest stored losslessly.
        path: the ``.cmf`` file to write (or the name of the sharded set).
        options: a planning preset, target error or target size (not ``calibrate``).
        metadata: string keys -> JSON-like values, stored beside the plan's own metadata.
        attachments: name -> bytes carried in the file.
        shard_size: write a sharded set of shards of about this many bytes.

    Returns:
        The :class:`~cmf.plan.contracts.PlanResult` (``result.path`` is what to open).

    Raises:
        UsageError: ``options`` that cannot go together or are out of range.
        CmfError: ``options.calibrate`` is given (there is no model to run), or a tensor,
            name or metadata value cannot be stored.

    Example:
        >>> import numpy as np
        >>> from cmf.plan.planner import PlanOptions, save_planned
        >>> tensors = {"w": np.random.rand(64, 64).astype(np.float32)}
        >>> save_planned(tensors, "model.cmf", PlanOptions(preset="small")).path
        'model.cmf'
    """
    options.check()
    if options.calibrate is not None:
        raise CmfError(
            "calibration needs a model that runs: use cmf.plan.planner.plan_and_write "
            "on a model directory, .onnx or .safetensors with its config"
        )
    tensors = dict(tensors)
    planned_names = {
        n for n, v in tensors.items() if isinstance(v, np.ndarray) and plannable(_spec_or_none(v))
    }
    fixed = fixed_bytes_of(
        tensors, planned_names, attachments or {}, 4096 + 600 * len(planned_names), options.level
    )
    result = plan(tensors, options, None, fixed_bytes=fixed)
    _write_and_fit(
        path,
        tensors,
        result,
        options,
        None,
        metadata=metadata,
        attachments=attachments,
        shard_size=shard_size,
    )
    return result
