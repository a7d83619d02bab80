"""The planner with ``--jobs`` and ``--shard-size``: the candidates measured in worker processes
give the same curves, the same plan and the same bytes as one process; a planned sharded set
holds the single file's tensors and plan metadata, reads as one model, is what the verification
runs, and ``cmf report`` reads it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import cmf
from cmf.plan.planner import META_PLAN, META_TENSORS, PlanOptions, plan_and_write, save_planned

from ..runtime import helpers
from .conftest import FAST

cli = helpers.cli

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def single(bert_dir, tmp_path_factory):
    """The planned single file of one process: (path, result)."""
    out = tmp_path_factory.mktemp("plan-par") / "one.cmf"
    return out, plan_and_write(bert_dir, out, PlanOptions(preset="balanced", **FAST))


def _tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    t = {
        "a.weight": rng.standard_normal((128, 96)).astype(np.float32),
        "b.weight": (rng.standard_normal((96, 128)) * 5).astype(np.float32),
        "b.bias": np.zeros(96, np.float32),
        "ids": np.arange(10),
        "c.weight": rng.standard_normal((64, 256)).astype(np.float16),
    }
    t["d.weight"] = t["a.weight"].copy()  # identical: planned once, written as an alias
    return t


def _points(result) -> dict[str, list]:
    return {
        n: [(p.choice, p.bytes, p.error, p.plain, p.sampled) for p in tp.curve.points]
        for n, tp in result.tensors.items()
    }


def test_jobs_2_plans_and_writes_the_bytes_of_jobs_1(tmp_path, bert_dir, single):
    """Workers read their tensors from the model directory (safetensors) and measure them."""
    one, r1 = single
    two = tmp_path / "two.cmf"
    r2 = plan_and_write(bert_dir, two, PlanOptions(preset="balanced", jobs=2, **FAST))
    assert _points(r2) == _points(r1)  # the same curves ...
    assert r2.tensor_table() == r1.tensor_table()  # ... the same allocation ...
    assert two.read_bytes() == one.read_bytes()  # ... the same file
    assert r2.file_error == r1.file_error and r2.summary(timings=False) == r1.summary(timings=False)
    assert "seconds" in r2.summary() and "seconds" not in cmf.open(two).metadata()[META_PLAN]
    for r in (r1, r2):  # the rounds read the curves' error-feedback factors, removed after
        kept = {tp.curve.feedback for tp in r.tensors.values()} - {None}
        assert kept and not any(os.path.exists(p) for p in kept)
        assert not os.path.exists(r.feedback.root)


def test_data_free_jobs_2_is_the_same_file(tmp_path):
    """A dict of arrays (sent to the workers), with the fixed-rate and codebook templates."""
    tensors = _tensors(np.random.default_rng(1))
    r1 = save_planned(tensors, tmp_path / "a.cmf", PlanOptions(preset="small"))
    assert any(p[0].family == "template" for pts in _points(r1).values() for p in pts)
    cmf.save_file(
        tensors, tmp_path / "b.cmf", preset="small", jobs=2
    )  # the public API passes jobs on
    assert (tmp_path / "b.cmf").read_bytes() == (tmp_path / "a.cmf").read_bytes()


def test_a_planned_sharded_set_is_the_single_file_in_shards(tmp_path, bert_dir, single, cli):
    one, r1 = single
    out = tmp_path / "set" / "m.cmf"
    out.parent.mkdir()
    r = plan_and_write(bert_dir, out, PlanOptions(preset="balanced", **FAST), shard_size=20_000)
    index = out.parent / "m.cmf.index.json"
    assert r.path == str(index) and len(r.files) > 2 and not out.exists()
    assert r.file_bytes == sum(
        (out.parent / n).stat().st_size for n in json.loads(index.read_text())["shards"]
    )
    assert r.file_error == r1.file_error  # verified by running the set
    a, b = cmf.load_file(one), cmf.load_file(index)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    with cmf.open(one) as f, cmf.open(index) as g:
        assert g.metadata()[META_PLAN] == f.metadata()[META_PLAN]
        assert g.metadata()[META_TENSORS] == f.metadata()[META_TENSORS]
        assert g.attachments() == f.attachments()
    assert cmf.validate(index).valid
    rep = cli("report", index, "--json").json()
    assert len(rep["shards"]) == len(r.files) - 1 and rep["plan"]["preset"] == "balanced"
    assert {t["shard"] for t in rep["tensors"]} == set(rep["shards"])
    whole = cli("report", one, "--json").json()
    assert [{k: v for k, v in t.items() if k != "shard"} for t in rep["tensors"]] == whole[
        "tensors"
    ]
    text = cli("report", out.parent)
    assert (
        text.code == 0
        and f"in {len(rep['shards'])} shards" in text.out
        and "sensitivity" in text.out
    )


def test_a_copy_in_another_shard_keeps_the_planned_encoding(tmp_path):
    """Identical tensors are an alias within a shard; in another shard the copy is stored again,
    with the plan's encoding (so it decodes as the plan verified), not losslessly."""
    tensors = _tensors(np.random.default_rng(2))
    save_planned(tensors, tmp_path / "one.cmf", PlanOptions(preset="small"))
    r = save_planned(
        tensors, tmp_path / "s/", PlanOptions(preset="small"), shard_size=1
    )  # a directory
    with cmf.open(r.path) as f:
        assert (
            f.shard_of("a.weight") != f.shard_of("d.weight") and f.entry("d.weight").alias is None
        )
    a, b = cmf.load_file(tmp_path / "one.cmf"), cmf.load_file(r.path)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(b["d.weight"], tensors["d.weight"])  # lossy, as planned
    assert cmf.validate(r.path).valid


