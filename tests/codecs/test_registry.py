"""The codec registry: every codec has a page in spec/codecs/, a config that round-trips, and a
name that is never registered twice (in the style of numcodecs' registry tests)."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

import cmf.codecs
from cmf.codecs import Codec, codec_class, codec_from_config, register, registered
from cmf.errors import CmfError, UnsupportedError

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
