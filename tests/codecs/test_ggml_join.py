"""Fields -> GGML blocks (cmf.codecs.ggml_layout.join_into): the C kernel (cmf/_speedups.c
``ggml_join``), run over ranges of blocks on several threads, gives the bytes of the numpy
``join`` and of the source blocks, for every layout; the kernel refuses a table that does not fit
its buffers."""

from __future__ import annotations

import numpy as np
import pytest

from cmf import kernels
from cmf.codecs import ggml_layout as gl
from cmf.codecs.ggml_types import LAYOUTS

needs_c = pytest.mark.skipif(gl._speedups is None, reason="C kernels not built")


def _blocks(name: str, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, LAYOUTS[name].nbytes), dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("n", [1, 5, 301])
def test_c_and_numpy_join_give_the_blocks_back(monkeypatch, name, n):
    lay = LAYOUTS[name]
    blocks = _blocks(name, n, n)
    fields = gl.split(lay, blocks)
    out = np.full_like(blocks, 0xA5)  # stale bytes: every byte must be written
    gl.join_into(lay, fields, out)
    assert np.array_equal(out, blocks)
    monkeypatch.setattr(gl, "_speedups", None)
    out = np.full_like(blocks, 0x5A)
    gl.join_into(lay, fields, out)
    assert np.array_equal(out, blocks)
    assert np.array_equal(gl.join(lay, fields), blocks)


@needs_c
@pytest.mark.parametrize(
    "name", ["Q4_0", "Q5_1", "Q8_0", "Q4_K", "Q6_K", "IQ2_XS", "IQ3_S", "IQ1_M"]
)
def test_threaded_join_equals_serial(monkeypatch, name):
    lay = LAYOUTS[name]
    blocks = _blocks(name, 1000, 3)
    fields = gl.split(lay, blocks)
    serial = np.empty_like(blocks)
    gl.join_into(lay, fields, serial)  # 1000 blocks < JOIN_PIECE: one call
    calls = []
    real = gl._speedups.ggml_join
    monkeypatch.setattr(gl, "JOIN_PIECE", 7)
    monkeypatch.setattr(kernels, "_cores", lambda: 4)
    monkeypatch.setattr(
        gl,
        "_speedups",
        type(
            "K",
            (),
            {
                "ggml_join": staticmethod(
                    lambda out, *rest: calls.append(out.shape[0]) or real(out, *rest)
                )
            },
        ),
    )
    threaded = np.empty_like(blocks)
    gl.join_into(lay, fields, threaded)
    assert len(calls) == 4 and sum(calls) == 1000
    assert np.array_equal(threaded, serial) and np.array_equal(serial, blocks)


@needs_c
def test_fields_given_as_views_are_joined_from_their_values():
    lay = LAYOUTS["Q4_1"]
    blocks = _blocks("Q4_1", 64)
    fields = {k: np.asfortranarray(v) for k, v in gl.split(lay, blocks).items()}  # not C order
    out = np.empty_like(blocks)
    gl.join_into(lay, fields, out)
    assert np.array_equal(out, blocks)


@needs_c
@pytest.mark.parametrize(
    "column,value",
    [
        (0, 5),  # no such field
        (1, 3),  # itemsize
        (3, 40),  # values past the field's count
        (4, 0),  # step 0
        (5, 17),  # bytes past the block
        (7, 0),  # empty run
        (8, 16),  # source shift
        (9, 256),  # mask
        (10, 8),  # destination shift
    ],
)
def test_the_kernel_refuses_rows_that_do_not_fit(column, value):
    lay = LAYOUTS["Q4_0"]
    blocks = _blocks("Q4_0", 4)
    fields = gl.split(lay, blocks)
    arrays = [gl._join_source(lay, f, fields[f.name]) for f in lay.fields]
    table = gl._join_table(lay).copy()
    table[-1, column] = value
    with pytest.raises(ValueError):
        gl._speedups.ggml_join(np.empty_like(blocks), arrays, table, lay.nbytes)
    with pytest.raises(ValueError):  # a field buffer of the wrong size
        gl._speedups.ggml_join(
            np.empty_like(blocks), [arrays[0], arrays[1][:3]], gl._join_table(lay), lay.nbytes
        )
    with pytest.raises(ValueError):  # an output that is not whole blocks
        gl._speedups.ggml_join(np.empty(17, np.uint8), arrays, gl._join_table(lay), lay.nbytes)


HALVES = [name for name in sorted(LAYOUTS) if gl.nibble_halves(LAYOUTS[name], "q") is not None]


def test_halves_layouts_are_the_32_code_4_and_5_bit_ones():
    assert HALVES == ["IQ4_NL", "MXFP4", "Q4_0", "Q4_1"]
    assert all(gl.nibble_halves(LAYOUTS[n], "q") is None for n in ("Q5_0", "Q8_0", "Q4_K"))
    assert gl.nibble_halves(LAYOUTS["Q4_0"], "d") is None
    found = {n: gl.code_halves(lay, "q") for n, lay in LAYOUTS.items() if gl.code_halves(lay, "q")}
    assert found == {
        "IQ4_NL": (2, -1),
        "MXFP4": (1, -1),
        "Q4_0": (2, -1),
        "Q4_1": (4, -1),
        "Q5_0": (6, 2),
        "Q5_1": (8, 4),
    }


