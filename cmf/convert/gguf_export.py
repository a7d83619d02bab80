"""``.cmf`` -> GGUF (spec/converters.md § GGUF out): which GGUF a file becomes.

Contract: :func:`write_gguf` writes an open .cmf file or sharded set as GGUF, through
cmf.convert.gguf_write: a GGUF-origin file as its source bytes (cmf.convert.gguf_restore), a
Llama-family Hugging Face model in llama.cpp's layout (cmf.convert.hf_gguf); anything else is a
CmfError. :func:`gguf_writable` says why a file cannot be written, before any work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .gguf_write import write_gguf_file


def is_gguf_origin(metadata: dict[str, Any]) -> bool:
    return metadata.get("cmf.source_format") == "gguf"


def write_gguf(
    f: Any,
    path: str | os.PathLike,
    *,
    blocks_as_f32: bool = False,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Write the open .cmf file or set ``f`` as the GGUF ``path`` (see the module docstring).
    ``blocks_as_f32``: a block-type tensor not kept exactly is written as F32 (with a warning
    through ``warnings``) instead of refusing the file."""
    meta = f.metadata()
    if is_gguf_origin(meta):
        from .gguf_restore import restore_out  # lazy: gguf-py only when writing

        out = restore_out(f, meta, blocks_as_f32=blocks_as_f32)
    else:
        from .hf_gguf import hf_out

        out = hf_out(f, meta)
    write_gguf_file(path, out, progress)


def gguf_writable(f: Any) -> str | None:
    """None if :func:`write_gguf` can write ``f``, else why not (a sentence)."""
    meta = f.metadata()
    if is_gguf_origin(meta):
        return None
    from .hf_gguf import hf_refusal

    return hf_refusal(f, meta)
