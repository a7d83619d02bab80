"""Golden vectors (spec/vectors/): the committed bytes decode to manifest.json, forever.

The vectors are never regenerated here: these tests read the committed files. What each must
decode to is in manifest.json (per tensor: dtype, shape, encoding tree, SHA-256 of the
little-endian C-order bytes and, when small, the bytes themselves as hex). A tensor marked
``"compare": "lowrank tolerance"`` (a ``lowrank`` root, which decodes up to a stated tolerance)
is compared with its recorded values by ``cmf.codecs.lowrank.same_decoding`` instead.

A second group checks that today's writer still writes the ``cmf.save_file`` vectors byte for
byte, so that an accidental change to the writer's bytes is caught. Compressed bytes depend on
the libzstd version (zstd guarantees what a frame decodes to, not which frame an encoder
emits), and the writer keeps the smallest candidate, so with zstd in play even the chosen tree
can change with the library. Decision (spec/vectors/README.md): vectors whose trees hold no
``zstd`` node are compared byte for byte always; the others only when the running libzstd is
the one recorded in the manifest (otherwise that test is skipped, not failed), and in every case
the rebuilt file must decode to the manifest's values.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pytest
import zstandard

import cmf
from cmf.codecs.lowrank import same_decoding
from cmf.index import node_obj

VECTORS = os.path.join(os.path.dirname(__file__), "..", "spec", "vectors")
MANIFEST = json.load(open(os.path.join(VECTORS, "manifest.json"), encoding="utf-8"))
NAMES = list(MANIFEST["vectors"])
WRITER = [n for n in NAMES if MANIFEST["vectors"][n]["writer"] == "cmf.save_file"]
LOWRANK_COMPARE = "lowrank tolerance"  # a tensor entry's "compare": not byte equality


def _read(name: str) -> bytes:
    with open(os.path.join(VECTORS, name), "rb") as fh:
        return fh.read()


def _same(a, b, where="metadata") -> None:
    """Equal values of equal msgpack kinds: 1 != 1.0 != True here."""
    assert type(a) is type(b), f"{where}: {a!r} ({type(a).__name__}) vs {b!r} ({type(b).__name__})"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _number(x):
    return {"inf": math.inf, "-inf": -math.inf}.get(x, x) if isinstance(x, str) else x


def check_file_against(path: str, want: dict, *, check_trees: bool = True) -> None:
    """``path`` decodes to what the manifest entry ``want`` records."""
    with cmf.open(path) as f:
        assert f.minor == want["minor"]
        _same(f.metadata(), want["metadata"])
        assert f.keys() == list(want["tensors"]), "tensor names or order"
        for entry in f.index.tensors:
            t = want["tensors"][entry.name]
            assert entry.spec.dtype.name == t["dtype"], entry.name
            assert list(entry.spec.shape) == t["shape"], entry.name
            assert entry.alias == t.get("alias"), entry.name
            if check_trees and entry.alias is None:
                assert node_obj(entry.encoding) == t["tree"], entry.name
            if "error" in t:
                assert entry.error == {k: _number(v) for k, v in t["error"].items()}
            array = f.get_tensor(entry.name)
            assert array.dtype == cmf.dtypes.by_name(t["dtype"]).numpy
            assert list(array.shape) == t["shape"]
            if t.get("compare") == LOWRANK_COMPARE:
                _check_lowrank(f, entry, array, t)
                continue
            data = array.tobytes()
            assert hashlib.sha256(data).hexdigest() == t["sha256"], entry.name
            if "hex" in t:
                assert data.hex() == t["hex"], entry.name
        assert f.attachments() == list(want["attachments"]), "attachment names or order"
        for att in f.index.attachments:
            a = want["attachments"][att.name]
            data = f.get_attachment(att.name)
            assert att.size == a["size"] == len(data)
            assert hashlib.sha256(data).hexdigest() == a["sha256"], att.name
            if "hex" in a:
                assert data.hex() == a["hex"]
            if check_trees:
                assert node_obj(att.encoding) == a["tree"], att.name


def _check_lowrank(f, entry, array, t) -> None:
    """A ``lowrank`` root decodes up to its page's tolerance (spec/codecs/lowrank.md): compared
    with the manifest's values (exactly rounded products, always as hex) by same_decoding."""
    want = bytes.fromhex(t["hex"])
    assert hashlib.sha256(want).hexdigest() == t["sha256"], entry.name
    assert t["tree"]["codec"] == "lowrank", entry.name
    expected = np.frombuffer(want, array.dtype).reshape(array.shape)
    u, v = (f.decode_node(entry.encoding.parts[p]) for p in ("u", "v"))
    assert same_decoding(array, expected, u, v, t["dtype"]), entry.name