def test_a_size_target_holds_for_a_set_and_earlier_tries_leave_nothing(
    tmp_path, bert_dir, monkeypatch
):
    """With the fixed bytes underestimated, the first set comes out over the target (in more
    shards) and is written again smaller: the shards of the first try are gone."""
    from cmf.plan import planner

    monkeypatch.setattr(planner, "fixed_bytes_of", lambda *a, **k: 0)
    written = []
    write = planner.write_planned

    def spy(*a, **k):
        size = write(*a, **k)
        written.append(list(a[2].files))
        return size

    monkeypatch.setattr(planner, "write_planned", spy)
    r = plan_and_write(
        bert_dir, tmp_path / "m.cmf", PlanOptions(target_size="80KB", **FAST), shard_size=20_000
    )
    assert r.target_met and r.file_bytes <= r.target["file_bytes"] == 80_000
    assert len(written) > 1 and len(written[0]) > len(written[-1])  # fewer shards at last
    names = json.loads((tmp_path / "m.cmf.index.json").read_text())["shards"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, "m.cmf.index.json"])


def test_cli_jobs_and_shard_size(tmp_path, bert_dir, cli):
    cal = tmp_path / "cal.txt"
    cal.write_text("the cat sat on the mat\na dog ran fast\nthe red bird sings\n")
    r = cli(
        "pack",
        bert_dir,
        "-o",
        tmp_path / "p.cmf",
        "--preset",
        "small",
        "--calibrate",
        cal,
        "--jobs",
        "2",
        "--shard-size",
        "30KB",
        "--json",
    )
    assert r.code == 0, r.err
    s = r.json()
    index = tmp_path / "p.cmf.index.json"
    assert s["output"] == str(index) and s["files"][-1] == str(index) and len(s["files"]) > 2
    assert s["verified_error"] is not None and s["target_met"]
    assert s["stored_bytes"] == sum(tmp_path.joinpath(n).stat().st_size for n in s["files"][:-1])
    assert cli("report", index).code == 0


def test_cli_dask_needs_a_scheduler(tmp_path, bert_dir, cli):
    r = cli("pack", bert_dir, "-o", tmp_path / "x.cmf", "--preset", "small", "--executor", "dask")
    assert r.code == 2 and "--scheduler" in r.err
    assert not list(tmp_path.iterdir())


def test_dask_measures_the_same_curves(tmp_path):
    distributed = pytest.importorskip("distributed")
    tensors = _tensors(np.random.default_rng(3))
    r1 = save_planned(tensors, tmp_path / "a.cmf", PlanOptions(preset="balanced", templates=False))
    with distributed.LocalCluster(
        n_workers=1, processes=False, threads_per_worker=2, dashboard_address=None
    ) as cluster:
        r2 = save_planned(
            tensors,
            tmp_path / "b.cmf",
            PlanOptions(
                preset="balanced",
                templates=False,
                executor="dask",
                scheduler=cluster.scheduler_address,
            ),
        )
    assert _points(r1) == _points(r2)
    assert (tmp_path / "a.cmf").read_bytes() == (tmp_path / "b.cmf").read_bytes()
