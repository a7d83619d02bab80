"""Codec registry: name -> class. A name is registered once and never reused."""

from __future__ import annotations

from typing import Any

from ..errors import CmfError, UnsupportedError
from .base import Codec

_CODECS: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make ``cls`` known under ``cls.name``."""
    if cls.name in _CODECS:
        raise CmfError(f"codec name {cls.name!r} is already registered")
    _CODECS[cls.name] = cls
    return cls


def codec_class(name: object) -> type[Codec]:
    """The class registered as ``name``; UnsupportedError naming it otherwise."""
    if isinstance(name, str) and name in _CODECS:
        return _CODECS[name]
    shown = repr(name) if isinstance(name, str) and len(name) <= 64 else f"{str(name)[:64]!r}..."
    raise UnsupportedError(
        f"unknown codec {shown}; this reader implements {', '.join(sorted(_CODECS))}"
    )


def codec_from_config(name: object, config: Any) -> Codec:
    return codec_class(name).from_config(config)


def registered() -> dict[str, type[Codec]]:
    return dict(_CODECS)
