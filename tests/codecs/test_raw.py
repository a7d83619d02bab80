"""The ``raw`` codec (spec/codecs/raw.md): little-endian C-order bytes, bools 0/1, no config."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cmf.codecs import ArraySpec, BytesSpec
from cmf.codecs.raw import Raw
from cmf.codecs.registry import codec_from_config
from cmf.dtypes import BY_NAME, by_name
from cmf.errors import FormatError

F32 = by_name("f32")


def test_config_round_trip():
    assert Raw().to_config() == {}
    assert Raw.from_config({}) == Raw()
    assert codec_from_config("raw", {}) == Raw()


@pytest.mark.parametrize("config", [{"level": 1}, {"": None}, [], None, "x"])
def test_config_rejected(config):
    with pytest.raises(FormatError):
        Raw.from_config(config)


@pytest.mark.parametrize("shape", [(), (0,), (3, 4), (2, 0, 5)])
@pytest.mark.parametrize("name", list(BY_NAME))
def test_resolve(name, shape):
    spec = ArraySpec(by_name(name), shape)
    assert Raw().resolve(spec) == {"data": BytesSpec(int(np.prod(shape)) * by_name(name).itemsize)}


def test_resolve_rejects_bytes():
    with pytest.raises(FormatError, match="decodes to an array"):
        Raw().resolve(BytesSpec(4))


def test_encode_is_little_endian_c_order():
    a = np.arange(6, dtype=">u2").reshape(2, 3).T  # big-endian, transposed
    spec = ArraySpec(by_name("u16"), a.shape)
    data = bytes(Raw().encode(a, spec)["data"])
    assert data == bytes([0, 0, 3, 0, 1, 0, 4, 0, 2, 0, 5, 0])


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(list(BY_NAME)),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    data=st.data(),
)
def test_round_trip(name, shape, data):
    dt = by_name(name)
    n = int(np.prod(shape)) * dt.itemsize
    raw = data.draw(st.binary(min_size=n, max_size=n))
    if name == "bool":
        raw = bytes(b & 1 for b in raw)
    array = np.frombuffer(raw, np.uint8).view(dt.numpy).reshape(shape)
    spec = ArraySpec(dt, shape)
    parts = Raw().encode(array, spec)
    assert bytes(parts["data"]) == raw
    back = Raw().decode(parts, spec)
    assert back.dtype == dt.numpy and back.shape == shape and back.tobytes() == raw


def test_decode_rejects_wrong_length():
    spec = ArraySpec(F32, (3,))
    for n in (0, 11, 13):
        with pytest.raises(FormatError, match=f"holds {n} bytes, 12 expected"):
            Raw().decode({"data": bytes(n)}, spec)


@pytest.mark.parametrize("bad", [2, 3, 0x80, 0xFF])
def test_decode_rejects_bool_bytes_other_than_0_1(bad):
    spec = ArraySpec(by_name("bool"), (4,))
    assert Raw().decode({"data": bytes([0, 1, 1, 0])}, spec).tolist() == [False, True, True, False]
    with pytest.raises(FormatError, match="bool byte"):
        Raw().decode({"data": bytes([0, 1, bad, 0])}, spec)
