"""The ``ggml`` codec (spec/codecs/ggml.md): every GGML block type gguf-py dequantizes, blocks ->
parts -> blocks byte for byte, decoding bit-equal to ``gguf.quants.dequantize`` (random blocks,
special scales included, and weight-like blocks), hostile parts rejected, a GGUF of every type
packed by the CLI and written back."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import cmf  # noqa: E402
from cmf.codecs import ArraySpec, codec_class, codec_from_config  # noqa: E402
from cmf.codecs.ggml_codec import Blocks, Ggml  # noqa: E402
from cmf.codecs.ggml_grids import GRID_SHA256, KSIGNS, grid  # noqa: E402
from cmf.codecs.ggml_pack import blocks_to_pending  # noqa: E402
from cmf.codecs.ggml_types import LAYOUTS  # noqa: E402
from cmf.convert.gguf_blocks import block_bytes  # noqa: E402
from cmf.dtypes import BY_NAME  # noqa: E402
from cmf.errors import CmfError  # noqa: E402
from cmf.pipeline import decode_pending  # noqa: E402

Q = gguf.GGMLQuantizationType
TYPES = sorted(LAYOUTS)
F32 = BY_NAME["f32"]


def gguf_types() -> set[str]:
    """The block types gguf-py dequantizes (BF16 is a plain type)."""
    return {t.name for t in gguf.quants._type_traits} - {"BF16"}


def random_blocks(name: str, n: int, rng, finite: bool = False) -> np.ndarray:
    """(n, nbytes) u8 of random blocks; with ``finite``, the f16 fields are small finite scales."""
    lay = LAYOUTS[name]
    blocks = rng.integers(0, 256, (n, lay.nbytes), dtype=np.uint8)
    if finite:
        codec = Ggml(type=name)
        spec = ArraySpec(F32, (n, lay.block))
        parts = codec.encode(Blocks(blocks), spec)
        for f in lay.fields:
            if f.kind == "f16":
                parts[f.name] = (rng.standard_normal((n, 1)) * 1e-2).astype(np.float16)
        blocks = codec.blocks_of(parts, spec).reshape(n, lay.nbytes)
    return blocks


def dequantized(blocks: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(blocks.reshape(-1), Q[name]).reshape(blocks.shape[0], -1)


def test_every_gguf_py_type_is_held():
    assert gguf_types() <= set(LAYOUTS), gguf_types() - set(LAYOUTS)
    for name, lay in LAYOUTS.items():
        assert gguf.GGML_QUANT_SIZES[Q[name]] == (lay.block, lay.nbytes), name


@pytest.mark.parametrize("name", TYPES)
def test_random_blocks_round_trip_and_decode_like_gguf_py(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    blocks = random_blocks(name, 64, rng)  # every bit pattern: NaN / inf scales included
    codec = Ggml(type=name)
    lay = LAYOUTS[name]
    spec = ArraySpec(F32, (8, 8 * lay.block))
    parts = codec.encode(Blocks(blocks), spec)
    assert set(parts) == set(codec.resolve(spec))
    for k, v in parts.items():
        assert (
            v.dtype == codec.resolve(spec)[k].dtype.numpy
            and v.shape == codec.resolve(spec)[k].shape
        )
    assert codec.blocks_of(parts, spec).tobytes() == blocks.tobytes()
    got = codec.decode(parts, spec)
    want = dequantized(blocks, name).reshape(spec.shape)
    assert got.dtype == np.float32 and got.shape == spec.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert got[ok].tobytes() == want[ok].tobytes()


@pytest.mark.parametrize("name", TYPES)
def test_pending_tree_decodes_like_gguf_py(name):
    rng = np.random.default_rng(7)
    blocks = random_blocks(name, 5, rng, finite=True)
    lay = LAYOUTS[name]
    pending = blocks_to_pending(blocks, name, (5, lay.block))
    got = decode_pending(pending)
    assert got.tobytes() == dequantized(blocks, name).tobytes()


@pytest.mark.parametrize(
    "name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "TQ1_0", "TQ2_0", "MXFP4"]
)
def test_weight_like_blocks(name):
    """Blocks gguf-py's own quantizer makes from weight-like values."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 512)) * 0.02).astype(np.float32)
    blocks = gguf.quants.quantize(x, Q[name])
    lay = LAYOUTS[name]
    spec = ArraySpec(F32, x.shape)
    codec = Ggml(type=name)
    parts = codec.encode(Blocks(blocks), spec)
    assert codec.blocks_of(parts, spec).tobytes() == blocks.tobytes()
    assert codec.decode(parts, spec).tobytes() == gguf.quants.dequantize(blocks, Q[name]).tobytes()
    assert lay.block * parts[lay.fields[-1].name].shape[0] >= 0


