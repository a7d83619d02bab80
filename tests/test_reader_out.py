"""CmfFile.get_tensor(name, out): decoding into a caller's array gives the bytes get_tensor(name)
gives, for every codec at the top of a tree (byteplanes, quantize, raw, and the others through a
copy), and refuses an array that cannot take the tensor."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import cmf
from cmf.errors import ChecksumError, CmfError
from cmf.pipeline import describe


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "w": rng.standard_normal((96, 64)).astype(np.float32),
        "wide": rng.standard_normal((4, 1 << 18)).astype(np.float32),  # parts decode on threads
        "bf": rng.standard_normal((16, 32)).astype(ml_dtypes.bfloat16),
        "h": rng.standard_normal((8, 40)).astype(np.float16),
        "noise": rng.integers(-128, 128, 5000).astype(np.int8),  # raw
        "ids": np.arange(300, dtype=np.int64),
        "mask": rng.integers(0, 2, 33).astype(bool),
        "scalar": np.array(2.5, dtype=np.float64),
        "col": rng.standard_normal((64, 1)).astype(np.float32),
    }


@pytest.mark.parametrize("preset", ["lossless", "q8", "q4"])
def test_out_receives_the_same_bytes(tmp_path, preset):
    path = tmp_path / f"{preset}.cmf"
    cmf.save_file(_model(), path, preset=preset)
    tops = set()
    with cmf.open(path) as f:
        for name in f.keys():
            want = f.get_tensor(name)
            out = np.full(want.shape, 7, dtype=want.dtype)
            got = f.get_tensor(name, out)
            assert got is out
            assert got.tobytes() == want.tobytes(), (name, describe(f.entry(name).encoding))
            tops.add(f.entry(name).encoding.codec.name)
    assert {"lossless": {"byteplanes", "raw"}, "q8": {"quantize"}, "q4": {"quantize"}}[
        preset
    ] <= tops


def test_lossy_into_a_view_of_a_bigger_block(tmp_path):
    model = _model()
    cmf.save_file(model, tmp_path / "m.cmf", preset="q4")
    with cmf.open(tmp_path / "m.cmf") as f:
        block = np.zeros(f.spec("w").nbytes + 128, np.uint8)
        out = block[64 : 64 + f.spec("w").nbytes].view(np.float32).reshape(96, 64)
        f.get_tensor("w", out)
        assert out.tobytes() == f.get_tensor("w").tobytes()
        assert not block[:64].any() and not block[64 + out.nbytes :].any()  # nothing outside


def test_lossless_round_trip_into_out(tmp_path):
    model = _model()
    cmf.save_file(model, tmp_path / "m.cmf")
    with cmf.open(tmp_path / "m.cmf") as f:
        for name, array in model.items():
            out = np.empty_like(array)
            assert f.get_tensor(name, out).tobytes() == array.tobytes()


def _bad_outs(spec_shape):
    yield np.empty(spec_shape, np.float64)  # dtype
    yield np.empty((spec_shape[0] + 1, spec_shape[1]), np.float32)  # shape
    ro = np.empty(spec_shape, np.float32)
    ro.setflags(write=False)
    yield ro
    yield np.empty(spec_shape[::-1], np.float32).T  # strided
    yield [[0.0] * spec_shape[1]] * spec_shape[0]  # not an array


def test_out_that_cannot_take_the_tensor_is_refused(tmp_path):
    cmf.save_file(_model(), tmp_path / "m.cmf")
    with cmf.open(tmp_path / "m.cmf") as f:
        for bad in _bad_outs((96, 64)):
            with pytest.raises(CmfError, match="out must be a writable C-contiguous array"):
                f.get_tensor("w", bad)


def test_damaged_segment_is_still_caught_with_out(tmp_path, segment_of):
    path = tmp_path / "m.cmf"
    cmf.save_file(_model(), path)
    data = bytearray(path.read_bytes())
    offset, length = max(segment_of(path, "w"), key=lambda s: s[1])
    data[offset + length // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    with cmf.open(path) as f:
        with pytest.raises(ChecksumError):
            f.get_tensor("w", np.empty((96, 64), np.float32))
    with pytest.raises(ChecksumError):
        cmf.load_file(path)
