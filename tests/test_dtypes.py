"""cmf.dtypes against the dtype table of spec/format.md §4."""

from __future__ import annotations

import pathlib
import re

import ml_dtypes
import numpy as np
import pytest

from cmf import dtypes
from cmf.errors import CmfError, UnsupportedError

SPEC = pathlib.Path(__file__).resolve().parents[1] / "spec" / "format.md"


def spec_table() -> dict[str, int]:
    """name -> item size, read from the §4 table."""
    text = SPEC.read_text()
    section = text[text.index("## 4. Dtypes") : text.index("## 5.")]
    out: dict[str, int] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([a-z0-9_]+)`", cells[0])
        sizes = [int(s) for s in cells[1].split()]
        assert len(names) == len(sizes), line
        out.update(zip(names, sizes, strict=True))
    return out


NUMPY = {
    "f64": np.float64,
    "f32": np.float32,
    "f16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "f8_e4m3": ml_dtypes.float8_e4m3fn,
    "f8_e5m2": ml_dtypes.float8_e5m2,
    "i8": np.int8,
    "i16": np.int16,
    "i32": np.int32,
    "i64": np.int64,
    "u8": np.uint8,
    "u16": np.uint16,
    "u32": np.uint32,
    "u64": np.uint64,
    "bool": np.bool_,
}


def test_table_matches_the_spec():
    table = spec_table()
    assert len(table) == 15
    assert list(dtypes.BY_NAME) == list(table)
    for name, size in table.items():
        assert dtypes.by_name(name).itemsize == size, name


@pytest.mark.parametrize("name", list(NUMPY))
def test_numpy_mapping(name):
    d = dtypes.by_name(name)
    assert d.name == name
    assert d.numpy == np.dtype(NUMPY[name])
    assert d.numpy.byteorder in ("=", "<", "|")
    assert d.is_float == (name.startswith(("f", "bf")))
    assert dtypes.of_array(np.zeros(2, NUMPY[name])) is d


@pytest.mark.parametrize("name", ["f64", "f32", "f16", "i16", "i32", "i64", "u16", "u32", "u64"])
def test_big_endian_arrays_map_to_the_same_dtype(name):
    be = np.zeros(3, np.dtype(NUMPY[name]).newbyteorder(">"))
    assert dtypes.of_array(be) is dtypes.by_name(name)


@pytest.mark.parametrize(
    "numpy_type,name",
    [
        (np.intc, "i32"),
        (np.longlong, "i64"),
        (np.ulonglong, "u64"),
        (np.int_, "i64"),
        (np.uintc, "u32"),
        (np.short, "i16"),
        (np.byte, "i8"),
        (np.ubyte, "u8"),
        (np.half, "f16"),
        (np.single, "f32"),
        (np.double, "f64"),
        (np.dtype("=f4"), "f32"),
        (np.dtype("<u2"), "u16"),
    ],
)
def test_numpy_aliases(numpy_type, name):
    assert dtypes.of_array(np.zeros(1, numpy_type)).name == name


@pytest.mark.parametrize(
    "dtype",
    [
        np.complex64,
        np.complex128,
        object,
        "U3",
        "S3",
        "V4",
        "M8[s]",
        "m8[s]",
        [("a", "<i4")],
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.int4,
        np.longdouble,
    ],
)
def test_unsupported_dtypes(dtype):
    if np.dtype(dtype) == np.float64:
        pytest.skip("long double is double here")
    with pytest.raises(CmfError, match="unsupported array dtype"):
        dtypes.of_array(np.zeros(1, dtype))


@pytest.mark.parametrize("name", ["F32", "float32", "f128", "", None, 4, "bf16 ", "bool\x00"])
def test_unknown_names(name):
    with pytest.raises(UnsupportedError, match="unknown dtype"):
        dtypes.by_name(name)


def test_dtypes_pickle_to_the_tables_own_instances_and_compare_by_name():
    import pickle

    for d in dtypes.BY_NAME.values():
        assert pickle.loads(pickle.dumps(d)) is d
        assert d == dtypes.by_name(d.name) and hash(d) == hash(d.name)
    assert dtypes.BY_NAME["bf16"] != dtypes.BY_NAME["f16"]


def test_ml_dtypes_arrays_are_found_by_their_dtype():
    for name, t in (("bf16", ml_dtypes.bfloat16), ("f8_e4m3", ml_dtypes.float8_e4m3fn)):
        assert dtypes.of_array(np.zeros(3, t)).name == name
        assert dtypes.BY_NAME[name].numpy == np.dtype(t)


def test_cmf_reads_and_writes_f32_without_importing_ml_dtypes(tmp_path):
    """ml_dtypes takes most of a second to import: only bf16/fp8 need it."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, cmf, cmf.cli, cmf.convert\n"
        f"cmf.save_file({{'w': np.ones((4, 4), np.float32)}}, r'{tmp_path / 'a.cmf'}')\n"
        f"assert cmf.load_file(r'{tmp_path / 'a.cmf'}')['w'].sum() == 16\n"
        "print('ml_dtypes' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