def test_decoding_is_chunked(monkeypatch):
    import cmf.codecs.ggml_codec as gc

    monkeypatch.setattr(gc, "CHUNK_ELEMENTS", 512)  # two Q4_K blocks at a time
    rng = np.random.default_rng(4)
    blocks = random_blocks("Q4_K", 7, rng, finite=True)
    spec = ArraySpec(F32, (7, 256))
    codec = Ggml(type="Q4_K")
    parts = codec.encode(Blocks(blocks), spec)
    assert codec.decode(parts, spec).tobytes() == dequantized(blocks, "Q4_K").tobytes()
    assert codec.blocks_of(parts, spec).tobytes() == blocks.tobytes()


def test_grids_match_the_spec_digests_and_gguf_py():
    for name, digest in GRID_SHA256.items():
        g = grid(name)
        assert hashlib.sha256(g.astype(np.int8).tobytes()).hexdigest() == digest
        ref = getattr(gguf.quants, name)
        ref.init_grid()
        assert np.array_equal(g, ref.grid.reshape(ref.grid_shape))
    assert KSIGNS.tobytes() == gguf.quants.IQ2_XXS.ksigns


def test_config_and_registry():
    assert codec_class("ggml") is Ggml and Ggml.since_minor == 3
    assert codec_from_config("ggml", {"type": "Q6_K"}) == Ggml(type="Q6_K")
    for bad in ({}, {"type": "Q7_K"}, {"type": 3}, {"type": "Q4_K", "x": 1}, []):
        with pytest.raises(CmfError):
            codec_from_config("ggml", bad)


@pytest.mark.parametrize(
    "spec",
    [
        ArraySpec(BY_NAME["f16"], (2, 256)),
        ArraySpec(F32, ()),
        ArraySpec(F32, (2, 100)),
        ArraySpec(F32, (256, 3)),
    ],
)
def test_bad_specs(spec):
    with pytest.raises(CmfError):
        Ggml(type="Q4_K").resolve(spec)


def _parts(name="IQ2_XS", n=3):
    rng = np.random.default_rng(5)
    lay = LAYOUTS[name]
    spec = ArraySpec(F32, (n, lay.block))
    codec = Ggml(type=name)
    return codec, spec, codec.encode(Blocks(random_blocks(name, n, rng, finite=True)), spec)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda p: p.pop("sign"),
        lambda p: p.update(extra=np.zeros((3, 1), np.uint8)),
        lambda p: p.update(grid=p["grid"].astype(np.uint32)),
        lambda p: p.update(grid=p["grid"][:2]),
        lambda p: p.update(grid=p["grid"][:, :-1]),
        lambda p: p.update(d=p["d"].astype(np.float32)),
        lambda p: p.update(sc=np.full_like(p["sc"], 16)),  # a 4-bit field holding 16
        lambda p: p.update(grid=np.full_like(p["grid"], 512)),  # an out-of-range grid index
        lambda p: p.update(sign=p["sign"].tobytes()),
    ],
)
def test_hostile_parts_are_cmf_errors(break_it):
    codec, spec, parts = _parts()
    break_it(parts)
    with pytest.raises(CmfError):
        codec.decode(parts, spec)
    with pytest.raises(CmfError):
        codec.blocks_of(parts, spec)


