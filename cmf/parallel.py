"""Parallel and distributed packing: tensors encoded by worker processes (``jobs``) or by a
dask.distributed cluster, written in input order by one writer.

The output is byte-identical to a serial pack (``Writer.add_tensor`` one tensor after the
other): a worker runs exactly what ``add_tensor`` runs before writing (dtype and layout, the
dedupe digest, the encoder of the recipe, the recorded error of a lossy encoding) and returns
the *pending tree*; the writer commits results strictly in input order, so segments, aliases of
tied weights and shared values come out as in a serial pack.

Bounded work in flight: tensors submitted and not yet written are at most ``jobs + 1`` of any
size, or more while their sizes add up to at most ``jobs`` times the largest tensor seen so far
(so small tensors keep the workers busy while one large tensor is encoded, and at most
``MAX_AHEAD`` per job). Memory is therefore about ``jobs`` times the largest tensor (arrays being
encoded, and encoded results waiting to be written) plus each process's baseline. A worker
reads its tensor itself when the source is a safetensors file or a Hugging Face directory (the
task carries the path and the tensor name, not the array); other sources (ONNX, GGUF, in-memory
tensors) send the array with the task. Tied weights: each task carries the digests of the
tensors of the same size already written, and a worker whose tensor matches one returns no
encoding (the writer writes an alias, as a serial pack does); a duplicate of a tensor still in
flight is encoded and then written as an alias all the same.

The planner (cmf.plan.planner, ``--jobs`` with a planning preset) uses the same executors for
its candidates stage: :func:`measure_task` measures one tensor's candidates in a worker and
:func:`map_in_order` returns the curves in order.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import heap
from .blas import blas_threads
from .codecs import ArraySpec
from .encoded import Encoded
from .errors import CmfError
from .extras import install_hint
from .limits import DEFAULT_LIMITS, Limits
from .pipeline import Pending, PendingLeaf, PendingNode, PendingShared, SharedValue, leaf_bytes
from .plan.recipe import Recipe, encoder_for
from .writer import _check_root, check_tensor_name, tensor_array, tensor_error, tensor_key

# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class FileTensor:
    """Tensor ``name`` of the safetensors file ``path`` (absolute: workers may run elsewhere)."""

    path: str
    name: str
    nbytes: int


@dataclass(frozen=True)
class EncodeSettings:
    """What every worker needs to encode any tensor: the recipe (with its prepared shared
    groups), the zstd level, whether lossy presets fall back to lossless, the writer's limits."""

    recipe: Recipe
    level: int = 3
    fallback: bool = True
    dedupe: bool = True
    limits: Limits = DEFAULT_LIMITS


@dataclass(frozen=True)
class SharedToken:
    """Stands for shared value ``number`` of the recipe (see :func:`plan_shared`) in a tree sent
    between processes: each process has its own copy of the value, the writer must see its own
    (shared values are compared by identity)."""

    number: int
    spec: ArraySpec


@dataclass(frozen=True)
class Result:
    """An encoded tensor: ``pending`` is None when the worker found it identical to an earlier
    tensor (``key`` in the task's ``skip``)."""

    name: str
    spec: ArraySpec
    key: bytes | None
    pending: Any  # a portable pending tree (leaves as bytes/uint8 arrays, SharedToken)
    error: dict[str, float] | None


def plan_shared(recipe: Recipe) -> list[SharedValue]:
    """The shared values of a recipe's prepared groups, in a fixed order (the same in every
    process that unpickled the same recipe)."""
    return [sv for g in sorted(recipe.groups) for sv in recipe.groups[g].shared.values()]


_SOURCES: dict[str, Any] = {}  # per process: path -> SafetensorsSource (headers parsed once)


def read_tensor(ref: FileTensor) -> np.ndarray:
    """Read one tensor of a safetensors file (positioned read; the header parsed once per
    process), with the error a serial pack reading the source would give."""
    from .convert.safetensors import SafetensorsSource

    src = _SOURCES.get(ref.path)
    if src is None:
        if len(_SOURCES) >= 64:
            _SOURCES.clear()
        src = _SOURCES[ref.path] = SafetensorsSource(ref.path)
    try:
        return src._get(ref.name)
    except (CmfError, OSError, ValueError, TypeError, KeyError) as exc:
        raise CmfError(f"{src.path}: cannot read tensor {ref.name!r} ({exc})") from None


