"""cmf.sizes: the one size parser (--shard-size, --target-size's bytes), its units in one table."""

from __future__ import annotations

import pytest

from cmf.errors import CmfError, UsageError
from cmf.sizes import UNITS, parse_size, size_bytes


@pytest.mark.parametrize(
    "text, size",
    [
        ("1000", 1000),
        ("2GB", 2 * 10**9),
        ("512MiB", 512 << 20),
        ("1.5kb", 1500),
        (" 3 MB ", 3 * 10**6),
        ("1e6", 10**6),
        (".5KiB", 512),
        ("4k", 4000),
        ("1TiB", 1 << 40),
        ("2.7", 2),
    ],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "GB", "-1GB", "2 parsecs", "0", "0.5", "1e999", "nan", "1 2MB", None, True]
)
def test_not_sizes(text):
    with pytest.raises(UsageError) as info:
        parse_size(text, "--shard-size")
    assert isinstance(info.value, CmfError) and "--shard-size" in str(info.value)


def test_units_are_case_insensitive_and_fractions_kept_as_floats():
    assert all(k == k.lower() for k in UNITS)
    assert parse_size("2gib") == parse_size("2GiB") == 2 << 30
    assert size_bytes("0.5") == 0.5 and size_bytes("12MB") == 12e6