@needs_c
@pytest.mark.parametrize("name", ["IQ4_NL", "MXFP4", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_halves_kernel_on_threads_gives_the_blocks_back(monkeypatch, name):
    """join_into writes a field of 4/5-bit codes as halves (and the qh plane) by a kernel of its
    own, in pieces on threads: the source blocks, whatever bytes were in the buffer."""
    monkeypatch.setattr(gl, "JOIN_PIECE", 7)
    monkeypatch.setattr(kernels, "_cores", lambda: 4)
    lay = LAYOUTS[name]
    blocks = _blocks(name, 1000, 5)
    fields = gl.split(lay, blocks)
    calls = []
    real = gl._speedups.halves_join
    monkeypatch.setattr(
        gl,
        "_speedups",
        type(
            "K",
            (),
            {
                "ggml_join": staticmethod(gl._speedups.ggml_join),
                "halves_join": staticmethod(
                    lambda out, *r: calls.append(len(out)) or real(out, *r)
                ),
            },
        ),
    )
    out = np.full_like(blocks, 0xA5)
    gl.join_into(lay, fields, out)
    assert np.array_equal(out, blocks) and len(calls) == 4 and sum(calls) == 1000


@needs_c
def test_the_halves_join_kernel_checks_its_buffers():
    k = gl._speedups.halves_join
    with pytest.raises(ValueError):
        k(np.zeros((4, 22), np.uint8), np.zeros(127, np.uint8), 6, 2)  # codes too short
    with pytest.raises(ValueError):
        k(np.zeros((4, 22), np.uint8), np.zeros(128, np.uint8), 7, 2)  # 16 bytes past the row
    with pytest.raises(ValueError):
        k(np.zeros((4, 22), np.uint8), np.zeros(128, np.uint8), 6, 19)  # 4 bytes past the row
    with pytest.raises(ValueError):
        k(np.zeros((4, 22), np.uint8), np.zeros(128, np.uint8), 6, -2)
    with pytest.raises(ValueError):
        k(np.zeros(88, np.uint8), np.zeros(128, np.uint8), 6, 2)  # not (n, nbytes)


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("name", HALVES)
@pytest.mark.parametrize("n", [1, 7, 40_000])
def test_bitpacked_4_bit_codes_join_to_the_same_blocks(monkeypatch, name, n, kernel):
    """Blocks joined from the q codes as bitpack stores them (two per byte, never unpacked)
    are the source blocks, by the C kernel (on threads) and by numpy."""
    from cmf.codecs.bitpack import pack

    if not kernel:
        monkeypatch.setattr(gl, "_speedups", None)
    elif gl._speedups is None:
        pytest.skip("C kernels not built")
    monkeypatch.setattr(gl, "JOIN_PIECE", 4096)
    lay = LAYOUTS[name]
    blocks = _blocks(name, n, n)
    fields = gl.split(lay, blocks)
    packed = np.frombuffer(pack(fields.pop("q"), 4), np.uint8).reshape(n, 16)
    out = np.full_like(blocks, 0xA5)  # stale bytes: every byte must be written
    gl.join_nibbles_into(lay, fields, out, "q", packed)
    assert np.array_equal(out, blocks)


def test_bitpacked_codes_of_the_wrong_shape_are_refused():
    lay = LAYOUTS["Q4_0"]
    fields = gl.split(lay, _blocks("Q4_0", 4))
    fields.pop("q")
    out = np.empty((4, lay.nbytes), np.uint8)
    for bad in (np.zeros((4, 15), np.uint8), np.zeros((3, 16), np.uint8)):
        with pytest.raises(gl.CmfError, match="halves"):
            gl.join_nibbles_into(lay, fields, out, "q", bad)
    with pytest.raises(gl.CmfError, match="halves"):
        gl.join_nibbles_into(LAYOUTS["Q5_0"], fields, out, "q", np.zeros((4, 16), np.uint8))


@needs_c
def test_the_halves_kernel_checks_its_buffers():
    k = gl._speedups.nibble_halves
    with pytest.raises(ValueError):
        k(np.zeros((4, 18), np.uint8), np.zeros(63, np.uint8), 2)  # raw too short
    with pytest.raises(ValueError):
        k(np.zeros((4, 18), np.uint8), np.zeros(64, np.uint8), 3)  # 16 bytes past the row
    with pytest.raises(ValueError):
        k(np.zeros((4, 15), np.uint8), np.zeros(64, np.uint8), 0)  # rows under 16 bytes
    with pytest.raises(ValueError):
        k(np.zeros(72, np.uint8), np.zeros(64, np.uint8), 0)  # not (n, nbytes)