def encode_task(
    name: str, source: FileTensor | np.ndarray, skip: frozenset, settings: EncodeSettings
) -> Result:
    """Encode one tensor as ``Writer.add_tensor`` would (runs in a worker; top-level so that
    spawned processes and dask workers can import it)."""
    array = read_tensor(source) if isinstance(source, FileTensor) else source
    spec, array = tensor_array(name, array, settings.limits)
    key = tensor_key(array, spec) if settings.dedupe else None
    if key is not None and key in skip:
        return Result(name, spec, key, None, None)
    pending = encoder_for(settings.recipe, name, settings.level, settings.fallback)(array, spec)
    _check_root(name, pending, spec)
    error = tensor_error(array, pending)
    shared = {id(v): i for i, v in enumerate(plan_shared(settings.recipe))}
    return Result(name, spec, key, to_portable(pending, shared), error)


def measure_task(
    name: str,
    source: FileTensor | np.ndarray,
    choices: Any,
    moments: Any,
    level: int,
    feedback_dir: str | None = None,
    templates_with_feedback: bool = True,
) -> Any:
    """The planner's curves stage for one tensor (cmf.plan.candidates.measure) in a worker: the
    tensor read from its file (a FileTensor) or sent as an array; returns its Curve (its
    error-feedback factor kept in ``feedback_dir``, cmf.plan.feedback)."""
    from .plan.candidates import measure

    array = read_tensor(source) if isinstance(source, FileTensor) else source
    try:
        return measure(
            name,
            array,
            choices,
            moments,
            level=level,
            feedback_dir=feedback_dir,
            templates_with_feedback=templates_with_feedback,
        )
    finally:
        del array
        heap.trim()  # the task's temporaries back to the system before the next task


def encode_point_task(
    name: str,
    source: FileTensor | np.ndarray,
    choice: Any,
    axis: int | None,
    weights: np.ndarray | None,
    moments: Any,
    level: int,
    kept_feedback: str | None = None,
) -> Any:
    """The planner's rounds for one tensor in a worker: its chosen curve point (a
    cmf.plan.candidates.Choice) encoded on the whole tensor, error feedback from the factor file
    ``kept_feedback`` or else from ``moments``, as cmf.plan.rounds does it here; returns the
    portable pending tree (:func:`to_portable`)."""
    from .plan.candidates import encode_point

    array = read_tensor(source) if isinstance(source, FileTensor) else source
    pending = encode_point(choice, array, axis, weights, moments, level, kept_feedback)
    del array
    heap.trim()  # the encoding's temporaries back to the system before the result is sent
    return to_portable(pending, {})


def to_portable(p: Pending, shared: dict[int, int]) -> Any:
    """``p`` with leaves as picklable bytes-likes and shared references as SharedToken."""
    if isinstance(p, PendingLeaf):
        data = p.data
        if not isinstance(data, bytes):
            data = np.frombuffer(leaf_bytes(data), np.uint8)
        return PendingLeaf(data, p.spec)
    if isinstance(p, PendingShared):
        number = shared.get(id(p.target))
        if number is None:
            raise CmfError(
                "a shared value that is not one of the recipe's prepared groups cannot be "
                "encoded in a worker process"
            )
        return SharedToken(number, p.spec)
    return PendingNode(p.codec, {n: to_portable(c, shared) for n, c in p.parts.items()}, p.spec)


def from_portable(p: Any, shared: list[SharedValue]) -> Pending:
    """The inverse of :func:`to_portable`, with this process's shared values."""
    if isinstance(p, SharedToken):
        if not 0 <= p.number < len(shared):
            raise CmfError(f"a worker referenced shared value {p.number} of {len(shared)}")
        return PendingShared(shared[p.number], p.spec)
    if isinstance(p, PendingNode):
        return PendingNode(
            p.codec, {n: from_portable(c, shared) for n, c in p.parts.items()}, p.spec
        )
    return p


# ----------------------------------------------------------------------------- executors


