"""The optional C kernels (cmf/_speedups.c: byte-plane shuffles, Huffman chunk decoding), or
None when they were not built or ``CMF_NO_SPEEDUPS`` is set. Codecs give the same bytes
either way; the kernels are only faster."""

from __future__ import annotations

import os

try:
    if os.environ.get("CMF_NO_SPEEDUPS"):
        raise ImportError
    from .. import _speedups as speedups
except ImportError:
    speedups = None
