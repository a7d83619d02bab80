"""Property test: any msgpack value grafted anywhere into a valid index (CRC kept right) gives a
CmfError or a clean decode, never another exception, and ``cmf validate`` never raises.

Set CMF_FUZZ_EXAMPLES (default 300) for a longer hunt."""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cmf

from . import craft as c
from .common import base_parts, read_all

EXAMPLES = int(os.environ.get("CMF_FUZZ_EXAMPLES", "300"))

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.sampled_from(
        [
            "raw",
            "zstd",
            "byteplanes",
            "segment",
            "data",
            "p0",
            "p1",
            "f32",
            "bool",
            "u8",
            "w",
            "h",
            "config.json",
            "../x",
            0,
            1,
            5,
            6,
            16,
            64,
            -1,
            1 << 40,
        ]
    )
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=8)
            | st.sampled_from(
                [
                    "segment",
                    "codec",
                    "config",
                    "parts",
                    "name",
                    "dtype",
                    "shape",
                    "alias",
                    "encoding",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


def _graft(obj, draw, value):
    """Replace one randomly chosen node of ``obj`` (a JSON-like tree) by ``value``."""
    if isinstance(obj, (list, dict)) and obj and draw(st.integers(0, 3)):
        keys = list(obj.keys()) if isinstance(obj, dict) else list(range(len(obj)))
        k = draw(st.sampled_from(keys))
        obj[k] = _graft(obj[k], draw, value)
        return obj
    return value


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_grafted_values(data):
    segments, index = base_parts()
    index = {"segments": c.segment_table(segments), **index}
    value = data.draw(VALUES)
    index = _graft(index, data.draw, value)
    blob = c.mp(index)
    _check(c.assemble(segments, blob))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_bytes_in_index(data):
    segments, index = base_parts()
    blob = bytearray(c.mp({"segments": c.segment_table(segments), **index}))
    start = data.draw(st.integers(0, len(blob) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=16))
    blob[start : start + len(junk)] = junk
    _check(c.assemble(segments, bytes(blob)))


def _check(file_bytes: bytes) -> None:
    fd, path = tempfile.mkstemp(suffix=".cmf")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(file_bytes)
        try:
            read_all(path)
            accepted = True
        except cmf.CmfError as exc:
            assert str(exc)
            accepted = False
        report = cmf.validate(path)
        if not accepted:
            assert not report.valid
    finally:
        os.unlink(path)
