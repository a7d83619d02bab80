"""Regression files: hand-made hostile .cmf files stored in tests/attacks/files/.

Regenerate with ``python -m tests.attacks.make_files`` (from the repository root). The bytes
depend only on craft.py (zstd frames are built by hand, no compressor is involved), and
test_regression_files.py checks that the stored files are current and that each gives its error.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from . import craft as c
from .common import base_file, base_parts

FILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")
TIB = 1 << 40


def _zstd_small_tensor_1tib_frame() -> bytes:
    segments, index = base_parts()
    segments[1] = c.zstd_frame(rle=(0, 1000), declared=TIB)  # 17 bytes, declares 1 TiB
    return c.assemble(segments, index)


def _zstd_16gib_in_budget() -> bytes:
    frame = c.zstd_frame(rle=(0, 1000), declared=16 << 30)
    return c.assemble(
        [frame], {"tensors": [c.tensor("t", "u8", [16 << 30], c.raw(c.zstd(c.leaf(0))))]}
    )


def _shape_product_2_64() -> bytes:
    return c.assemble(
        [b""], {"tensors": [c.tensor("t", "u8", [1 << 32, 1 << 32], c.raw(c.leaf(0)))]}
    )


def _attachment_escape() -> bytes:
    segments, index = base_parts()
    index["attachments"][0]["name"] = "../../.bashrc"
    return c.assemble(segments, index)


def _alias_to_later() -> bytes:
    segments, index = base_parts()
    index["tensors"].insert(0, c.tensor("early", "bool", [3], alias="flags"))
    return c.assemble(segments, index)


def _bool_byte_2() -> bytes:
    segments, index = base_parts()
    segments[4] = bytes([1, 2, 0])
    return c.assemble(segments, index)


def _segments_overlap() -> bytes:
    segments, index = base_parts()
    table = c.segment_table(segments)
    table[1][0] = 64
    return c.assemble(segments, {"segments": table, **index})


def _unknown_codec() -> bytes:
    segments, index = base_parts()
    index["tensors"][1]["encoding"]["parts"]["data"]["codec"] = "lz4"
    return c.assemble(segments, index)


def _duplicate_key() -> bytes:
    return c.assemble([], c.mp(c.Pairs((("segments", []), ("tensors", []), ("tensors", [])))))


def _trailer_wrap() -> bytes:
    size = len(base_file())
    k = 1 << 14  # length stays under the index limit; only the wrapped sum is wrong
    return base_file(index_offset=(1 << 64) - 64 * k, index_length=size - 32 + 64 * k)


# name -> (builder, expected CmfError subclass name, message substring)
FILES: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "zstd-20-byte-frame-declares-1tib.cmf": (
        _zstd_small_tensor_1tib_frame,
        "FormatError",
        "frame declares 1099511627776 bytes, 16 expected",
    ),
    "zstd-frame-declares-16gib-within-budget.cmf": (
        _zstd_16gib_in_budget,
        "FormatError",
        "cannot hold 17179869184 bytes",
    ),
    "msgpack-nesting-2000.cmf": (
        lambda: c.assemble([], b"\x91" * 2000 + b"\xc0"),
        "LimitError",
        "nests deeper than 64",
    ),
    "msgpack-array32-header.cmf": (
        lambda: c.assemble([], b"\xdd\xff\xff\xff\xff" + b"\xc0" * 8),
        "FormatError",
        "max_array_len",
    ),
    "msgpack-duplicate-key.cmf": (_duplicate_key, "FormatError", "duplicate map key 'tensors'"),
    "shape-product-2-64.cmf": (
        _shape_product_2_64,
        "FormatError",
        "holds 0 bytes, 18446744073709551616 expected",
    ),
    "trailer-offset-length-wrap.cmf": (_trailer_wrap, "FormatError", "but the file has"),
    "attachment-dotdot.cmf": (_attachment_escape, "FormatError", "'..' component"),
    "alias-to-later-tensor.cmf": (
        _alias_to_later,
        "FormatError",
        "alias must name an earlier tensor",
    ),
    "bool-byte-2.cmf": (_bool_byte_2, "FormatError", "bool byte is neither 0 nor 1"),
    "segments-overlap.cmf": (
        _segments_overlap,
        "FormatError",
        "segment 1 starts at 64, expected 128",
    ),
    "unknown-codec.cmf": (_unknown_codec, "UnsupportedError", "unknown codec 'lz4'"),
    "major-version-2.cmf": (lambda: base_file(major=2), "UnsupportedError", "major version 2 "),
}


def main() -> None:
    os.makedirs(FILES_DIR, exist_ok=True)
    for name in os.listdir(FILES_DIR):
        if name.endswith(".cmf") and name not in FILES:
            os.remove(os.path.join(FILES_DIR, name))
    for name, (build, _, _) in FILES.items():
        with open(os.path.join(FILES_DIR, name), "wb") as fh:
            fh.write(build())
    print(f"wrote {len(FILES)} files to {FILES_DIR}")


if __name__ == "__main__":
    main()