@pytest.mark.parametrize("name", TYPES)
def test_every_code_field_refuses_a_value_beyond_its_bits(name):
    codec, spec, parts = _parts(name, 2)
    for f in LAYOUTS[name].fields:
        if f.kind == "u" and f.bits < 8 * parts[f.name].dtype.itemsize:
            bad = dict(parts)
            bad[f.name] = parts[f.name].copy()
            bad[f.name][1, -1] = 1 << f.bits
            with pytest.raises(CmfError, match="does not fit"):
                codec.decode(bad, spec)


def test_encode_refuses_wrong_bytes():
    codec = Ggml(type="Q8_0")
    with pytest.raises(CmfError):
        codec.encode(Blocks(b"\0" * 33), ArraySpec(F32, (32,)))
    with pytest.raises(CmfError):
        codec.encode(np.zeros(32, np.float32), ArraySpec(F32, (32,)))


@pytest.mark.parametrize("name", TYPES)
def test_empty_tensors(name):
    codec = Ggml(type=name)
    block = LAYOUTS[name].block
    for shape in ((0, block), (2, 0), (1, block, 0)):
        spec = ArraySpec(F32, shape)
        parts = codec.encode(Blocks(b""), spec)
        assert codec.decode(parts, spec).shape == shape
        assert codec.blocks_of(parts, spec).size == 0


def _write_gguf(path, tensors):
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (blocks, kind) in tensors.items():
        w.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=Q[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_of_every_type_packs_and_decodes_equal(tmp_path):
    from cmf.cli import main

    rng = np.random.default_rng(11)
    tensors = {}
    for name in TYPES:
        lay = LAYOUTS[name]
        rows = 2
        b = random_blocks(name, rows * 2, rng, finite=True).reshape(rows, 2 * lay.nbytes)
        tensors[f"t.{name}"] = (b, name)
    src = tmp_path / "all.gguf"
    _write_gguf(src, tensors)
    out = tmp_path / "all.cmf"
    assert main(["pack", str(src), "-o", str(out), "-q"], standalone_mode=False) in (0, None)
    with cmf.open(out) as f:
        assert f.minor == 3
        for tname, (b, kind) in tensors.items():
            assert f.get_tensor(tname).tobytes() == dequantized(b, kind).tobytes(), tname
            assert block_bytes(f, tname).tobytes() == b.tobytes(), tname


@pytest.mark.parametrize("name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"])
def test_blocks_from_cmf_encoders(name):
    """Real-looking K-quant / IQ4 blocks (cmf.ggml_encode from weight-like values)."""
    ggml_encode = pytest.importorskip("cmf.ggml_encode")
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((4, 512)) * 0.02 * rng.uniform(0.5, 2, (4, 1))).astype(np.float32)
    blocks = ggml_encode.quantize_blocks(x, name)
    spec = ArraySpec(F32, x.shape)
    codec = Ggml(type=name)
    parts = codec.encode(Blocks(blocks), spec)
    assert codec.blocks_of(parts, spec).tobytes() == blocks.tobytes()
    assert codec.decode(parts, spec).tobytes() == gguf.quants.dequantize(blocks, Q[name]).tobytes()


