"""Parallel packing (cmf.parallel, ``cmf pack --jobs N``): the same bytes as a serial pack.

A generated model with tied weights (the same tensor under three names, one tied pair far apart,
one adjacent), several dtypes and matrices big enough for the lossy presets is packed with
``--jobs 1`` (the serial ``Writer.add_tensor`` loop) and ``--jobs 2`` (spawned worker
processes); the files must be identical, aliases and recorded errors included. A GGUF file with
kept blocks (arriving already encoded) and an in-memory ``save_file(jobs=2)`` go through the same
comparison. Peak memory of ``--jobs 2`` is measured in a subprocess (tools/bench_memory.py).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file as st_save

import cmf
from cmf import cli
from cmf.codecs import ArraySpec
from cmf.dtypes import BY_NAME
from cmf.parallel import (
    EncodeSettings,
    FileTensor,
    InlineExecutor,
    WriterSink,
    encode_task,
    from_portable,
    pack_tasks,
    plan_shared,
)
from cmf.plan.presets import resolve_recipe
from cmf.plan.recipe import recipe_from_obj
from cmf.writer import Writer


def model_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = (rng.standard_normal((256, 64)) * 0.05).astype(np.float32)
    t = {
        "embed.weight": emb,
        "embed.norm": rng.standard_normal(64).astype(np.float32),
        "ids": np.arange(64, dtype=np.int64).reshape(1, 64),
    }
    for i in range(3):
        t[f"layer.{i}.q.weight"] = (rng.standard_normal((64, 128)) * 0.05).astype(np.float32)
        t[f"layer.{i}.q.bias"] = rng.standard_normal(64).astype(np.float32)
        t[f"layer.{i}.up.weight"] = (rng.standard_normal((128, 64)) * 0.05).astype(
            ml_dtypes.bfloat16
        )
        t[f"layer.{i}.down.weight"] = rng.standard_normal((64, 96)).astype(np.float16)
    t["layer.2.q.weight.copy"] = t["layer.2.q.weight"].copy()  # adjacent tie: still in flight
    t["lm_head.weight"] = emb.copy()  # far from its twin: already written when submitted
    t["lm_head.weight.again"] = emb.copy()
    t["zeros"] = np.zeros((0, 4), np.float32)
    t["scalar"] = np.array(3.5, np.float32)
    return t


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("par") / "model.safetensors"
    st_save(model_tensors(), str(path), metadata={"format": "pt"})
    return str(path)


def run_cli(*args) -> None:
    try:
        cli.run([str(a) for a in args])
    except SystemExit as exc:
        assert not exc.code, exc.code


def _bytes(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("preset", ["lossless", "q4", "q8"])
def test_jobs_2_writes_the_bytes_of_jobs_1(model, tmp_path, preset):
    one, two = tmp_path / "one.cmf", tmp_path / "two.cmf"
    run_cli("pack", model, "-o", one, "--preset", preset, "-q", "--jobs", "1")
    run_cli("pack", model, "-o", two, "--preset", preset, "-q", "--jobs", "2")
    assert _bytes(one) == _bytes(two)
    with cmf.open(two) as f:
        aliases = {e.name: e.alias for e in f.index.tensors if e.alias}
        assert aliases == {
            "layer.2.q.weight.copy": "layer.2.q.weight",
            "lm_head.weight": "embed.weight",
            "lm_head.weight.again": "embed.weight",
        }
        if preset != "lossless":
            assert f.entry("layer.0.q.weight").error is not None  # the recorded error is there
    assert cmf.validate(two).valid


def test_save_file_jobs_matches_serial(tmp_path):
    tensors = model_tensors(1)
    cmf.save_file(
        tensors, tmp_path / "a.cmf", {"k": "v"}, preset="q4", attachments={"x.txt": b"hi"}
    )
    cmf.save_file(
        tensors, tmp_path / "b.cmf", {"k": "v"}, preset="q4", attachments={"x.txt": b"hi"}, jobs=2
    )
    assert _bytes(tmp_path / "a.cmf") == _bytes(tmp_path / "b.cmf")


def test_gguf_kept_blocks_in_order(tmp_path):
    pytest.importorskip("gguf")
    from tests.convert.test_gguf import model_tensors as gguf_tensors
    from tests.convert.test_gguf import write_gguf

    path = write_gguf(tmp_path / "m.gguf", gguf_tensors())
    run_cli("pack", path, "-o", tmp_path / "one.cmf", "-q")
    run_cli("pack", path, "-o", tmp_path / "two.cmf", "-q", "--jobs", "2", "--preset", "lossless")
    assert _bytes(tmp_path / "one.cmf") == _bytes(tmp_path / "two.cmf")


def test_shared_group_recipe_in_workers(tmp_path):
    """A recipe with a shared codebook: workers reference the main process's shared value
    (shipped as a token), so it is written once, as in a serial pack."""
    recipe = recipe_from_obj(
        {
            "rules": [
                {
                    "match": "layer.*.weight",
                    "dtypes": ["f32"],
                    "min_rank": 2,
                    "encoding": {"codec": "codebook", "fit": {"k": 16, "shared": "g"}},
                }
            ]
        }
    )
    tensors = model_tensors(2)
    cmf.save_file(tensors, tmp_path / "a.cmf", recipe=recipe)
    cmf.save_file(tensors, tmp_path / "b.cmf", recipe=recipe, jobs=2)
    assert _bytes(tmp_path / "a.cmf") == _bytes(tmp_path / "b.cmf")
    with cmf.open(tmp_path / "b.cmf") as f:
        assert len(f.index.shared) == 1


def test_results_pickle_and_round_trip(model):
    recipe, fallback = resolve_recipe("q4")
    plan = EncodeSettings(recipe, 3, fallback)
    ref = FileTensor(os.path.abspath(model), "layer.0.q.weight", 64 * 128 * 4)
    result = pickle.loads(pickle.dumps(encode_task(ref.name, ref, frozenset(), plan)))
    assert result.spec == ArraySpec(BY_NAME["f32"], (64, 128)) and result.error is not None
    skipped = encode_task(ref.name, ref, frozenset([result.key]), plan)
    assert skipped.pending is None and skipped.key == result.key
    assert from_portable(result.pending, plan_shared(recipe)).stored > 0


def test_errors_are_raised_in_input_order(tmp_path):
    """A bad tensor fails the pack with the error a serial pack gives, nothing is written."""
    tensors = {"a": np.ones((4, 4), np.float32), "bad": np.array(["x"]), "c": np.ones(3)}
    for jobs in (1, 2):
        with pytest.raises(cmf.CmfError) as info:
            cmf.save_file(tensors, tmp_path / "x.cmf", jobs=jobs)
        assert "dtype" in str(info.value) or "<U1" in str(info.value)
    assert not os.path.exists(tmp_path / "x.cmf")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_duplicate_name_from_a_sink_is_reported(tmp_path):
    recipe, fallback = resolve_recipe("lossless")
    with pytest.raises(cmf.CmfError, match="duplicate tensor name"):
        with Writer(tmp_path / "d.cmf") as w:
            tasks = [("a", np.ones(3)), ("a", np.zeros(3))]
            pack_tasks(WriterSink(w), tasks, EncodeSettings(recipe, 3, fallback), InlineExecutor())


def test_usage_errors(tmp_path, model, capsys):
    with pytest.raises(SystemExit) as info:
        cli.run(["pack", model, "-o", str(tmp_path / "x.cmf"), "--executor", "dask"])
    assert info.value.code == 2 and "--scheduler" in capsys.readouterr().err
    for bad in ("0", "-1", "1025", "two"):
        with pytest.raises(SystemExit) as info:
            cli.run(["pack", model, "-o", str(tmp_path / "x.cmf"), "--jobs", bad])
        assert info.value.code == 2 and "--jobs" in capsys.readouterr().err


def test_auto_jobs_uses_the_cpus_only_for_work_worth_workers(monkeypatch):
    from cmf import parallel
    from cmf.plan.contracts import AUTO_JOBS, AUTO_JOBS_ELEMENTS, PlanOptions, resolved_jobs

    monkeypatch.setattr(parallel, "usable_cpus", lambda: 12)
    assert parallel.auto_jobs(10, 11) == 1 and parallel.auto_jobs(11, 11) == parallel.MAX_AUTO_JOBS
    assert resolved_jobs(AUTO_JOBS, AUTO_JOBS_ELEMENTS - 1) == 1
    assert resolved_jobs(AUTO_JOBS, AUTO_JOBS_ELEMENTS) == 8
    assert resolved_jobs(3, AUTO_JOBS_ELEMENTS) == 3  # a given count is kept
    PlanOptions(preset="small", jobs=AUTO_JOBS).check()
    with pytest.raises(cmf.errors.UsageError, match="jobs"):
        PlanOptions(preset="small", jobs=-1).check()
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 1)
    assert resolved_jobs(AUTO_JOBS, 1 << 40) == 1  # one CPU: no workers


def test_auto_jobs_is_the_default_and_small_packs_stay_in_process(model, tmp_path, monkeypatch):
    from cmf import parallel

    made = []
    real = parallel.make_executor

    def spy(jobs=1, *args, **kwargs):
        made.append(jobs)
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr("cmf.parallel.make_executor", spy)
    out = tmp_path / "auto.cmf"
    run_cli("pack", model, "-o", out, "--preset", "q8", "-q")  # --jobs auto: a small model
    assert made == [1]
    run_cli("pack", model, "-o", tmp_path / "two.cmf", "--preset", "q8", "-q", "--jobs", "auto")
    assert made == [1, 1] and _bytes(out) == _bytes(tmp_path / "two.cmf")


# ----------------------------------------------------------------------------- memory

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "bench_memory.py")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_of_jobs_2_is_bounded_by_tensors_not_model(tmp_path):
    """--jobs 2 on a 48 MiB model of 2 MiB tensors: the writer process and each worker stay
    near their baseline plus a few tensors (measured: about +10 MiB each), far below the model."""
    spec = importlib.util.spec_from_file_location("bench_memory", TOOL)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    mib = 1 << 20
    bench.make_sharded_model(str(tmp_path / "tiny"), 64 << 10, 2, 16 << 10)
    total = bench.make_sharded_model(str(tmp_path / "big"), 48 * mib, 4, 2 * mib)
    tiny = bench.measure_pack(str(tmp_path / "tiny"), str(tmp_path / "tiny.cmf"), jobs=2)
    big = bench.measure_pack(str(tmp_path / "big"), str(tmp_path / "big.cmf"), jobs=2)
    assert len(big["workers"]) == 2
    over_main = big["peak"] - tiny["peak"]
    over_workers = max(big["workers"]) - max(tiny["workers"])
    assert over_main < total / 4, (over_main / mib, total / mib)
    assert over_workers < total / 4, (over_workers / mib, total / mib)
    ref = tmp_path / "ref.cmf"
    run_cli("pack", tmp_path / "big", "-o", ref, "-q")
    assert _bytes(ref) == _bytes(tmp_path / "big.cmf")


def test_the_broken_pool_race_is_silenced_only_for_the_pool_manager(monkeypatch):
    import threading
    from concurrent.futures import InvalidStateError

    from cmf import parallel

    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    parallel._quiet_broken_pool_race()
    parallel._quiet_broken_pool_race()  # installed once

    class _ExecutorManagerThread(threading.Thread):
        pass

    def args(exc, thread):
        return threading.ExceptHookArgs((exc, exc(), None, thread))

    threading.excepthook(args(InvalidStateError, _ExecutorManagerThread()))
    assert seen == []
    threading.excepthook(args(InvalidStateError, threading.Thread()))
    threading.excepthook(args(ValueError, _ExecutorManagerThread()))
    assert seen == [InvalidStateError, ValueError]


def test_map_as_done_bounds_the_calls_in_flight_and_does_not_wait_in_order():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from cmf.parallel import map_as_done

    release = threading.Event()
    live, most = [0], [0]
    lock = threading.Lock()

    def work(name):
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        if name == "slow":
            release.wait(10)
        with lock:
            live[0] -= 1
        return name.upper()

    read = []

    def calls():
        for name in ["slow", "a", "b", "c", "d"]:
            read.append(name)
            yield name, (name,)

    with ThreadPoolExecutor(4) as pool:
        got = []
        for name, value in map_as_done(pool, work, calls(), ahead=2):
            got.append((name, value))
            if len(got) == 4:  # the fast ones finished while "slow" held its slot
                release.set()
    assert got[-1] == ("slow", "SLOW") and sorted(got) == sorted((n, n.upper()) for n in read)
    assert most[0] <= 2


def test_map_as_done_runs_heavy_calls_one_at_a_time_while_the_others_go_ahead():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from cmf.parallel import map_as_done

    lock = threading.Lock()
    running: set[str] = set()
    overlaps, started = [], []

    def work(name):
        with lock:
            if name.startswith("big") and any(r.startswith("big") for r in running):
                overlaps.append(name)
            running.add(name)
            started.append(name)
        time.sleep(0.05 if name.startswith("big") else 0.005)
        with lock:
            running.discard(name)
        return name

    names = ["big1", "big2", "big3", *(f"s{k}" for k in range(12))]
    with ThreadPoolExecutor(3) as pool:
        got = [
            n
            for n, _ in map_as_done(
                pool, work, ((n, (n,)) for n in names), 3, heavy=lambda n: n.startswith("big")
            )
        ]
    assert sorted(got) == sorted(names) and not overlaps
    assert started.index("s0") < started.index("big2")  # small calls overtook the held one
    assert [n for n in started if n.startswith("big")] == ["big1", "big2", "big3"]


def test_map_as_done_raises_the_first_error_and_cancels_the_rest():
    from concurrent.futures import ThreadPoolExecutor

    from cmf.parallel import map_as_done

    def work(k):
        if k == 1:
            raise cmf.CmfError("bad tensor 1")
        return k

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(cmf.CmfError, match="bad tensor 1"):
            list(map_as_done(pool, work, ((str(k), (k,)) for k in range(6)), ahead=2))


def test_workers_run_blas_on_one_thread():
    from threadpoolctl import threadpool_info

    from cmf.parallel import ProcessExecutor

    ex = ProcessExecutor(2)
    try:
        info = ex.submit(threadpool_info).result(timeout=120)
    finally:
        ex.close(cancel=False)
    blas = [i for i in info if i["user_api"] == "blas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)


def test_big_first_sends_outsized_tensors_first_then_keeps_block_order():
    from cmf.parallel import big_first

    names = ["l0.q", "l0.k", "embed", "l1.q", "l1.k", "head"]
    sizes = {"l0.q": 10, "l0.k": 12, "embed": 900, "l1.q": 10, "l1.k": 12, "head": 500}
    assert big_first(names, sizes) == ["embed", "head", "l0.q", "l0.k", "l1.q", "l1.k"]
    assert big_first([], {}) == []
    assert big_first(["a", "b"], {"a": 5, "b": 5}) == ["a", "b"]