class Executor(Protocol):
    """What runs tasks for :func:`pack_tasks` and the planner (InlineExecutor, ProcessExecutor,
    DaskExecutor): ``window`` tasks may run ahead of the writer regardless of size, and more
    while their sizes add up to at most ``jobs`` times the largest."""

    window: int
    jobs: int

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any: ...  # a future: .result()

    def close(self, cancel: bool) -> None: ...


class InlineExecutor:
    """Runs each task when it is submitted (``jobs=1``: the same code path, no processes)."""

    window = 0  # tasks ahead of the writer regardless of size
    jobs = 0  # multiplies the byte budget of tasks ahead

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # raised in order, when the writer gets there
            future.set_exception(exc)
        return future

    def close(self, cancel: bool) -> None:
        pass


class ProcessExecutor:
    """``jobs`` spawned worker processes (spawn: no inherited threads or locks, the same on
    every platform). ``peaks()`` gives their peak resident sets (Linux) before closing.

    The workers ignore SIGINT: Ctrl-C at a terminal reaches the whole process group, and the
    writer, not each worker, decides what stops. ``close(cancel=True)`` (an error or an
    interruption) terminates workers still busy instead of waiting for their tasks."""

    def __init__(self, jobs: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.window, self.jobs = jobs + 1, jobs
        self.pool = ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self.pool.submit(fn, *args)

    def _processes(self) -> list[Any]:
        return list((getattr(self.pool, "_processes", None) or {}).values())

    def peaks(self) -> list[int]:
        """VmHWM of each live worker, in bytes (empty where /proc is not readable)."""
        out = []
        for proc in self._processes():
            try:
                with open(f"/proc/{proc.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            out.append(int(line.split()[1]) * 1024)
            except OSError:
                pass
        return out

    def close(self, cancel: bool) -> None:
        if not cancel:
            self.pool.shutdown(wait=True)
            return
        procs = self._processes()
        _quiet_broken_pool_race()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:  # their tasks' results are wanted no more
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=5)


def _quiet_broken_pool_race() -> None:
    """Keep the traceback of a known CPython race off stderr: after workers are terminated on
    purpose, the pool's manager thread may mark a future that was already cancelled as broken
    and die of ``InvalidStateError``. Only that exception from that thread is silenced."""
    import threading
    from concurrent.futures import InvalidStateError

    previous = threading.excepthook
    if getattr(previous, "cmf_quiet_pool", False):
        return

    def hook(args: Any) -> None:
        manager = type(args.thread).__name__ == "_ExecutorManagerThread"
        if manager and args.exc_type is not None and issubclass(args.exc_type, InvalidStateError):
            return
        previous(args)

    hook.cmf_quiet_pool = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _worker_start() -> None:
    """A worker process: Ctrl-C is the parent's to handle, and BLAS runs on one thread (the
    parent runs one worker per CPU: more threads would only contend, and OpenBLAS's idle
    threads spin)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    blas_threads(1)
    heap.keep_big_blocks_off_heap()  # a worker makes and drops big arrays for task after task


class DaskExecutor:
    """Tasks run on a dask.distributed cluster (``scheduler``: an address, or a Client). The
    workers must be able to import cmf and read the source path (shared storage)."""

    def __init__(self, scheduler: Any, window: int | None = None, timeout: str = "30s") -> None:
        try:
            from distributed import Client
        except ImportError:
            raise CmfError(
                f"the dask executor needs dask.distributed: {install_hint('dask')}"
            ) from None
        if isinstance(scheduler, Client):
            self.client, self._own = scheduler, False
        else:
            try:
                self.client, self._own = Client(scheduler, timeout=timeout), True
            except (OSError, TimeoutError, ValueError) as exc:
                raise CmfError(f"cannot connect to the dask scheduler {scheduler}: {exc}") from None
        workers = max(1, sum(self.client.nthreads().values()))
        self.window, self.jobs = (window or workers + 1), workers
        self._scattered: dict[int, Any] = {}
        self._pending: set[Any] = set()  # futures not yet done (cancelled on an interruption)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        args = tuple(self._scatter(a) if isinstance(a, EncodeSettings) else a for a in args)
        future = self.client.submit(fn, *args, pure=False)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def _scatter(self, settings: EncodeSettings) -> Any:
        """The settings are sent to the cluster once (they may hold shared values)."""
        got = self._scattered.get(id(settings))
        if got is None or got[0] is not settings:
            got = (settings, self.client.scatter(settings, broadcast=True, hash=False))
            self._scattered[id(settings)] = got
        return got[1]

    def close(self, cancel: bool) -> None:
        """Release the cluster; with ``cancel`` (an error or an interruption) the tasks still
        queued or running are cancelled first, without waiting for them."""
        self._scattered.clear()
        pending, self._pending = list(self._pending), set()
        if cancel and pending:
            try:
                self.client.cancel(pending, asynchronous=False, force=True)
            except Exception:  # a lost scheduler: nothing left to cancel
                pass
        if self._own:
            if cancel:
                self.client.close(timeout=2)
            else:
                self.client.close()


@contextmanager
def closing(executor: Executor) -> Iterator[Executor]:
    """``with closing(make_executor(...)) as ex``: closed when the block ends; on an error or an
    interruption its work in flight is cancelled (busy worker processes terminated) at once."""
    try:
        yield executor
    except BaseException:
        executor.close(cancel=True)
        raise
    executor.close(cancel=False)


MAX_AUTO_JOBS = 8  # ``--jobs auto`` uses at most this many worker processes


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def auto_jobs(work: int, worth: int) -> int:
    """``--jobs auto``: one process per usable CPU (at most ``MAX_AUTO_JOBS``) when ``work`` (any
    unit: bytes, elements) is at least ``worth``, the amount that pays for starting workers;
    otherwise 1 (no worker processes)."""
    return min(usable_cpus(), MAX_AUTO_JOBS) if work >= worth else 1


def make_executor(jobs: int = 1, executor: str = "process", scheduler: Any = None) -> Executor:
    """The executor of ``jobs`` worker processes (an InlineExecutor for 1), or of the dask
    cluster at ``scheduler`` (``executor="dask"``); CmfError for other values."""
    if executor == "dask":
        if scheduler is None:
            raise CmfError("the dask executor needs a scheduler address")
        return DaskExecutor(scheduler)
    if executor != "process":
        raise CmfError(f"unknown executor {executor!r}; choose 'process' or 'dask'")
    if jobs < 1:
        raise CmfError(f"jobs must be at least 1, found {jobs}")
    return InlineExecutor() if jobs == 1 else ProcessExecutor(jobs)


# ----------------------------------------------------------------------------- sources


def _safetensors_files(src: Any) -> list[Any] | None:
    """The safetensors files of a source whose tensors a worker can read itself (a safetensors
    file, a Hugging Face directory of safetensors shards); None for any other source."""
    from .convert.hfdir import HFDirectorySource
    from .convert.safetensors import SafetensorsSource

    if isinstance(src, SafetensorsSource):
        return [src]
    files = getattr(src, "shards", None) if isinstance(src, HFDirectorySource) else None
    if files and all(isinstance(f, SafetensorsSource) for f in files):
        return list(files)
    return None


def source_tasks(src: Any) -> Iterator[tuple[str, Any]]:
    """``(name, value)`` in the source's order: a FileTensor where a worker can read the tensor
    itself (safetensors files, Hugging Face directories), else what ``src.items()`` yields (an
    array, or an already encoded ``Encoded`` tensor)."""
    files = _safetensors_files(src)
    if files is None:
        yield from src.items()
        return
    for shard in files:
        path = os.path.abspath(shard.path)
        for name in shard.names():
            yield name, FileTensor(path, name, _header_nbytes(shard, name))


def file_refs(src: Any) -> dict[str, FileTensor]:
    """name -> FileTensor for a source whose tensors a worker can read itself (a safetensors
    file, a Hugging Face directory); empty for other sources (their arrays are sent)."""
    if _safetensors_files(src) is None:
        return {}
    return {name: ref for name, ref in source_tasks(src) if isinstance(ref, FileTensor)}


def _header_nbytes(shard: Any, name: str) -> int:
    try:
        begin, end = shard._header[name]["data_offsets"]
        return int(end) - int(begin)
    except (KeyError, TypeError, ValueError):
        return -1


# ----------------------------------------------------------------------------- the pipeline


class Sink(Protocol):
    """Where results go in order: a Writer, or cmf.shards.ShardedWriter."""

    def check_name(self, name: str) -> None: ...

    def has_key(self, key: bytes) -> bool: ...

    def add_result(
        self,
        name: str,
        spec: ArraySpec,
        pending: Pending | None,
        error: dict | None = None,
        key: bytes | None = None,
    ) -> Any: ...

    def add_encoded(
        self, name: str, spec: ArraySpec, pending: Pending, error: dict | None = None
    ) -> Any: ...


class WriterSink:
    """A single-file :class:`cmf.writer.Writer` as a sink (names checked in order)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self._names: set[str] = set()

    def check_name(self, name: str) -> None:
        check_tensor_name(name, self.writer.limits)
        if name in self._names:
            raise CmfError(f"duplicate tensor name {name!r}")
        self._names.add(name)

    def has_key(self, key: bytes) -> bool:
        return self.writer.has_key(key)

    def add_result(self, *args: Any, **kw: Any) -> Any:
        return self.writer.add_result(*args, **kw)

    def add_encoded(self, *args: Any, **kw: Any) -> Any:
        return self.writer.add_encoded(*args, **kw)

    def add_attachment(self, name: str, data: bytes) -> Any:
        return self.writer.add_attachment(name, data)

    @property
    def limits(self) -> Limits:
        return self.writer.limits


def write_tensors(
    sink: Any,
    items: Iterable[tuple[str, Any]],
    encoder_of: Callable[[str], Callable[[np.ndarray, ArraySpec], Pending]],
    attachments: Iterable[tuple[str, bytes]] = (),
    on_entry: Callable[[Any], None] | None = None,
) -> None:
    """The one serial write path: each ``(name, value)`` written to ``sink`` (a WriterSink or a
    cmf.shards.ShardedWriter) as ``Writer.add_tensor`` writes it — an ``Encoded`` value as it
    is, an array encoded by ``encoder_of(name)`` (or an alias of an identical tensor the sink
    holds) with its measured error — then the attachments. ``on_entry`` sees each index entry."""

    for name, value in items:
        sink.check_name(name)
        if isinstance(value, Encoded):
            entry = sink.add_encoded(name, value.spec, value.pending)
        else:
            spec, array = tensor_array(name, value, sink.limits)
            key = tensor_key(array, spec)
            pending = error = None
            if not sink.has_key(key):  # else an alias of the identical tensor
                pending = encoder_of(name)(array, spec)
                _check_root(name, pending, spec)
                error = tensor_error(array, pending)
            entry = sink.add_result(name, spec, pending, error, key)
        if on_entry is not None:
            on_entry(entry)
    for name, data in attachments:
        sink.add_attachment(name, data)


MAX_AHEAD = 256  # tasks ahead of the writer per job, however small (the bytes bound them too)


def _nbytes(value: Any) -> int:
    """Decoded bytes of a task's tensor (-1 if unknown: an Encoded tensor is not submitted)."""
    return value.nbytes if isinstance(value, (FileTensor, np.ndarray)) else -1


def _result(future: Any, name: str, doing: str = "encoding") -> Any:
    try:
        return future.result()
    except CmfError:
        raise
    except Exception as exc:
        if type(exc).__name__ in ("BrokenProcessPool", "KilledWorker", "CancelledError"):
            raise CmfError(
                f"a worker died while {doing} tensor {name!r} ({type(exc).__name__}: {exc}); "
                "out of memory? try fewer jobs"
            ) from None
        raise


def map_in_order(
    executor: Executor,
    fn: Callable[..., Any],
    calls: Iterable[tuple[str, tuple]],
    doing: str = "encoding",
    ahead: int | None = None,
) -> Iterator[tuple[str, Any]]:
    """``(name, fn(*args))`` for each ``(name, args)`` of ``calls``, in order, run on
    ``executor`` with at most ``ahead`` (default ``executor.window``) calls in flight (an
    InlineExecutor runs each as it is submitted). An error is raised when its call is reached;
    the calls still in flight are then cancelled. ``doing`` names the work in a dead worker's
    error."""
    window = max(int(ahead if ahead is not None else getattr(executor, "window", 0)), 1)
    slots: deque = deque()
    try:
        for name, args in calls:
            while len(slots) >= window:
                done, future = slots.popleft()
                yield done, _result(future, done, doing)
            slots.append((name, executor.submit(fn, *args)))
        while slots:
            done, future = slots.popleft()
            yield done, _result(future, done, doing)
    finally:  # an error, or the consumer stopped early
        for _, future in slots:
            future.cancel()


HEAVY_TASK_ELEMENTS = 1 << 25  # a planner task on a tensor this big takes > 1 GB in a worker
# (a 1 B model's 100 M-element embedding: 1.0-1.4 GB): such tasks run one at a time


def big_first(names: Sequence[str], sizes: Mapping[str, int]) -> list[str]:
    """The order the planner sends per-tensor tasks in: the tensors much bigger than the
    median first, largest first (no worker is left alone with an embedding table at the end),
    then the others in ``names``' order, which is block order for a decoder: its moments are
    computed a block at a time, one block kept (cmf.plan.decoder.DecoderMoments)."""
    typical = float(np.median([sizes[n] for n in names])) if names else 0.0
    big = sorted((n for n in names if sizes[n] > 4 * typical), key=lambda n: -sizes[n])
    taken = set(big)
    return big + [n for n in names if n not in taken]


def map_as_done(
    executor: Executor,
    fn: Callable[..., Any],
    calls: Iterable[tuple[str, tuple]],
    ahead: int,
    doing: str = "encoding",
    heavy: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, Any]]:
    """``(name, fn(*args))`` for each ``(name, args)`` of ``calls`` as the calls finish (not in
    order), with at most ``ahead`` in flight: a long call does not hold back the others, and
    the arguments of at most ``ahead`` calls are alive at once (``calls`` is read lazily), plus
    those of heavy calls held back. ``heavy(name)``: the call is too big in memory to run beside
    another heavy one; it waits until none is in flight while the calls after it go ahead.
    Futures must be concurrent.futures ones (process or inline executors). The first error
    met is raised and the calls still in flight are cancelled."""
    from concurrent.futures import FIRST_COMPLETED, wait

    window = max(int(ahead), 1)
    flight: dict[Any, str] = {}
    held: deque[tuple[str, tuple]] = deque()  # heavy calls waiting for the one in flight
    todo = iter(calls)
    exhausted = False
    try:
        while True:
            while len(flight) < window:
                busy = heavy is not None and any(heavy(n) for n in flight.values())
                if held and not busy:
                    name, args = held.popleft()
                elif exhausted:
                    break
                else:
                    call = next(todo, None)
                    if call is None:
                        exhausted = True
                        continue
                    name, args = call
                    if heavy is not None and (busy or held) and heavy(name):
                        held.append((name, args))
                        continue
                flight[executor.submit(fn, *args)] = name
            if not flight:
                return
            done, _ = wait(list(flight), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: list(flight).index(f)):  # submission order
                name = flight.pop(future)
                yield name, _result(future, name, doing)
    finally:  # an error, or the consumer stopped early
        for future in flight:
            future.cancel()


