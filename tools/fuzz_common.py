"""Fuzzing harness shared by tools/fuzz_*.py: targets, two engines, the checks, the figures.

A *target* is a function of one input (bytes) plus seeds and, optionally, a structure-aware
mutator. The harness fails (a *finding*) when the target

- raises anything but ``CmfError`` (a numpy ``RuntimeWarning`` counts: it is made an error)
  (the converters wrap their readers' errors in ``CmfError`` too, so that is their "documented
  clear error"); ``KeyboardInterrupt`` stops the run;
- takes more than ``TIME_LIMIT`` (1 s) on an input, twice in a row (once could be a noisy
  neighbour on a shared machine);
- needs more than ``MEMORY_LIMIT`` (2 GiB) of address space beyond what the process had when
  fuzzing started: ``RLIMIT_AS`` is set there, so such an allocation raises ``MemoryError``
  (a finding). Targets read files with ``FUZZ_LIMITS`` (64 MiB per tensor), so any decoder
  needing more than ~30x its output in scratch memory shows up.

Engines:

- ``atheris`` (coverage-guided libFuzzer, ``pip install -e '.[fuzz]'``): the cmf package (and a
  target's ``instrument`` prefixes) is instrumented after import; the structure-aware mutator is
  libFuzzer's custom mutator 80 % of the time, libFuzzer's own byte mutations otherwise.
  Findings are libFuzzer artifacts (``crash-*``, ``timeout-*``) under ``--findings``.
- ``python`` (no dependency; deterministic for a ``--seed``): random byte mutations and the
  target's mutator, with a corpus that keeps every input giving a new *outcome* (success, or
  an error class + message shape); half the parents are inputs that decoded cleanly. Used by
  ``tools/fuzz_smoke.py`` in CI and by the tests.

Run ``python tools/fuzz_container.py --help`` (any tools/fuzz_<group>.py has the same CLI).
"""

from __future__ import annotations

import os

# One thread: small matmuls, no thread stacks in RLIMIT_AS (set before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import atexit
import hashlib
import json
import random
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cmf
from cmf.errors import CmfError

TIME_LIMIT = 1.0
MEMORY_LIMIT = 2 << 30
HANG_LIMIT = 20  # seconds: SIGALRM breaks a real hang in the python engine
FUZZ_LIMITS = cmf.Limits(
    max_tensor_bytes=64 << 20, max_attachment_bytes=64 << 20, max_shared_bytes=64 << 20
)
MAX_LEN = 1 << 16
WORK = os.path.join(tempfile.gettempdir(), "cmf-fuzz")  # default corpus and findings


class Finding(Exception):
    """Something a target must never do on any input."""


@dataclass
class Target:
    name: str
    run: Callable[[bytes], Any]
    seeds: Callable[[], list[bytes]]
    mutate: Callable[[bytes, random.Random], bytes] | None = None
    max_len: int = MAX_LEN
    instrument: tuple[str, ...] = ("cmf",)
    allowed: tuple[type[BaseException], ...] = (CmfError,)
    dataflow: bool = True  # atheris: trace comparisons too (see instrument())
    time_limit: float = TIME_LIMIT  # a slow-input finding above this (its oracle's time included)


# ----------------------------------------------------------------------------- scratch files

_SCRATCH: str | None = None


def scratch_dir() -> str:
    """A private directory on tmpfs where targets write their inputs as files."""
    global _SCRATCH
    if _SCRATCH is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        _SCRATCH = tempfile.mkdtemp(prefix=f"cmf-fuzz-{os.getpid()}-", dir=base)
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


def scratch_file(data: bytes, name: str = "input.cmf", directory: str | None = None) -> str:
    """Write ``data`` to ``name`` in the scratch directory (atomically: readers of the previous
    input keep their mapping) and return its path.

    Plain ``os.open``/``os.write`` (no buffered file object: ~5 us less per input, the same
    file, mode 0o666 & ~umask as ``open(..., "wb")``)."""
    d = directory or scratch_dir()
    path = os.path.join(d, name)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # non-inheritable (PEP 446)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- resources


