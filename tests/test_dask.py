"""``cmf pack --executor dask``: tensors encoded on a dask.distributed cluster (a LocalCluster of
two worker processes here) that read the source from its path, written in order by the client;
the file, and a sharded set, are byte-identical to a single-process pack. Skipped without dask.
"""

from __future__ import annotations

import pytest
from safetensors.numpy import save_file as st_save

from tests.test_parallel import model_tensors, run_cli

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as c:
        yield c


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dask") / "model.safetensors"
    st_save(model_tensors(3), str(path), metadata={"format": "pt"})
    return str(path)


def _bytes(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("preset", ["lossless", "q4"])
def test_dask_pack_is_byte_identical(cluster, model, tmp_path, preset):
    one, dist = tmp_path / "one.cmf", tmp_path / "dask.cmf"
    run_cli("pack", model, "-o", one, "--preset", preset, "-q")
    run_cli(
        "pack",
        model,
        "-o",
        dist,
        "--preset",
        preset,
        "-q",
        "--executor",
        "dask",
        "--scheduler",
        cluster.scheduler_address,
    )
    assert _bytes(one) == _bytes(dist)


def test_dask_sharded_set_is_byte_identical(cluster, model, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_cli("pack", model, "-o", tmp_path / "a" / "m.cmf", "-q", "--shard-size", "40KB")
    run_cli(
        "pack",
        model,
        "-o",
        tmp_path / "b" / "m.cmf",
        "-q",
        "--shard-size",
        "40KB",
        "--executor",
        "dask",
        "--scheduler",
        cluster.scheduler_address,
    )
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) > 3 and names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert _bytes(tmp_path / "a" / name) == _bytes(tmp_path / "b" / name), name


def test_unreachable_scheduler_is_one_clear_error():
    from cmf import CmfError
    from cmf.parallel import DaskExecutor

    with pytest.raises(CmfError, match="cannot connect to the dask scheduler tcp://127.0.0.1:9"):
        DaskExecutor("tcp://127.0.0.1:9", timeout="1s")
