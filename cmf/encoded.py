"""``Encoded``: a tensor that arrives already encoded (a converter kept its bytes, e.g. GGUF's
GGML blocks as a ``ggml`` tree); every write path stores its pending tree as it is
(cmf.parallel.write_tensors, ``Writer.add_encoded``)."""

from __future__ import annotations

from dataclasses import dataclass

from .codecs.base import ArraySpec
from .pipeline import Pending


@dataclass(frozen=True)
class Encoded:
    """A tensor of ``spec`` already encoded as the pending tree ``pending``."""

    spec: ArraySpec
    pending: Pending