def vm_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * resource.getpagesize()
    except OSError:
        return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def cap_memory(extra: int = MEMORY_LIMIT) -> int:
    """Set RLIMIT_AS to the current address space plus ``extra``; returns the cap (0: none).
    ``restore_memory()`` puts the previous limit back."""
    current = vm_bytes()
    if not current:
        return 0
    _OLD_AS.append(resource.getrlimit(resource.RLIMIT_AS))
    cap = current + extra
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return cap


_OLD_AS: list[tuple[int, int]] = []


def restore_memory() -> None:
    if _OLD_AS:
        resource.setrlimit(resource.RLIMIT_AS, _OLD_AS.pop())


# ----------------------------------------------------------------------------- checking


@dataclass
class Stats:
    target: str
    engine: str
    execs: int = 0
    rejected: int = 0
    accepted: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    slowest_sha1: str = ""
    findings: list[dict] = field(default_factory=list)
    outcomes: int = 0
    corpus: int = 0
    peak_rss: int = 0
    memory_cap: int = 0
    coverage: int | None = None
    features: int | None = None

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["exec_per_s"] = round(self.execs / self.seconds, 1) if self.seconds else None
        return d


_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+")
_QUOTED = re.compile(r"'[^']*'")


def outcome_key(exc: BaseException | None) -> str:
    """Success, or the error's class and message shape (numbers and quoted text elided)."""
    if exc is None:
        return "ok"
    msg = str(exc)
    if _SCRATCH:
        msg = msg.replace(_SCRATCH, "")
    msg = _NUMBER.sub("#", msg)
    msg = _QUOTED.sub("'_'", msg)
    return f"{type(exc).__name__}:{msg[:120]}"


def execute(target: Target, data: bytes, stats: Stats, key: bool = True) -> str:
    """Run ``target`` on ``data`` once with every check; Finding on a violation. Returns the
    outcome key (``outcome_key``), or "" with ``key=False`` (atheris: libFuzzer's coverage
    picks the corpus, the key would only be thrown away)."""
    start = time.perf_counter()
    exc: BaseException | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # numpy overflow/invalid on input
            target.run(data)
    except target.allowed as e:
        exc = e
    except Finding:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - anything else is what we hunt
        tb = traceback.format_exc(limit=-6)
        raise Finding(f"{type(e).__name__}: {str(e)[:500]}\n{tb}") from None
    elapsed = time.perf_counter() - start
    if (
        elapsed > target.time_limit
    ):  # once more, in CPU time (all threads): a busy neighbour is not a slow input
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            target.run(data)
        except target.allowed:
            pass
        elapsed = min(elapsed, time.perf_counter() - wall, time.process_time() - cpu)
        if elapsed > target.time_limit:
            raise Finding(f"slow input: {elapsed:.2f} s (limit {target.time_limit} s)")
    stats.execs += 1
    if exc is None:
        stats.accepted += 1
    else:
        stats.rejected += 1
    if elapsed > stats.slowest:
        stats.slowest = elapsed
        stats.slowest_sha1 = hashlib.sha1(data).hexdigest()
    return outcome_key(exc) if key else ""


# ----------------------------------------------------------------------------- byte mutations

INTERESTING = [
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    31,
    32,
    63,
    64,
    127,
    128,
    255,
    256,
    1023,
    1024,
    4095,
    4096,
    32767,
    32768,
    65535,
    65536,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    (1 << 53),
    (1 << 53) + 1,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
]


