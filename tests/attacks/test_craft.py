"""The crafting helper itself: what it builds is what cmf accepts, so every hostile file in this
directory is one deliberate lie away from a valid one."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zstandard

import cmf

from . import craft as c
from .common import CONFIG, EXPECTED, base_file, expect_ok, write


def test_base_file_is_valid_and_decodes(tmp_path):
    data = base_file()
    snap = expect_ok(tmp_path, data)
    for name, want in EXPECTED.items():
        dtype, shape, raw = snap["tensors"][name]
        assert (dtype, shape, raw) == (str(want.dtype), want.shape, want.tobytes()), name
    assert snap["attachments"] == {"config.json": CONFIG}
    assert snap["metadata"] == {"format": "toy", "n": 3}
    report = cmf.validate(write(tmp_path, data, "v.cmf"))
    assert report.valid, report.errors
    assert not report.warnings


@pytest.mark.parametrize(
    "obj",
    [
        None,
        True,
        False,
        0,
        127,
        128,
        255,
        256,
        65535,
        1 << 32,
        (1 << 64) - 1,
        -1,
        -32,
        -33,
        -(1 << 63),
        1.5,
        "",
        "x" * 31,
        "y" * 32,
        "z" * 70000,
        b"",
        b"\x00" * 300,
        [],
        [1] * 16,
        list(range(70000)),
        {},
        {str(i): i for i in range(20)},
        {"a": [1, {"b": None}]},
    ],
    ids=lambda o: type(o).__name__,
)
def test_msgpack_encoder_matches_msgpack(obj):
    assert msgpack.unpackb(c.mp(obj), raw=False, strict_map_key=False) == obj


@pytest.mark.parametrize("content", [b"", b"abc", bytes(range(256)) * 3, bytes(300_000)])
def test_zstd_frame_builder_is_valid_zstd(content):
    frame = c.zstd_frame(content)
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == len(content)
    assert zstandard.ZstdDecompressor().decompress(frame) == content


def test_rle_frame_is_tiny():
    frame = c.zstd_frame(rle=(7, 1000))
    assert len(frame) <= 20
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes([7]) * 1000
    bomb = c.zstd_frame(rle=(0, 1000), declared=1 << 40)
    assert len(bomb) <= 20
    assert zstandard.get_frame_parameters(bomb).content_size == 1 << 40


def test_rewrite_index_identity_keeps_a_saved_file_valid(tmp_path):
    path = write(tmp_path, b"", "s.cmf")
    cmf.save_file({"a": np.arange(100, dtype=np.float32)}, path)
    data = open(path, "rb").read()
    again = c.rewrite_index(data)
    assert cmf.validate(write(tmp_path, again, "t.cmf")).valid
