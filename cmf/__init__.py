"""cmf: a compressed model container. See spec/format.md for the bytes."""

from .api import load_file, open, save_file
from .errors import ChecksumError, CmfError, FormatError, LimitError, UnsupportedError
from .limits import Limits
from .reader import CmfFile
from .validate import validate
from .writer import Writer

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "CmfError",
    "CmfFile",
    "FormatError",
    "LimitError",
    "Limits",
    "UnsupportedError",
    "Writer",
    "load_file",
    "open",
    "save_file",
    "validate",
]