def pack_tasks(
    sink: Any,
    tasks: Iterable[tuple[str, Any]],
    settings: EncodeSettings,
    executor: Executor,
    on_entry: Callable[[Any], None] | None = None,
) -> None:
    """Encode ``(name, value)`` tasks on ``executor`` and write them to ``sink`` in order.

    ``value`` is a FileTensor, an array, or an ``Encoded`` tensor (written as it is). Tasks are
    submitted ahead of the one being written while fewer than ``executor.window`` are, or while
    their sizes add up to at most ``executor.jobs`` times the largest (see the module
    docstring); an InlineExecutor runs each as it is submitted. Any error is raised
    when the writer reaches that tensor, as a serial pack would raise it; outstanding tasks are
    then cancelled (the caller aborts the writer)."""

    window = int(getattr(executor, "window", 0))
    jobs = int(getattr(executor, "jobs", 0))
    shared = plan_shared(settings.recipe)
    for value in shared:  # picklable leaves (same bytes), so that the settings can be sent
        value.encoding = to_portable(value.encoding, {})
    ahead = {"bytes": 0, "largest": 0}
    written: dict[int, set[bytes]] = {}  # nbytes -> digests written (skip sets for tasks)
    slots: deque = deque()

    def submit(name: str, value: Any) -> None:
        if isinstance(value, Encoded):
            slots.append((name, value, None))
            return
        nbytes = _nbytes(value)
        skip = frozenset(k for k in written.get(nbytes, ()) if sink.has_key(k))
        slots.append((name, value, executor.submit(encode_task, name, value, skip, settings)))
        ahead["bytes"] += max(nbytes, 0)

    def room(nbytes: int) -> bool:
        """May one more task of ``nbytes`` be submitted before the oldest is written?"""
        if len(slots) < window:
            return True
        budget = jobs * max(ahead["largest"], nbytes)
        return len(slots) < MAX_AHEAD * jobs and ahead["bytes"] + nbytes <= budget

    def commit() -> None:
        name, value, future = slots.popleft()
        ahead["bytes"] -= max(_nbytes(value), 0) if future is not None else 0
        if future is None:
            sink.check_name(name)
            entry = sink.add_encoded(name, value.spec, value.pending)
        else:
            sink.check_name(name)
            result: Result = _result(future, name)
            pending = from_portable(result.pending, shared) if result.pending is not None else None
            error = result.error
            if pending is None and not sink.has_key(result.key):  # e.g. a new shard began
                again = encode_task(name, value, frozenset(), settings)
                pending, error = from_portable(again.pending, shared), again.error
            entry = sink.add_result(name, result.spec, pending, error, result.key)
            if result.key is not None and entry.alias is None:
                written.setdefault(result.spec.nbytes, set()).add(result.key)
        if on_entry is not None:
            on_entry(entry)

    try:
        for name, value in tasks:
            nbytes = _nbytes(value)
            while slots and not room(nbytes):
                commit()
            ahead["largest"] = max(ahead["largest"], nbytes)
            submit(name, value)
        while slots:
            commit()
    except BaseException:
        for _, _, future in slots:
            if future is not None:
                future.cancel()
        raise


