"""The codec registry and the codec contract (cmf/codecs/base.py): every codec has a page in
spec/codecs/, a config that round-trips, an encode -> decode round trip within its contract,
no override that changes what a base method means, and a name that is never registered twice
(in the style of numcodecs' registry tests)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import cmf.codecs
from cmf.codecs import (
    ArraySpec,
    BytesSpec,
    Codec,
    codec_class,
    codec_from_config,
    register,
    registered,
)
from cmf.codecs.bitpack import BitPack
from cmf.codecs.byteplanes import BytePlanes
from cmf.codecs.codebook import Codebook
from cmf.codecs.ggml_codec import Blocks, Ggml
from cmf.codecs.huffman import Huffman
from cmf.codecs.lowrank import LowRank
from cmf.codecs.outlier import Outlier
from cmf.codecs.partition import Partition
from cmf.codecs.quantize import Quantize
from cmf.codecs.raw import Raw
from cmf.codecs.sparse import Sparse
from cmf.codecs.zstd import Zstd
from cmf.errors import CmfError, UnsupportedError

from .helpers import spec, spec_of

SPEC = pathlib.Path(__file__).resolve().parents[2] / "spec"
CODECS = sorted(registered())


def test_the_v1_codecs_are_registered():
    assert {"raw", "byteplanes", "zstd", "huffman"} <= set(CODECS)


@pytest.mark.parametrize("name", CODECS)
def test_every_codec_has_a_page(name):
    page = SPEC / "codecs" / f"{name}.md"
    assert page.is_file(), f"codec {name!r} has no spec/codecs/{name}.md"
    text = page.read_text()
    assert text.startswith(f"# Codec `{name}`")
    assert f"**Name**: `{name}`" in text
    assert "## Errors" in text


@pytest.mark.parametrize("name", CODECS)
def test_every_codec_is_in_the_format_table(name):
    table = (SPEC / "format.md").read_text()
    assert f"| `{name}`" in table and f"codecs/{name}.md" in table


def test_every_page_is_a_registered_codec():
    pages = {p.stem for p in (SPEC / "codecs").glob("*.md")} - {"README"}
    assert pages <= set(CODECS), pages - set(CODECS)


@pytest.mark.parametrize("name", CODECS)
def test_class_contract(name):
    cls = codec_class(name)
    assert issubclass(cls, Codec) and cls.name == name
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # configs are identities: immutable and hashable


@pytest.mark.parametrize("name", CODECS)
def test_default_config_round_trips(name):
    cls = codec_class(name)
    try:
        codec = cls()
    except TypeError:
        pytest.skip(f"{name} has no default configuration")
    config = codec.to_config()
    assert isinstance(config, dict) and all(isinstance(k, str) for k in config)
    again = codec_from_config(name, config)
    assert again == codec and hash(again) == hash(codec)
    assert again.to_config() == config


@pytest.mark.parametrize("name", CODECS)
def test_unknown_config_key_rejected(name):
    cls = codec_class(name)
    try:
        config = cls().to_config()
    except TypeError:
        pytest.skip(f"{name} has no default configuration")
    with pytest.raises(CmfError):
        codec_from_config(name, {**config, "surely_not_a_key": 1})
    with pytest.raises(CmfError):
        codec_from_config(name, "not a map")


@pytest.mark.parametrize("name", ["nope", "", "RAW", "zstd ", None, 3, "x" * 500])
def test_unknown_codec_names(name):
    with pytest.raises(UnsupportedError, match="unknown codec") as info:
        codec_class(name)
    assert len(str(info.value)) < 300  # long names are cut
    assert "raw" in str(info.value)  # lists what it implements


def test_a_name_cannot_be_registered_twice():
    @dataclasses.dataclass(frozen=True)
    class Fake(Codec):
        name = "raw"

    with pytest.raises(CmfError, match="already registered"):
        register(Fake)
    assert codec_class("raw") is cmf.codecs.raw.Raw


def test_registered_is_a_copy():
    reg = registered()
    reg["bogus"] = object
    assert "bogus" not in registered()


# ----------------------------------------------------------------------------- the contract


def test_the_base_class_is_abstract():
    assert Codec.__abstractmethods__ == {"to_config", "from_config", "resolve", "encode", "decode"}
    with pytest.raises(TypeError):
        Codec()  # type: ignore[abstract]
    assert Codec.since_minor == 0 and Codec.lossless is True


@pytest.mark.parametrize("name", CODECS)
def test_since_minor_is_a_format_minor(name):
    latest = int(
        re.search(r"\| minor +\| `0` to `(\d+)`", (SPEC / "format.md").read_text()).group(1)
    )
    since = codec_class(name).since_minor
    assert isinstance(since, int) and not isinstance(since, bool) and 0 <= since <= latest


def _kind(attr: Any) -> str:
    return (
        type(attr).__name__ if isinstance(attr, (classmethod, staticmethod, property)) else "method"
    )


def _parameters(attr: Any) -> list[str]:
    fn = attr.__func__ if isinstance(attr, (classmethod, staticmethod)) else attr
    return list(inspect.signature(fn).parameters)


BASE_METHODS = [n for n, a in vars(Codec).items() if callable(a) or isinstance(a, classmethod)]


@pytest.mark.parametrize("name", CODECS)
def test_overrides_keep_the_base_meaning(name):
    """An override of a base method is the same kind of method with the same parameters: a
    codec's own helpers take names of their own (Quantize.quantize_blocks, not ``fit``)."""
    cls = codec_class(name)
    assert not cls.__abstractmethods__, f"{name} leaves {sorted(cls.__abstractmethods__)} abstract"
    for method in BASE_METHODS:
        if method.startswith("_"):
            continue
        base, mine = inspect.getattr_static(Codec, method), inspect.getattr_static(cls, method)
        assert _kind(mine) == _kind(base), (
            f"{name}.{method} is a {_kind(mine)}, not a {_kind(base)}"
        )
        assert _parameters(mine) == _parameters(base), f"{name}.{method}{_parameters(mine)}"


