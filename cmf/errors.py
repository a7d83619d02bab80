"""Errors raised by cmf. Every bad input surfaces as a :class:`CmfError` subclass."""

from __future__ import annotations


class CmfError(ValueError):
    """A file, input or argument that cmf cannot accept. The message says what was expected
    and what was found."""


class FormatError(CmfError):
    """The bytes do not follow spec/format.md (layout, index structure, codec tree)."""


class ChecksumError(FormatError):
    """A CRC-32C of a segment or of the index does not match."""


class LimitError(CmfError):
    """A declared size, count or depth exceeds a reader limit (spec/format.md §6)."""


class UnsupportedError(CmfError):
    """A feature this reader does not implement: major version, flags, codec name, dtype."""


class FitRefused(CmfError):
    """An encoder's ``fit`` declines a tensor (e.g. low rank would save nothing): a recipe's
    ``choose`` then tries its other candidates."""


class UsageError(CmfError):
    """A request that cannot be carried out as asked: a flag combination, an output name of no
    kind cmf writes, an output that is an input or already exists. Exit code 2 at the command
    line (bad input gives 1)."""
