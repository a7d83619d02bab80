"""PyTorch checkpoints (cmf.convert.torch_pickle): read only by torch.load(weights_only=True),
every dtype bit-exact, hostile pickles refused with nothing of them run, a clear message
without PyTorch."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

import cmf
from cmf.convert import torch_pickle

from ..conftest import CliResult  # noqa: F401  (the `run` fixture's result type)


def test_without_torch_the_message_says_how_to_convert(tmp_path, run, monkeypatch):
    monkeypatch.setattr(torch_pickle, "_torch", lambda: None)
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    r = run("pack", path, "-o", tmp_path / "m.cmf")
    assert r.code == 1 and r.err.count("\n") == 1, r.err
    for words in (
        "is a PyTorch pickle checkpoint",
        "pip install 'cmf-container[torch]'",
        "safetensors.torch.save_file",
    ):
        assert words in r.err, r.err
    d = tmp_path / "hf"
    d.mkdir()
    os.replace(path, d / "pytorch_model.bin")
    (d / "config.json").write_text("{}")
    r = run("pack", d, "-o", tmp_path / "m.cmf")
    assert r.code == 1 and "is a PyTorch pickle checkpoint" in r.err, r.err
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("pack", empty, "-o", tmp_path / "m.cmf")
    assert r.code == 1 and "no *.safetensors files (nor pytorch_model*.bin)" in r.err


# -- with PyTorch ------------------------------------------------------------------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _state(torch) -> dict:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, generator=g)
    return {
        "f32": w,
        "tied": w,  # the same storage: stored once (an alias)
        "view": w[2:6],  # a view with a storage offset
        "f64": torch.randn(3, generator=g, dtype=torch.float64),
        "f16": torch.randn(4, 4, generator=g).half(),
        "bf16": torch.randn(5, 3, generator=g).bfloat16(),
        "e4m3": torch.randn(7, generator=g).to(torch.float8_e4m3fn),
        "e5m2": torch.randn(7, generator=g).to(torch.float8_e5m2),
        "i64": torch.arange(9),
        "u8": torch.arange(200, 210, dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "nan": torch.tensor([float("nan"), -0.0, float("inf")]),
    }


def _same(tensor, array: np.ndarray, torch) -> None:
    t = tensor.contiguous()
    assert tuple(t.shape) == array.shape
    assert t.reshape(-1).view(torch.uint8).numpy().tobytes() == array.tobytes()


def test_every_dtype_packs_bit_exact(tmp_path, run, torch):
    state = _state(torch)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    r = run("pack", path, "-o", tmp_path / "m.cmf", "--json")
    assert r.code == 0, r.err
    assert r.json()["aliases"] == 1  # tied
    got = cmf.load_file(tmp_path / "m.cmf")
    assert list(got) == list(state)
    for name, tensor in state.items():
        _same(tensor, got[name], torch)
    assert str(got["bf16"].dtype) == "bfloat16" and str(got["e4m3"].dtype) == "float8_e4m3fn"


def test_legacy_format_and_training_checkpoints(tmp_path, run, torch):
    state = {"a": torch.ones(3, 3), "b": torch.arange(4)}
    legacy = tmp_path / "old.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    ckpt = tmp_path / "train.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "lr": 0.1}, ckpt)
    for path in (legacy, ckpt):
        out = tmp_path / (path.stem + ".cmf")
        assert run("pack", path, "-o", out, "-q").code == 0
        got = cmf.load_file(out)
        assert list(got) == ["a", "b"] and got["a"].tolist() == [[1.0] * 3] * 3


def test_a_sharded_directory_of_bin_files(tmp_path, run, torch):
    d = tmp_path / "hf"
    d.mkdir()
    torch.save({"x": torch.ones(2)}, d / "pytorch_model-00001-of-00002.bin")
    torch.save({"y": torch.zeros(3)}, d / "pytorch_model-00002-of-00002.bin")
    (d / "pytorch_model.bin.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "x": "pytorch_model-00001-of-00002.bin",
                    "y": "pytorch_model-00002-of-00002.bin",
                }
            }
        )
    )
    (d / "config.json").write_text('{"model_type": "x"}')
    marker = tmp_path / "ran"
    with open(d / "training_args.bin", "wb") as fh:  # a pickle that runs code: never read
        pickle.dump(_Evil(str(marker)), fh)
    for jobs in ("1", "2"):
        out = tmp_path / f"m{jobs}.cmf"
        r = run("pack", d, "-o", out, "--jobs", jobs, "--json")
        assert r.code == 0, r.err
        with cmf.open(out) as f:
            assert f.keys() == ["x", "y"] and f.attachments() == ["config.json"]
    assert (tmp_path / "m1.cmf").read_bytes() == (tmp_path / "m2.cmf").read_bytes()
    assert not marker.exists()


class _Evil:
    """Unpickling this runs a shell command (what a hostile checkpoint does)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("form", ["zip", "legacy", "plain-pickle", "nested"])
def test_hostile_pickles_are_refused_and_never_run(tmp_path, run, torch, form):
    marker = tmp_path / "ran"
    path = tmp_path / "pytorch_model.bin"
    evil = _Evil(str(marker))
    if form == "zip":
        torch.save({"w": torch.ones(2), "x": evil}, path)
    elif form == "legacy":
        torch.save({"w": evil}, path, _use_new_zipfile_serialization=False)
    elif form == "plain-pickle":
        path.write_bytes(pickle.dumps({"w": evil}, protocol=2))
    else:
        torch.save({"state_dict": {"w": torch.ones(1)}, "hook": [evil]}, path)
    r = run("pack", path, "-o", tmp_path / "m.cmf")
    assert r.code == 1 and r.err.count("\n") == 1, r.err
    assert "weights-only loader" in r.err and "Traceback" not in r.err
    assert not marker.exists() and not (tmp_path / "m.cmf").exists()


def test_bad_checkpoints_are_one_error(tmp_path, run, torch):
    cases = {
        "garbage.pt": (b"PK\x03\x04garbage", "not a checkpoint"),
        "plain.pt": (pickle.dumps({"w": 1}, protocol=2), "not a checkpoint"),  # not torch's format
        "list.pt": (None, "not a state dict"),
        "strings.pt": (None, "no tensors"),
    }
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    torch.save({"a": "text", "b": 3}, tmp_path / "strings.pt")
    for name, (data, says) in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        r = run("pack", tmp_path / name, "-o", tmp_path / "m.cmf")
        assert r.code == 1 and says in r.err and r.err.count("\n") == 1, (name, r.err)
    torch.save({}, tmp_path / "empty.pt")  # an empty state dict packs to a file of no tensors
    assert run("pack", tmp_path / "empty.pt", "-o", tmp_path / "e.cmf", "-q").code == 0
    assert cmf.load_file(tmp_path / "e.cmf") == {}