# ----------------------------------------------------------------------------- round trips


@dataclasses.dataclass
class Example:
    """``codec`` encodes ``value`` (of ``spec``); decoding must give ``expected`` bit for bit,
    or within ``atol`` (largest absolute difference) for a lossy codec."""

    codec: Codec
    spec: Any
    value: Any
    expected: Any
    atol: float | None = None


_rng = np.random.default_rng(21)


def _f32(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


def _lossless(codec: Codec, value: np.ndarray) -> Example:
    return Example(codec, spec_of(value), value, value)


def _fitted(cls: Any, value: np.ndarray, options: dict, atol: float | None = None) -> Example:
    codec, encoded = cls.fit(value, spec_of(value), options)
    return Example(codec, spec_of(value), encoded, value, atol)


def _ggml_q8_0() -> Example:
    """Two Q8_0 blocks built by hand (d f16 | 32 x i8): they decode to ``d * q``."""
    d = np.array([0.5, -0.125], np.float16)
    q = _rng.integers(-128, 128, (2, 32)).astype(np.int8)
    raw = np.concatenate([d.reshape(2, 1).view(np.uint8), q.view(np.uint8)], axis=1).tobytes()
    expected = (d.astype(np.float32)[:, None] * q.astype(np.float32)).reshape(1, 64)
    return Example(Ggml(type="Q8_0"), spec("f32", (1, 64)), Blocks(raw), expected)


def _sparse() -> Example:
    x = np.zeros((8, 16), np.float32)
    x[_rng.integers(0, 8, 12), _rng.integers(0, 16, 12)] = _f32(12)
    return _fitted(Sparse, x, {"layout": "delta"})


def _low_rank() -> Example:
    x = (_f32(16, 2) @ _f32(2, 12)).astype(np.float32)
    return _fitted(LowRank, x, {"rank": 2}, atol=1e-4)


EXAMPLES: dict[str, Callable[[], Example]] = {
    "raw": lambda: _lossless(Raw(), _f32(3, 5)),
    "byteplanes": lambda: _lossless(BytePlanes(rotate=True), _f32(4, 33)),
    "bitpack": lambda: _lossless(BitPack(bits=3), _rng.integers(0, 8, (7, 9)).astype(np.uint8)),
    "huffman": lambda: _lossless(
        Huffman(chunk=64, max_length=12), _rng.geometric(0.3, 500).clip(0, 255).astype(np.uint8)
    ),
    "zstd": lambda: (lambda b: Example(Zstd(level=3), BytesSpec(len(b)), b, b))(
        bytes(range(256)) * 7
    ),
    "quantize": lambda: (
        lambda x: Example(
            Quantize(bits=8, block=32, axis=-1), spec_of(x), x, x, atol=float(np.abs(x).max()) / 127
        )
    )(_f32(4, 64)),
    "codebook": lambda: _fitted(
        Codebook, _rng.choice(np.array([-1.0, 0.0, 0.5, 2.0], np.float32), 256), {"k": 4}, atol=1e-6
    ),
    "lowrank": _low_rank,
    "sparse": _sparse,
    "outlier": lambda: _fitted(Outlier, _f32(64), {"count": 3}),
    "partition": lambda: _fitted(Partition, _f32(6, 4), {"classes": [0, 1, 0, 2, 1, 0]}),
    "ggml": _ggml_q8_0,
}


def _matches(value: Any, part_spec: Any) -> bool:
    if isinstance(part_spec, ArraySpec):
        return (
            isinstance(value, np.ndarray)
            and value.dtype == part_spec.dtype.numpy
            and value.shape == part_spec.shape
        )
    n = memoryview(value).nbytes
    return part_spec.length is None or n == part_spec.length


def test_every_codec_has_an_example():
    assert sorted(EXAMPLES) == CODECS


@pytest.mark.parametrize("name", CODECS)
def test_encode_decode_config_round_trip(name):
    ex = EXAMPLES[name]()
    codec = ex.codec
    assert codec.name == name
    config = codec.to_config()
    assert json.loads(json.dumps(config)) == config  # JSON-able, as the index stores it
    again = codec_from_config(name, config)
    assert again == codec and hash(again) == hash(codec) and again.to_config() == config

    specs = codec.resolve(ex.spec)
    parts = codec.encode(ex.value, ex.spec)
    assert set(parts) == set(specs)
    for part, value in parts.items():
        assert _matches(value, specs[part]), (
            f"{name}: part {part!r} is not {specs[part].describe()}"
        )
    assert again.resolve(ex.spec) == specs  # data-free: the decoder's view is the encoder's

    decoded = again.decode(parts, ex.spec)
    if isinstance(ex.spec, BytesSpec):
        assert bytes(decoded) == bytes(ex.expected)
        return
    decoded = np.asarray(decoded)
    assert decoded.dtype == ex.spec.dtype.numpy and decoded.shape == ex.spec.shape
    if ex.atol is None:
        assert decoded.tobytes() == np.ascontiguousarray(ex.expected).tobytes()  # bit for bit
    else:
        assert not codec.lossless
        assert float(np.abs(decoded.astype(np.float64) - ex.expected).max()) <= ex.atol