def test_block_bytes_of_legacy_quantize_trees_and_plain_tensors(tmp_path):
    """Files written before the ggml codec hold Q8_0 ... Q5_1 as quantize trees: their blocks
    come back too; a plain tensor gives None."""
    from cmf.convert.gguf_blocks import stored_type
    from cmf.convert.gguf_legacy import gguf_tensor_to_pending

    rng = np.random.default_rng(13)
    x = (rng.standard_normal((3, 64)) * 0.1).astype(np.float32)
    path = tmp_path / "legacy.cmf"
    with cmf.Writer(path) as w:
        for name in ("Q8_0", "Q4_1", "Q5_0"):
            blocks = gguf.quants.quantize(x, Q[name])
            w.add_encoded(
                name, ArraySpec(F32, x.shape), gguf_tensor_to_pending(blocks, name, x.shape)
            )
        w.add_tensor("plain", x)
    with cmf.open(path) as f:
        for name in ("Q8_0", "Q4_1", "Q5_0"):
            assert f.entry(name).encoding.codec.name == "quantize"
            assert stored_type(f, name) == name
            assert block_bytes(f, name).tobytes() == gguf.quants.quantize(x, Q[name]).tobytes()
        assert stored_type(f, "plain") is None and block_bytes(f, "plain") is None


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "IQ4_NL", "MXFP4"])
def test_blocks_of_bitpacked_nibbles(name):
    """``blocks_of`` takes the q part as the bytes of its 4-bit bitpack node (what
    cmf.convert.gguf_blocks hands it for a Q4_0/Q4_1 tree) and gives the same blocks; bytes of
    the wrong length, a missing or extra part, or a field that is not 4-bit halves: CmfError."""
    from cmf.codecs.bitpack import pack

    rng = np.random.default_rng(11)
    codec, lay = Ggml(type=name), LAYOUTS[name]
    blocks = random_blocks(name, 33, rng)
    spec = ArraySpec(F32, (3, 11 * lay.block))
    parts = codec.encode(Blocks(blocks), spec)
    parts["q"] = pack(parts["q"], 4)
    assert codec.blocks_of(parts, spec, nibbles="q").tobytes() == blocks.tobytes()
    for bad in (parts["q"][:-1], parts["q"] + b"\0"):
        with pytest.raises(CmfError, match="bitpacked bytes"):
            codec.blocks_of({**parts, "q": bad}, spec, nibbles="q")
    with pytest.raises(CmfError, match="parts"):
        codec.blocks_of({"q": parts["q"]}, spec, nibbles="q")
    other = next(k for k in parts if k != "q")
    with pytest.raises(CmfError, match="parts"):
        codec.blocks_of({**parts, "x": parts[other]}, spec, nibbles="q")
    with pytest.raises(CmfError, match="halves"):
        codec.blocks_of(parts, spec, nibbles=other)


def test_block_bytes_joins_a_4_bit_bitpack_tree_from_its_bytes(tmp_path, monkeypatch):
    """A Q4_0 tensor whose q codes a 4-bit bitpack node stores comes back as the same blocks,
    joined from the packed bytes (bitpack's decode is not called); a bitpack of 8 bits is
    unpacked as before."""
    from cmf.codecs import bitpack
    from cmf.codecs.bitpack import BitPack
    from cmf.pipeline import PendingNode, best_bytes, encode_lossless

    rng = np.random.default_rng(12)
    x = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    blocks = gguf.quants.quantize(x, Q.Q4_0)
    codec, spec = Ggml(type="Q4_0"), ArraySpec(F32, x.shape)
    parts = codec.encode(Blocks(blocks), spec)
    specs = codec.resolve(spec)
    path = tmp_path / "q4.cmf"
    with cmf.Writer(path) as w:
        for name, bits in (("four", 4), ("eight", 8)):
            packer = BitPack(bits=bits)
            data = bitpack.pack(parts["q"], bits)
            q = PendingNode(
                packer,
                {"data": best_bytes(data, packer.resolve(specs["q"])["data"], 1)},
                specs["q"],
            )
            d = encode_lossless(parts["d"], specs["d"], 1)
            w.add_encoded(name, spec, PendingNode(codec, {"d": d, "q": q}, spec))
    unpacked = []
    real = BitPack.decode
    monkeypatch.setattr(
        BitPack, "decode", lambda self, *a: unpacked.append(self.bits) or real(self, *a)
    )
    with cmf.open(path) as f:
        assert block_bytes(f, "four").tobytes() == blocks.tobytes()
        assert unpacked == []
        assert block_bytes(f, "eight").tobytes() == blocks.tobytes()
        assert unpacked == [8]
        np.testing.assert_array_equal(f.get_tensor("four"), gguf.quants.dequantize(blocks, Q.Q4_0))
