"""The ``byteplanes`` codec (spec/codecs/byteplanes.md): k planes, optional sign rotation."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cmf.codecs import ArraySpec, BytesSpec
from cmf.codecs.byteplanes import BytePlanes
from cmf.codecs.registry import codec_from_config
from cmf.dtypes import BY_NAME, by_name
from cmf.errors import FormatError

MULTI = [n for n, d in BY_NAME.items() if d.itemsize >= 2]
FLOATS = [n for n in MULTI if BY_NAME[n].is_float]
INTS = [n for n in MULTI if not BY_NAME[n].is_float]


def reference_planes(array: np.ndarray, rotate: bool) -> list[bytes]:
    """The page's definition, with Python integers."""
    k = array.dtype.itemsize
    planes = [bytearray() for _ in range(k)]
    for j in range(0, array.size * k, k):
        u = int.from_bytes(array.reshape(-1).view(np.uint8)[j : j + k].tobytes(), "little")
        if rotate:
            u = ((u << 1) | (u >> (8 * k - 1))) % (1 << (8 * k))
        for p in range(k):
            planes[p].append((u >> (8 * p)) & 0xFF)
    return [bytes(p) for p in planes]


@pytest.mark.parametrize("rotate", [False, True])
def test_config_round_trip(rotate):
    codec = BytePlanes(rotate=rotate)
    assert codec.to_config() == {"rotate": rotate}
    assert BytePlanes.from_config(codec.to_config()) == codec
    assert codec_from_config("byteplanes", {"rotate": rotate}) == codec


@pytest.mark.parametrize(
    "config",
    [
        {"rotate": 1},
        {"rotate": "true"},
        {"rotate": None},
        {"rotate": True, "k": 4},
        {"shuffle": True},
        [],
        None,
    ],
)
def test_config_rejected(config):
    with pytest.raises(FormatError):
        BytePlanes.from_config(config)


@pytest.mark.parametrize("name", MULTI)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5)])
def test_resolve(name, shape):
    k = by_name(name).itemsize
    n = int(np.prod(shape))
    parts = BytePlanes().resolve(ArraySpec(by_name(name), shape))
    assert parts == {f"p{j}": BytesSpec(n) for j in range(k)}


@pytest.mark.parametrize("name", FLOATS)
def test_rotate_allowed_for_floats(name):
    assert (
        len(BytePlanes(rotate=True).resolve(ArraySpec(by_name(name), (4,))))
        == by_name(name).itemsize
    )


@pytest.mark.parametrize("name", INTS)
def test_rotate_rejected_for_non_floats(name):
    with pytest.raises(FormatError, match="rotate is only for floats"):
        BytePlanes(rotate=True).resolve(ArraySpec(by_name(name), (4,)))
    BytePlanes(rotate=False).resolve(ArraySpec(by_name(name), (4,)))


@pytest.mark.parametrize("name", [n for n, d in BY_NAME.items() if d.itemsize == 1])
def test_one_byte_dtypes_rejected(name):
    for rotate in (False, True):
        with pytest.raises(FormatError):
            BytePlanes(rotate=rotate).resolve(ArraySpec(by_name(name), (4,)))


def test_bytes_spec_rejected():
    with pytest.raises(FormatError, match="decodes to an array"):
        BytePlanes().resolve(BytesSpec(8))


def test_rotation_puts_the_exponent_in_the_top_plane():
    x = np.array([1.0, -1.0, 2.0, -0.5, 0.0, -0.0], np.float32)
    spec = ArraySpec(by_name("f32"), x.shape)
    parts = BytePlanes(rotate=True).encode(x, spec)
    exps = (x.view(np.uint32) >> 23) & 0xFF
    assert bytes(parts["p3"]) == bytes(exps.astype(np.uint8).tolist())
    assert list(bytes(parts["p0"])[i] & 1 for i in range(6)) == [0, 1, 0, 1, 0, 1]  # sign
    plain = BytePlanes(rotate=False).encode(x, spec)
    assert bytes(plain["p3"]) == bytes((x.view(np.uint32) >> 24).astype(np.uint8).tolist())


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(MULTI),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    rotate=st.booleans(),
    data=st.data(),
)
def test_matches_the_page_and_round_trips(name, shape, rotate, data):
    rotate = rotate and BY_NAME[name].is_float
    dt = by_name(name)
    n = int(np.prod(shape)) * dt.itemsize
    raw = data.draw(st.binary(min_size=n, max_size=n))
    array = np.frombuffer(raw, np.uint8).view(dt.numpy).reshape(shape)  # NaN payloads too
    spec = ArraySpec(dt, shape)
    codec = BytePlanes(rotate=rotate)
    parts = codec.encode(array, spec)
    assert set(parts) == set(codec.resolve(spec))
    assert [bytes(parts[f"p{j}"]) for j in range(dt.itemsize)] == reference_planes(array, rotate)
    back = codec.decode({k: bytes(v) for k, v in parts.items()}, spec)
    assert back.dtype == dt.numpy and back.shape == shape and back.tobytes() == raw
    assert back.flags.writeable


def test_non_contiguous_and_big_endian_input():
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    for a in (base.T, base[::2, 1::3], base.astype(">f4")):
        spec = ArraySpec(by_name("f32"), a.shape)
        parts = BytePlanes(rotate=True).encode(a, spec)
        back = BytePlanes(rotate=True).decode(parts, spec)
        assert np.array_equal(back, a) and back.dtype == np.dtype("<f4")


def test_bf16_planes():
    x = np.array([1.0, -2.0, 3.5], dtype=ml_dtypes.bfloat16)
    spec = ArraySpec(by_name("bf16"), x.shape)
    parts = BytePlanes(rotate=True).encode(x, spec)
    assert bytes(parts["p1"]) == bytes(((x.view(np.uint16) >> 7) & 0xFF).astype(np.uint8).tolist())


def test_decode_rejects_bad_planes():
    spec = ArraySpec(by_name("f32"), (5,))
    good = {f"p{j}": bytes(5) for j in range(4)}
    BytePlanes().decode(good, spec)
    for j in range(4):
        for n in (4, 6):
            bad = dict(good, **{f"p{j}": bytes(n)})
            with pytest.raises(FormatError, match=f"plane p{j} holds {n} bytes, 5 expected"):
                BytePlanes().decode(bad, spec)