def byte_mutate(
    data: bytes, rng: random.Random, max_len: int = MAX_LEN, others: list[bytes] | None = None
) -> bytes:
    """1 to 4 random byte-level edits (flips, interesting integers, inserts, deletes, copies,
    splices with another corpus entry, truncation)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(11)
        n = len(buf)
        if op == 0 and n:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2 and n:
            buf[rng.randrange(n)] = rng.choice(
                (0, 1, 0x7F, 0x80, 0xFF, 0xC0, 0xC1, 0xDC, 0xDD, 0xDF)
            )
        elif op == 3 and n:  # an interesting integer, 1/2/4/8 bytes, either byte order
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
            if rng.random() < 0.3:
                value = (value + rng.choice((-1, 1))) & ((1 << (8 * width)) - 1)
            raw = value.to_bytes(width, rng.choice(("little", "big")))
            at = rng.randrange(max(1, n - width + 1))
            buf[at : at + width] = raw
        elif op == 4:
            at = rng.randrange(n + 1)
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 5 and n:
            at = rng.randrange(n)
            del buf[at : at + rng.randint(1, min(64, n - at))]
        elif op == 6 and n:  # duplicate a block
            a = rng.randrange(n)
            chunk = buf[a : a + rng.randint(1, 64)]
            at = rng.randrange(n + 1)
            buf[at:at] = chunk
        elif op == 7 and n:  # copy a block over another place
            a, b = rng.randrange(n), rng.randrange(n)
            chunk = buf[a : a + rng.randint(1, 32)]
            buf[b : b + len(chunk)] = chunk
        elif op == 8 and others:  # splice
            other = rng.choice(others)
            if other:
                cut = rng.randrange(len(buf) + 1)
                at = rng.randrange(len(other))
                buf = buf[:cut] + other[at:]
        elif op == 9 and n:
            del buf[rng.randrange(n) :]
        elif op == 10 and n:  # arithmetic on a byte
            at = rng.randrange(n)
            buf[at] = (buf[at] + rng.randint(-16, 16)) & 0xFF
    return bytes(buf[:max_len])


# ----------------------------------------------------------------------------- python engine


def fuzz_python(
    target: Target,
    *,
    runs: int | None,
    seconds: float | None,
    seed: int,
    findings_dir: str | None,
    stats_path: str | None = None,
    stop_on_finding: bool = False,
    quiet: bool = False,
) -> Stats:
    """Mutation fuzzing without coverage: keeps every input with a new outcome."""
    stats = Stats(target.name, "python")
    stats.memory_cap = cap_memory()
    rng = random.Random(seed)
    corpus: list[bytes] = []
    good: list[
        bytes
    ] = []  # accepted inputs: half the parents (mutants of broken files stay broken)
    seen: set[str] = set()
    start = time.perf_counter()
    last_report = start - 10  # the first figures right after the seeds

    def alarm(signum: int, frame: Any) -> None:
        raise Finding(f"hang: no result after {HANG_LIMIT} s")

    old = signal.signal(signal.SIGALRM, alarm)

    def one(data: bytes) -> None:
        signal.alarm(HANG_LIMIT)
        try:
            key = execute(target, data, stats)
        except Finding as f:
            record(target, data, str(f), stats, findings_dir, quiet)
            if stop_on_finding:
                raise
            return
        finally:
            signal.alarm(0)
        if key not in seen:
            seen.add(key)
            corpus.append(data)
        if key == "ok" and len(good) < 4096:
            good.append(data)

    try:
        for s in dict.fromkeys(target.seeds()):
            one(s)
        if not corpus:
            corpus.append(b"")
        i = 0
        while True:
            now = time.perf_counter()
            if runs is not None and i >= runs:
                break
            if seconds is not None and now - start >= seconds:
                break
            parent = rng.choice(good if good and rng.random() < 0.5 else corpus)
            if target.mutate is not None and rng.random() < 0.75:
                try:
                    child = target.mutate(parent, rng)
                except Exception as exc:  # noqa: BLE001 - a mutator bug is not a finding
                    raise RuntimeError(f"mutator of {target.name} failed: {exc}") from exc
                child = child[: target.max_len]
            else:
                child = byte_mutate(parent, rng, target.max_len, corpus)
            one(child)
            i += 1
            if stats_path and now - last_report > 10:
                last_report = now
                _finish(stats, start, seen, corpus)
                write_stats(stats, stats_path)
    finally:
        signal.signal(signal.SIGALRM, old)
        restore_memory()
        _finish(stats, start, seen, corpus)
        if stats_path:
            write_stats(stats, stats_path)
    return stats


def _finish(stats: Stats, start: float, seen: set, corpus: list) -> None:
    stats.seconds = time.perf_counter() - start
    stats.outcomes = len(seen)
    stats.corpus = len(corpus)
    stats.peak_rss = peak_rss()


def record(
    target: Target,
    data: bytes,
    what: str,
    stats: Stats,
    findings_dir: str | None,
    quiet: bool = False,
) -> None:
    sha = hashlib.sha1(data).hexdigest()
    entry = {"sha1": sha, "what": what.splitlines()[0][:300], "size": len(data)}
    if findings_dir:
        os.makedirs(findings_dir, exist_ok=True)
        path = os.path.join(findings_dir, f"{target.name}-{sha[:16]}.bin")
        with open(path, "wb") as fh:
            fh.write(data)
        with open(path + ".txt", "w") as fh:
            fh.write(what + "\n")
        entry["file"] = path
    if not any(f["what"] == entry["what"] for f in stats.findings):
        if not quiet:
            print(f"FINDING in {target.name}: {what}", file=sys.stderr)
    stats.findings.append(entry)


def write_stats(stats: Stats, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(stats.to_json(), fh, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- atheris engine


_PLAIN = (int, float, str, bytes, bool, type(None))


def _guard_comparisons() -> bool:
    """atheris traces every ``<``/``==``/... of instrumented code through ``_trace_cmp``, which
    expects plain values: route comparisons of anything else (numpy arrays) around it. False if
    this atheris numbers the operators differently (then data flow is not traced at all)."""
    import operator

    import atheris

    orig = atheris._trace_cmp
    ops = (operator.lt, operator.le, operator.eq, operator.ne, operator.gt, operator.ge)
    for a, b in ((2, 3), (3, 3), (4, 3)):
        for k, op in enumerate(ops):
            if bool(orig(a, b, k, 0, False)) != op(a, b):
                return False

    def trace_cmp(a: Any, b: Any, k: int, counter: int, is_const: bool) -> Any:
        if type(a) in _PLAIN and type(b) in _PLAIN:
            return orig(a, b, k, counter, is_const)
        return ops[k](a, b)

    atheris._trace_cmp = trace_cmp
    return True


def instrument(prefixes: tuple[str, ...], dataflow: bool = True) -> int:
    """Instrument (atheris) every loaded Python function whose module starts with a prefix:
    coverage, and comparisons unless ``dataflow`` is False (or CMF_FUZZ_NO_DATAFLOW is set).

    The codec targets run without comparison tracing: with it, atheris 3.0 under libFuzzer grew
    the codec-sparse process by ~30 KB per input (1.4 GB after 40 000 inputs; the python engine
    and a replay of the same inputs under the same instrumentation do not grow), for no coverage
    gained on those small decoders."""
    import gc

    import atheris

    dataflow = dataflow and not os.environ.get("CMF_FUZZ_NO_DATAFLOW") and _guard_comparisons()

    count = 0
    for obj in gc.get_objects():
        if not callable(obj) or not hasattr(obj, "__code__"):
            continue
        module = getattr(obj, "__module__", None) or ""
        if not any(module == p or module.startswith(p + ".") for p in prefixes):
            continue
        try:
            obj.__code__ = atheris.patch_code(obj.__code__, dataflow, True)
            count += 1
        except Exception:  # noqa: BLE001 - builtins, already instrumented ...
            pass
    return count


def plain_functions(module: Any, names: tuple[str, ...]) -> dict[str, Callable]:
    """Copies of the functions ``names`` of ``module``, calling one another (not the originals),
    that ``instrument()`` leaves alone (their ``__module__`` is not the module's name).

    For a mutator that reuses code under test: atheris would trace its branches and comparisons
    on every mutation, for nothing (libFuzzer only counts what the input's run covers). Make
    them before ``instrument()`` runs (both engines call a target's ``seeds()`` first); made
    later they would copy the instrumented code (slower, still correct)."""
    import types

    namespace = dict(vars(module))
    namespace["__name__"] = f"uninstrumented:{module.__name__}"
    out: dict[str, Callable] = {}
    for name in names:
        f = getattr(module, name)
        copy = types.FunctionType(f.__code__, namespace, f.__name__, f.__defaults__, f.__closure__)
        copy.__kwdefaults__ = f.__kwdefaults__
        copy.__qualname__ = f.__qualname__
        namespace[name] = out[name] = copy
    return out


def fuzz_atheris(
    target: Target,
    corpus_dir: str,
    findings_dir: str,
    stats_path: str | None,
    libfuzzer_args: list[str],
) -> None:
    """Hand over to libFuzzer (never returns). Seeds are written to ``corpus_dir`` first."""
    import atheris

    os.makedirs(corpus_dir, exist_ok=True)
    os.makedirs(findings_dir, exist_ok=True)
    for s in target.seeds():
        name = hashlib.sha1(s).hexdigest()
        p = os.path.join(corpus_dir, name)
        if not os.path.exists(p):
            with open(p, "wb") as fh:
                fh.write(s)
    stats = Stats(target.name, "atheris")
    n = instrument(target.instrument, target.dataflow)
    print(f"INFO: instrumented {n} functions of {', '.join(target.instrument)}", file=sys.stderr)
    stats.memory_cap = cap_memory()
    start = time.perf_counter()
    last = [start]

    def one_input(data: bytes) -> None:
        try:
            execute(target, data, stats, key=False)
        except Finding as f:
            record(target, data, str(f), stats, findings_dir, quiet=True)
            if stats_path:
                _atheris_stats(stats, start, stats_path)
            raise
        now = time.perf_counter()
        if stats_path and now - last[0] > 2:
            last[0] = now
            _atheris_stats(stats, start, stats_path)

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if target.mutate is not None and rng.random() < 0.8:
            try:
                return target.mutate(data, rng)[:max_size]
            except Exception:  # noqa: BLE001
                pass
        return atheris.Mutate(data, max_size)

    args = [
        sys.argv[0],
        f"-max_len={target.max_len}",
        "-timeout=30",
        "-rss_limit_mb=4096",
        f"-artifact_prefix={findings_dir.rstrip('/')}/{target.name}-",
        *libfuzzer_args,
        corpus_dir,
    ]
    kw = {"custom_mutator": mutator} if target.mutate is not None else {}
    atheris.Setup(args, one_input, **kw)
    atheris.Fuzz()


def _atheris_stats(stats: Stats, start: float, path: str) -> None:
    stats.seconds = time.perf_counter() - start
    stats.peak_rss = peak_rss()
    write_stats(stats, path)


# ----------------------------------------------------------------------------- CLI


def main(targets: dict[str, Target], argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="cmf fuzz targets (see tools/fuzz_common.py)")
    p.add_argument("target", choices=sorted(targets) + ["all"])
    p.add_argument(
        "--engine",
        choices=("atheris", "python"),
        default=None,
        help="default: atheris if installed, else python",
    )
    p.add_argument("--runs", type=int, default=None, help="inputs to try (python engine)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--corpus", default=None, help="atheris corpus directory")
    p.add_argument(
        "--findings", default=os.path.join(WORK, "findings"), help="where failing inputs go"
    )
    p.add_argument("--stats", default=None, help="write figures (JSON) here")
    p.add_argument(
        "--replay",
        nargs="*",
        default=None,
        help="run the target once on each of these files and exit",
    )
    a, libfuzzer = p.parse_known_args(argv)  # the rest (-dict=..., -jobs=...) go to libFuzzer
    chosen = sorted(targets) if a.target == "all" else [a.target]
    if a.replay is not None:
        bad = 0
        for name in chosen:
            stats = Stats(name, "replay")
            for path in a.replay:
                with open(path, "rb") as fh:
                    data = fh.read()
                try:
                    print(f"{path}: {execute(targets[name], data, stats)}")
                except Finding as f:
                    bad += 1
                    print(f"{path}: FINDING {f}")
        return 1 if bad else 0
    engine = a.engine
    if engine is None:
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "python"
    if engine == "atheris":
        if len(chosen) != 1:
            p.error("the atheris engine runs one target per process")
        target = targets[chosen[0]]
        extra = [x for x in libfuzzer if x != "--"]
        if a.seconds is not None:
            extra.append(f"-max_total_time={int(a.seconds)}")
        if a.runs is not None:
            extra.append(f"-runs={a.runs}")
        extra.append(f"-seed={a.seed}")
        corpus = a.corpus or os.path.join(WORK, "corpus", target.name)
        fuzz_atheris(target, corpus, a.findings, a.stats, extra)
        return 0  # not reached
    failed = 0
    for name in chosen:
        stats = fuzz_python(
            targets[name],
            runs=a.runs if a.runs is not None or a.seconds else 1000,
            seconds=a.seconds,
            seed=a.seed,
            findings_dir=a.findings,
            stats_path=a.stats if len(chosen) == 1 else None,
        )
        print(json.dumps(stats.to_json()))
        failed += bool(stats.findings)
    return 1 if failed else 0


def u32(n: int) -> bytes:
    return struct.pack("<I", n)