# ----------------------------------------------------------------------------- one call


@dataclass
class Packed:
    """What :func:`pack_source` wrote: the files (shards first, then the shard index),
    the decoded bytes of all tensors, and the peak resident set of each worker process."""

    files: list[str]
    raw_bytes: int
    worker_peaks: list[int]

    @property
    def stored_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files if f.endswith(".cmf"))


def pack_source(
    src: Any,
    output: str,
    settings: EncodeSettings,
    *,
    jobs: int = 1,
    executor: str = "process",
    scheduler: Any = None,
    shard_size: int | None = None,
    attachments: Iterable[tuple[str, bytes]] = (),
    on_entry: Callable[[Any], None] | None = None,
) -> Packed:
    """Pack a converter source (cmf.convert) to ``output`` (one .cmf, or a sharded set when
    ``shard_size`` is given) with ``jobs`` processes or a dask cluster; attachments of the
    source, then ``attachments``, follow the tensors."""
    from .shards import ShardedWriter
    from .writer import Writer

    ex = make_executor(jobs, executor, scheduler)
    peaks: list[int] = []
    with closing(ex):
        if shard_size is not None:
            sink: Any = ShardedWriter(
                output,
                shard_size,
                metadata=src.metadata,
                level=settings.level,
                limits=settings.limits,
            )
            target = sink
        else:
            target = Writer(
                output, metadata=src.metadata, level=settings.level, limits=settings.limits
            )
            sink = WriterSink(target)
        with target:
            pack_tasks(sink, source_tasks(src), settings, ex, on_entry)
            if isinstance(ex, ProcessExecutor):
                peaks = ex.peaks()
            for name, data in [*src.attachments.items(), *attachments]:
                target.add_attachment(name, data)
    files = [*target.files, target.index_file] if shard_size is not None else [target.path]
    return Packed(files, target.raw_bytes, peaks)