# ----------------------------------------------------------------------------- the committed bytes


def test_manifest_lists_every_vector():
    on_disk = sorted(n for n in os.listdir(VECTORS) if n.endswith(".cmf"))
    assert on_disk == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_vector_is_small(name):
    # New vectors should be a few KB; lossless_paths.cmf (30 KB) predates that rule.
    assert len(_read(name)) <= 32 << 10


@pytest.mark.parametrize("name", NAMES)
def test_vector_decodes_to_manifest(name):
    want = MANIFEST["vectors"][name]
    data = _read(name)
    assert len(data) == want["bytes"]
    assert hashlib.sha256(data).hexdigest() == want["sha256_file"], "a committed vector changed"
    check_file_against(os.path.join(VECTORS, name), want)


@pytest.mark.parametrize("name", NAMES)
def test_vector_validates(name):
    report = cmf.validate(os.path.join(VECTORS, name))
    assert report.valid, report.errors
    want = MANIFEST["vectors"][name]
    assert report.tensors_checked == sum("alias" not in t for t in want["tensors"].values())
    assert report.attachments_checked == len(want["attachments"])
    if want["minor"] <= 3:  # 1.0 to 1.3, what this reader implements
        assert report.warnings == []
    else:  # future_minor.cmf: the unknown top-level key is a warning, not an error
        assert report.warnings and all("unknown top-level key" in w for w in report.warnings)


def test_load_file_agrees():
    """The bulk loader (threads) gives the same bytes as get_tensor for every vector."""
    for name in NAMES:
        want = MANIFEST["vectors"][name]
        loaded = cmf.load_file(os.path.join(VECTORS, name))
        assert list(loaded) == list(want["tensors"])
        with cmf.open(os.path.join(VECTORS, name)) as f:
            for tname, array in loaded.items():
                if want["tensors"][tname].get("compare") == LOWRANK_COMPARE:
                    assert array.tobytes() == f.get_tensor(tname).tobytes(), tname
                    continue
                assert (
                    hashlib.sha256(array.tobytes()).hexdigest() == want["tensors"][tname]["sha256"]
                )


def test_empty_vector_bytes():
    """empty.cmf by hand from format.md: preamble, index {segments: [], tensors: []} at 64,
    trailer. Independent of cmf."""
    import struct

    import crc32c as _crc32c

    index = b"\x82\xa8segments\x90\xa7tensors\x90"
    head = b"\x89CMF\r\n\x1a\n" + struct.pack("<HHI", 1, 0, 0)
    trailer = struct.pack("<QQII8s", 64, len(index), _crc32c.crc32c(index), 0, b"CMFINDX\x00")
    assert _read("empty.cmf") == head + bytes(48) + index + trailer


# ----------------------------------------------------------------------------- the writer


def _rebuild(tmp_path, name: str) -> str:
    from tools.make_vectors import VECTORS as BUILDERS

    path = str(tmp_path / name)
    BUILDERS[name](path)
    return path


@pytest.mark.parametrize("name", WRITER)
def test_writer_output_decodes_to_manifest(tmp_path, name):
    """Whatever libzstd is installed, today's writer makes a file with the vector's values."""
    path = _rebuild(tmp_path, name)
    pinned = _zstd_pinned(name)
    check_file_against(path, MANIFEST["vectors"][name], check_trees=pinned)


def _zstd_pinned(name: str) -> bool:
    want = MANIFEST["vectors"][name]
    return not want["uses_zstd"] or tuple(want["zstd_version"]) == zstandard.ZSTD_VERSION


@pytest.mark.parametrize("name", WRITER)
def test_writer_still_writes_the_same_bytes(tmp_path, name):
    if not _zstd_pinned(name):
        pytest.skip(
            f"{name} holds zstd frames written by libzstd "
            f"{'.'.join(map(str, MANIFEST['vectors'][name]['zstd_version']))}; this is "
            f"{'.'.join(map(str, zstandard.ZSTD_VERSION))} (decoded values are still checked)"
        )
    path = _rebuild(tmp_path, name)
    with open(path, "rb") as fh:
        assert fh.read() == _read(name), f"cmf's writer no longer writes {name} byte for byte"
