"""cmf.validate: a full check that lists every problem instead of stopping at the first."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

import cmf
from cmf import format as fmt
from cmf.checksum import crc32c


def rewrite_index(path, change) -> None:
    data = path.read_bytes()
    off, length, _, _, _ = fmt.TRAILER.unpack(data[-fmt.TRAILER_SIZE :])
    obj = msgpack.unpackb(data[off : off + length], raw=False)
    change(obj)
    blob = msgpack.packb(obj, use_bin_type=True)
    path.write_bytes(data[:off] + blob + fmt.pack_trailer(off, len(blob), crc32c(blob)))


def poke(path, offset: int, value: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= value
    path.write_bytes(bytes(data))


def test_valid_file_report(cmf_file, mixed_tensors):
    report = cmf.validate(cmf_file)
    assert report.valid and report.errors == [] and report.warnings == []
    with cmf.open(cmf_file) as f:
        encoded = sum(1 for t in f.index.tensors if t.alias is None)
        assert report.segments_checked == len(f.index.segments)
    assert report.tensors_checked == encoded == len(mixed_tensors) - 1  # the alias is not decoded
    assert report.attachments_checked == 2
    j = report.to_json()
    assert j == {
        "path": str(cmf_file),
        "valid": True,
        "damaged": [],
        "errors": [],
        "warnings": [],
        "tensors_checked": encoded,
        "attachments_checked": 2,
        "segments_checked": report.segments_checked,
    }


def test_reports_every_corrupt_segment(cmf_file, segment_of, mixed_tensors):
    victims = ["w", "ids", "h"]
    for name in victims:
        offset, length = next(s for s in segment_of(cmf_file, name) if s[1])
        poke(cmf_file, offset)
    report = cmf.validate(cmf_file)
    assert not report.valid
    crc_errors = [e for e in report.errors if "CRC-32C" in e]
    assert len(crc_errors) == 3, report.errors
    assert report.tensors_checked == len(mixed_tensors) - 1 - 3


def test_nonzero_padding_is_an_error_the_reader_ignores(cmf_file, mixed_tensors):
    with cmf.open(cmf_file) as f:
        seg = next(s for s in f.index.segments if (s.offset + s.length) % 64)
    poke(cmf_file, seg.offset + seg.length, 0x01)
    report = cmf.validate(cmf_file)
    assert not report.valid
    assert any("padding" in e for e in report.errors)
    assert np.array_equal(cmf.load_file(cmf_file)["ids"], mixed_tensors["ids"])  # lazy reader


def test_preamble_padding_is_checked(cmf_file):
    poke(cmf_file, 40, 0x01)
    report = cmf.validate(cmf_file)
    assert not report.valid and any("padding bytes 16..64" in e for e in report.errors)


def test_unknown_top_level_key_is_a_warning(cmf_file):
    rewrite_index(cmf_file, lambda obj: obj.update(v1_1_feature=[1, 2]))
    report = cmf.validate(cmf_file)
    assert report.valid
    assert len(report.warnings) == 1 and "v1_1_feature" in report.warnings[0]


def test_several_bad_entries_are_all_listed(cmf_file):
    def change(obj):
        obj["tensors"][1]["dtype"] = "f17"
        obj["tensors"][2]["shape"] = [-1]
        obj["attachments"][0]["name"] = "../evil"

    rewrite_index(cmf_file, change)
    report = cmf.validate(cmf_file)
    assert not report.valid
    text = "\n".join(report.errors)
    assert "f17" in text and "shape dimension" in text and "../evil" in text
    assert len(report.errors) >= 3


@pytest.mark.parametrize(
    "damage",
    ["truncate", "magic", "index_crc", "empty", "text"],
)
def test_unreadable_files_are_invalid_with_one_error(cmf_file, damage):
    data = cmf_file.read_bytes()
    if damage == "truncate":
        cmf_file.write_bytes(data[: len(data) // 2])
    elif damage == "magic":
        cmf_file.write_bytes(b"X" + data[1:])
    elif damage == "index_crc":
        poke(cmf_file, len(data) - 40)
    elif damage == "empty":
        cmf_file.write_bytes(b"")
    else:
        cmf_file.write_text("not a model\n" * 20)
    report = cmf.validate(cmf_file)
    assert not report.valid and len(report.errors) == 1
    assert report.tensors_checked == report.segments_checked == 0


def test_missing_file_is_a_report_not_an_exception(tmp_path):
    report = cmf.validate(tmp_path / "nope.cmf")
    assert not report.valid and "cannot open" in report.errors[0]


def test_bad_bool_bytes_are_found(tmp_path, segment_of):
    path = tmp_path / "b.cmf"
    cmf.save_file({"mask": np.array([True, False, True]), "x": np.ones(3)}, path)
    ((offset, length),) = segment_of(path, "mask")
    data = bytearray(path.read_bytes())
    data[offset + 1] = 2  # a bool byte that is neither 0 nor 1, with a matching CRC
    with cmf.open(path) as f:
        seg_index = next(i for i, s in enumerate(f.index.segments) if s.offset == offset)
    path.write_bytes(bytes(data))
    rewrite_index(
        path,
        lambda obj: obj["segments"][seg_index].__setitem__(
            2, crc32c(data[offset : offset + length])
        ),
    )
    report = cmf.validate(path)
    assert not report.valid and any("bool" in e and "'mask'" in e for e in report.errors)
    with cmf.open(path) as f:
        assert np.array_equal(f.get_tensor("x"), np.ones(3))
        with pytest.raises(cmf.FormatError, match="bool"):
            f.get_tensor("mask")


def test_validate_respects_limits(cmf_file):
    report = cmf.validate(cmf_file, limits=cmf.Limits(max_tensor_bytes=1000))
    assert not report.valid
    assert any("memory budget" in e for e in report.errors)
