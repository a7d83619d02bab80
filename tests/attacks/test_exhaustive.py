"""Every truncation and every single-bit flip of a small valid file written by cmf.save_file.

Truncation: always a CmfError (on open or when decoding everything).
Bit flip: a CmfError, or output bit-identical to the original (NaN payloads compared as bytes);
and ``cmf validate`` never raises and rejects every flip except those in the minor version.
"""

from __future__ import annotations

import os
import time

import ml_dtypes
import numpy as np
import pytest

import cmf
from cmf.pipeline import describe

from . import craft as c
from .common import read_all

MINOR_BYTES = range(10, 12)  # preamble: any minor is accepted (spec §1)


def _small_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    emb = (rng.standard_normal((16, 16)) * 0.02).astype(np.float32)
    nan = np.array([0x7FC00001, 0xFFC12345, 0x7F800001, 0x7F800000, 0x00000001], np.uint32)
    return {
        "emb": emb,  # byteplanes, one plane zstd
        "bias": np.zeros(64, np.float16),  # raw > zstd
        "nan": nan.view(np.float32),  # raw; NaN payloads and a signalling NaN
        "tied": emb.copy(),  # alias of emb
        "mask": np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], bool),
        "idx": np.arange(6, dtype=np.int64) * 1000,
        "h": np.linspace(-1, 1, 24).astype(ml_dtypes.bfloat16).reshape(4, 6),
    }


ATTACHMENTS = {
    "config.json": b'{"hidden_size": 16, "layers": 1, "vocab": 16}' * 3,  # zstd
    "tok/vocab.txt": b"a\nb\nc\n",  # stored
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.cmf"
    cmf.save_file(_small_tensors(), path, {"source": "attack-tests"}, attachments=ATTACHMENTS)
    data = path.read_bytes()
    with cmf.open(path) as f:  # the file must exercise what it claims to
        kinds = {e.name: e.alias or describe(e.encoding) for e in f.index.tensors}
        atts = [describe(a.encoding) for a in f.index.attachments]
    assert kinds["tied"] == "emb"
    assert kinds["emb"].startswith("byteplanes(") and "zstd" in kinds["emb"], kinds
    assert "zstd" in kinds["bias"] and kinds["nan"] == "raw", kinds
    assert sorted(atts) == ["seg", "zstd"], atts
    assert 1000 <= len(data) <= 3072, len(data)
    snap = read_all(str(path))
    for name, want in _small_tensors().items():
        assert snap["tensors"][name] == (str(want.dtype), want.shape, want.tobytes()), name
    assert snap["attachments"] == ATTACHMENTS
    return data, snap


def _outcome(path: str):
    try:
        return "ok", read_all(path)
    except cmf.CmfError as exc:
        return "error", str(exc)


def test_every_truncation_is_rejected(small, tmp_path):
    data, _ = small
    path = os.fspath(tmp_path / "t.cmf")
    start = time.perf_counter()
    for n in range(len(data)):
        with open(path, "wb") as fh:
            fh.write(data[:n])
        kind, detail = _outcome(path)
        assert kind == "error", f"truncated to {n} of {len(data)} bytes was accepted"
        assert detail, n
    print(
        f"\ntruncations: {len(data)} tried, {len(data)} rejected "
        f"({time.perf_counter() - start:.1f} s)"
    )


def test_truncation_then_validate_never_raises(small, tmp_path):
    data, _ = small
    path = os.fspath(tmp_path / "v.cmf")
    for n in range(0, len(data), 7):
        with open(path, "wb") as fh:
            fh.write(data[:n])
        report = cmf.validate(path)
        assert not report.valid and report.errors, n


def test_every_bit_flip(small, tmp_path):
    data, original = small
    path = os.fspath(tmp_path / "f.cmf")
    flips = rejected = harmless = validate_rejected = 0
    where_harmless: set[int] = set()
    start = time.perf_counter()
    buf = bytearray(data)
    for pos in range(len(data)):
        for bit in range(8):
            buf[pos] ^= 1 << bit
            with open(path, "wb") as fh:
                fh.write(buf)
            buf[pos] ^= 1 << bit
            flips += 1
            kind, detail = _outcome(path)
            if kind == "error":
                rejected += 1
            else:
                assert detail == original, f"flip of bit {bit} at byte {pos} changed the output"
                harmless += 1
                where_harmless.add(pos)
            report = cmf.validate(path)  # never raises; flags every flip but the minor version
            if not report.valid:
                validate_rejected += 1
            else:
                assert pos in MINOR_BYTES, f"validate accepted a flip of bit {bit} at byte {pos}"
            if kind == "error":
                assert not report.valid, f"reader rejects byte {pos} bit {bit}, validate accepts"
    seconds = time.perf_counter() - start
    print(
        f"\nbit flips: {flips} tried, {rejected} rejected by the reader, {harmless} harmless "
        f"(bytes {_ranges(where_harmless)}); validate rejected {validate_rejected} "
        f"({seconds:.1f} s)"
    )
    assert flips == 8 * len(data) == rejected + harmless
    # Harmless flips may only be in bytes the reader does not interpret: minor version,
    # preamble padding, padding between segments.
    p = c.parse(data)
    padding = set(range(16, 64)) | set(MINOR_BYTES)
    for off, length, _ in p.index["segments"]:
        padding |= set(range(off + length, c.align(off + length)))
    assert where_harmless <= padding, sorted(where_harmless - padding)


def _ranges(positions: set[int]) -> str:
    out, run = [], []
    for p in sorted(positions):
        if run and p != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(p)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out) or "none"


def test_every_bit_flip_behind_the_crcs(small, tmp_path):
    """Flip each bit of the index and of every segment, then fix the CRC that would catch it, so
    the msgpack parser, the index checks and the codecs see the damage. A flip may now give a
    different valid file (a renamed tensor); the invariant is: CmfError or a clean decode, and
    decoded bool tensors hold only 0/1 bytes."""
    data, _ = small
    p = c.parse(data)
    path = os.fspath(tmp_path / "g.cmf")
    flips = rejected = accepted = 0
    start = time.perf_counter()

    def check(candidate: bytes) -> None:
        nonlocal flips, rejected, accepted
        with open(path, "wb") as fh:
            fh.write(candidate)
        flips += 1
        kind, detail = _outcome(path)
        if kind == "error":
            rejected += 1
            return
        accepted += 1
        with cmf.open(path) as f:
            for name in f.keys():
                if f.spec(name).dtype.name == "bool":
                    assert set(detail["tensors"][name][2]) <= {0, 1}, name

    head, blob = data[: p.index_offset], bytearray(data[p.index_offset : -c.TRAILER_SIZE])
    for pos in range(len(blob)):
        for bit in range(8):
            blob[pos] ^= 1 << bit
            check(head + bytes(blob) + c.trailer(p.index_offset, len(blob), c.crc32c(blob)))
            blob[pos] ^= 1 << bit
    index_flips = flips
    for i, (off, length, _) in enumerate(p.index["segments"]):
        seg = bytearray(data[off : off + length])
        for pos in range(length):
            for bit in range(8):
                seg[pos] ^= 1 << bit
                check(c.patch_segment(data, i, bytes(seg)))
                seg[pos] ^= 1 << bit
    print(
        f"\nflips behind the CRCs: {flips} tried ({index_flips} in the index), {rejected} "
        f"rejected, {accepted} decoded cleanly ({time.perf_counter() - start:.1f} s)"
    )
    assert flips == rejected + accepted
