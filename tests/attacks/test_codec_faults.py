"""Fault injection on a small file per codec (tools/fuzz_seeds.py): quantize, codebook (a shared
codebook and a scaled NF4 one), sparse (bitmask and delta), outlier, lowrank, partition, huffman,
bitpack, and the lossless trees (byteplanes, zstd, raw).

- every truncation: a CmfError;
- every single-bit flip of the file: a CmfError, or a decode identical to the original (lowrank:
  within its page's tolerance, spec/codecs/lowrank.md); ``cmf validate`` rejects every flip but
  those in the minor version, and never raises. The default run tries every 4th flip (each bit
  of each byte in turn), ``-m slow`` all of them;
- every single-bit flip *behind the CRCs* (in the index or a segment, the CRC that would catch it
  recomputed, so the msgpack parser, the index checks and the codec decoders see the damage): a
  CmfError or a clean decode (each tensor of its spec, bool only 0/1), and the validator agrees
  with the reader. The default run tries every 7th such flip; ``-m slow`` tries them all.

The counts are printed (``pytest -s``) and quoted in docs/reliability.md.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import cmf
from cmf.codecs.lowrank import same_decoding
from tools.fuzz_seeds import BUILDERS, build, codecs_used, has_shared_ref

from . import craft as c
from .common import read_all

MINOR_BYTES = range(10, 12)
NAMES = sorted(BUILDERS)


@pytest.fixture(scope="module")
def files():
    return {name: build(name) for name in NAMES}


def _outcome(path: str):
    try:
        return "ok", read_all(path)
    except cmf.CmfError as exc:
        return "error", str(exc)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _lowrank_factors(path: str) -> dict:
    """name -> (u, v, dtype) of each lowrank tensor of ``path``."""
    out = {}
    with cmf.open(path) as f:
        for e in f.index.tensors:
            node = e.encoding
            if (
                node is not None
                and getattr(node, "codec", None) is not None
                and node.codec.name == "lowrank"
            ):
                u = f.decode_node(node.parts["u"])
                v = f.decode_node(node.parts["v"])
                out[e.name] = (u, v, e.spec.dtype.name)
    return out


def _same(got: dict, want: dict, factors: dict) -> bool:
    if got["attachments"] != want["attachments"] or got["metadata"] != want["metadata"]:
        return False
    if set(got["tensors"]) != set(want["tensors"]):
        return False
    for name, (dtype, shape, data) in want["tensors"].items():
        g = got["tensors"][name]
        if g == (dtype, shape, data):
            continue
        if name not in factors or g[:2] != (dtype, shape):
            return False
        u, v, dt = factors[name]
        a = np.frombuffer(g[2], dtype=np.dtype(dtype)).reshape(shape)
        b = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
        if not same_decoding(a, b, u, v, dt):
            return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_file_uses_its_codecs(files, tmp_path, name):
    path = os.fspath(tmp_path / "f.cmf")
    _write(path, files[name])
    with cmf.open(path) as f:
        assert BUILDERS[name][1] <= codecs_used(f), (name, codecs_used(f))
        if name == "codebook":
            assert has_shared_ref(f) and len(f.index.shared) == 1
    assert cmf.validate(path).valid
    assert len(files[name]) <= 2048, len(files[name])


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_is_rejected(files, tmp_path, name):
    data = files[name]
    path = os.fspath(tmp_path / "t.cmf")
    for n in range(len(data)):
        _write(path, data[:n])
        kind, _ = _outcome(path)
        assert kind == "error", f"{name}: truncated to {n} of {len(data)} bytes was accepted"
        if n % 13 == 0:
            assert not cmf.validate(path).valid, n
    print(f"\n{name}: truncations {len(data)} tried, {len(data)} rejected")


@pytest.mark.parametrize("name", NAMES)
def test_bit_flips_sampled(files, tmp_path, name):
    _check_flips(name, files[name], tmp_path, stride=4)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_bit_flip(files, tmp_path, name):
    _check_flips(name, files[name], tmp_path, stride=1)


def _check_flips(name: str, data: bytes, tmp_path, stride: int) -> None:
    path = os.fspath(tmp_path / "f.cmf")
    _write(path, data)
    original = read_all(path)
    factors = _lowrank_factors(path)
    buf = bytearray(data)
    flips = rejected = harmless = 0
    start = time.perf_counter()
    for pos in range(len(data)):
        for bit in range(8):
            if (pos + bit) % stride:  # every bit position of every byte is sampled in turn
                continue
            buf[pos] ^= 1 << bit
            _write(path, buf)
            buf[pos] ^= 1 << bit
            flips += 1
            kind, detail = _outcome(path)
            if kind == "error":
                rejected += 1
                assert detail
            else:
                assert _same(detail, original, factors), (
                    f"{name}: flip of bit {bit} at {pos} changed the output"
                )
                harmless += 1
                report = cmf.validate(path)
                assert not report.valid or pos in MINOR_BYTES, (
                    f"{name}: validate accepts byte {pos} bit {bit}"
                )
            if kind == "error" and (pos * 8 + bit) % 5 == 0:  # the validator agrees (sampled)
                assert not cmf.validate(path).valid, f"{name}: byte {pos} bit {bit}"
    print(
        f"\n{name}: bit flips {flips} tried (1 in {stride}), {rejected} rejected, {harmless} "
        f"harmless ({time.perf_counter() - start:.1f} s)"
    )
    assert flips == rejected + harmless and (stride > 1 or flips == 8 * len(data))


def _behind_crcs(data: bytes, stride: int):
    """(candidate file, where) for every ``stride``-th bit of the index and of the segments,
    the CRC that covers it recomputed."""
    p = c.parse(data)
    head, blob = data[: p.index_offset], bytearray(data[p.index_offset : -c.TRAILER_SIZE])
    k = 0
    for pos in range(len(blob)):
        for bit in range(8):
            k += 1
            if k % stride:
                continue
            blob[pos] ^= 1 << bit
            yield head + bytes(blob) + c.trailer(p.index_offset, len(blob), c.crc32c(blob)), "index"
            blob[pos] ^= 1 << bit
    for i, (off, length, _) in enumerate(p.index["segments"]):
        seg = bytearray(data[off : off + length])
        for pos in range(length):
            for bit in range(8):
                k += 1
                if k % stride:
                    continue
                seg[pos] ^= 1 << bit
                yield c.patch_segment(data, i, bytes(seg)), f"segment {i}"
                seg[pos] ^= 1 << bit


def _check_behind(name: str, data: bytes, tmp_path, stride: int) -> None:
    path = os.fspath(tmp_path / "g.cmf")
    tried = rejected = accepted = 0
    where: dict[str, int] = {}
    start = time.perf_counter()
    for candidate, part in _behind_crcs(data, stride):
        _write(path, candidate)
        tried += 1
        kind, detail = _outcome(path)
        report = cmf.validate(path)  # never raises
        if kind == "error":
            rejected += 1
            where[part] = where.get(part, 0) + 1
            assert not report.valid, f"{name}: reader rejects ({detail}), validate accepts"
            continue
        accepted += 1
        with cmf.open(path) as f:
            for t in f.keys():
                dtype, shape, raw = detail["tensors"][t]
                spec = f.spec(t)
                assert (np.dtype(dtype), shape) == (spec.dtype.numpy, spec.shape), t
                if spec.dtype.name == "bool":
                    assert set(raw) <= {0, 1}, t
    print(
        f"\n{name}: flips behind the CRCs {tried} tried (1 in {stride}), {rejected} rejected, "
        f"{accepted} decoded cleanly ({time.perf_counter() - start:.1f} s)"
    )
    assert tried == rejected + accepted and tried > 0


@pytest.mark.parametrize("name", NAMES)
def test_bit_flips_behind_the_crcs_sampled(files, tmp_path, name):
    _check_behind(name, files[name], tmp_path, stride=7)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_bit_flip_behind_the_crcs(files, tmp_path, name):
    _check_behind(name, files[name], tmp_path, stride=1)
