"""Small .cmf files, one per codec, for fault injection (tests/attacks) and as fuzz seeds.

``codec_files()`` returns ``{name: (file bytes, {codec names the file must use})}``. Each file is
written by ``cmf.save_file`` with a recipe that forces the codec, on small deterministic tensors
(a few hundred bytes to ~2 KiB), so that every single-bit flip and every truncation can be tried
in seconds. ``lowrank`` decodes up to a tolerance (spec/codecs/lowrank.md); everything else is
bit-exact.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

import cmf
from cmf.index import CodecNode, Node, SharedRef

LEVEL = 3


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _quantize() -> tuple[dict, dict]:
    r = _rng(1)
    tensors = {
        "w": (r.standard_normal((8, 24)) * 0.1).astype(np.float32),
        "b": np.linspace(-1, 1, 20).astype(np.float16),
    }
    recipe = {
        "rules": [
            {
                "match": "w",
                "encoding": {
                    "codec": "quantize",
                    "config": {
                        "bits": 4,
                        "block": 8,
                        "axis": -1,
                        "scheme": "asymmetric",
                        "scale_dtype": "f16",
                        "search": False,
                    },
                    "parts": {
                        "q": {"codec": "bitpack", "config": {"bits": 4}},
                        "scale": "stored",
                        "min": "stored",
                    },
                },
            },
            {
                "match": "b",
                "encoding": {
                    "codec": "quantize",
                    "config": {
                        "bits": 8,
                        "block": 0,
                        "axis": None,
                        "scheme": "zero_point",
                        "scale_dtype": "f32",
                        "search": False,
                    },
                    "parts": {"q": "stored", "scale": "stored", "zero": "stored"},
                },
            },
        ],
        "default": "lossless",
    }
    return tensors, recipe


def _codebook() -> tuple[dict, dict]:
    r = _rng(2)
    tensors = {
        "a": (r.standard_normal((6, 16)) * 0.05).astype(np.float32),
        "b": (r.standard_normal((4, 16)) * 0.05).astype(np.float32),
        "c": r.standard_normal((2, 32)).astype(np.float16),
    }
    recipe = {
        "rules": [
            {
                "match": "[ab]",
                "encoding": {
                    "codec": "codebook",
                    "fit": {"k": 8, "shared": "g"},
                    "parts": {
                        "indices": {"codec": "bitpack", "config": {"bits": 3}},
                        "codebook": "stored",
                    },
                },
            },
            {
                "match": "c",
                "encoding": {
                    "codec": "codebook",
                    "fit": {"fixed": "nf4", "block": 16, "scale_dtype": "f16"},
                    "parts": {
                        "indices": {"codec": "bitpack", "config": {"bits": 4}},
                        "codebook": "stored",
                        "scale": "stored",
                    },
                },
            },
        ],
        "default": "lossless",
    }
    return tensors, recipe


def _sparse() -> tuple[dict, dict]:
    r = _rng(3)
    a = r.standard_normal((8, 16)).astype(np.float32)
    a[np.abs(a) < 1.0] = 0
    b = r.integers(1, 100, (64,)).astype(np.int16)
    b[r.random(64) < 0.8] = 0
    b[-1] = 7  # a non-zero after a long gap: filler codes with 3-bit deltas
    b[:40] = 0
    tensors = {"a": a, "b": b}
    recipe = {
        "rules": [
            {
                "match": "a",
                "encoding": {
                    "codec": "sparse",
                    "fit": {"layout": "bitmask"},
                    "parts": {"values": "stored", "mask": "stored"},
                },
            },
            {
                "match": "b",
                "encoding": {
                    "codec": "sparse",
                    "fit": {"layout": "delta", "index_bits": 3},
                    "parts": {
                        "values": "stored",
                        "index": {"codec": "bitpack", "config": {"bits": 3}},
                    },
                },
            },
        ],
        "default": "lossless",
    }
    return tensors, recipe


def _outlier() -> tuple[dict, dict]:
    r = _rng(4)
    a = (r.standard_normal((8, 16)) * 0.02).astype(np.float32)
    a[1, 3], a[5, 9], a[7, 15] = 40.0, -25.0, np.float32(np.nan)
    tensors = {"a": a}
    recipe = {
        "default": {
            "codec": "outlier",
            "fit": {"count": 3, "index_bits": 8},
            "parts": {
                "dense": {
                    "codec": "quantize",
                    "config": {
                        "bits": 8,
                        "block": 16,
                        "axis": -1,
                        "scheme": "symmetric",
                        "scale_dtype": "f16",
                        "search": False,
                    },
                    "parts": {"q": "stored", "scale": "stored"},
                },
                "index": "stored",
                "values": "stored",
            },
        }
    }
    return tensors, recipe


def _lowrank() -> tuple[dict, dict]:
    r = _rng(5)
    u, v = r.standard_normal((12, 2)), r.standard_normal((2, 10))
    tensors = {"m": (u @ v).astype(np.float32), "n": (u @ v).T.astype(np.float16).copy()}
    recipe = {
        "default": {"codec": "lowrank", "fit": {"rank": 2}, "parts": {"u": "stored", "v": "stored"}}
    }
    return tensors, recipe


def _partition() -> tuple[dict, dict]:
    r = _rng(9)
    e = (r.standard_normal((12, 8)) * 0.1).astype(np.float32)
    e[::4] *= 20  # class 0: rows of a wider range, their own scale
    b = r.standard_normal((5, 2, 3)).astype(np.float16)
    tensors = {"e": e, "b": b}
    q = {
        "codec": "quantize",
        "config": {
            "bits": 4,
            "block": 0,
            "axis": None,
            "scheme": "symmetric",
            "scale_dtype": "f16",
            "search": False,
        },
        "parts": {"q": {"codec": "bitpack", "config": {"bits": 4}}, "scale": "stored"},
    }
    recipe = {
        "rules": [
            {
                "match": "e",
                "encoding": {
                    "codec": "partition",
                    "fit": {"classes": [0 if i % 4 == 0 else 1 for i in range(12)]},
                    "parts": {"class": "stored", "p0": q, "p1": q},
                },
            },
            {
                "match": "b",
                "encoding": {
                    "codec": "partition",
                    "fit": {"classes": [2, 0, 2, 2, 0]},
                    "parts": {"class": "stored", "p0": "stored", "p1": "stored", "p2": "stored"},
                },
            },
        ],
        "default": "lossless",
    }
    return tensors, recipe


def _huffman() -> tuple[dict, dict]:
    r = _rng(6)
    codes = np.minimum(r.geometric(0.35, 300) - 1, 15).astype(np.uint8)
    wide = np.minimum(r.geometric(0.02, 60), 700).astype(np.uint16)
    tensors = {"codes": codes, "wide": wide}
    recipe = {
        "default": {
            "codec": "huffman",
            "config": {"chunk": 64, "max_length": 12},
            "parts": {"data": "stored"},
        }
    }
    return tensors, recipe


def _bitpack() -> tuple[dict, dict]:
    r = _rng(7)
    tensors = {
        "b5": r.integers(0, 32, 50).astype(np.uint8),
        "b11": r.integers(0, 2048, 23).astype(np.uint16),
        "b1": (r.random(13) < 0.5).astype(np.uint8),
    }
    recipe = {
        "rules": [
            {
                "match": "b5",
                "encoding": {
                    "codec": "bitpack",
                    "config": {"bits": 5},
                    "parts": {"data": "stored"},
                },
            },
            {
                "match": "b11",
                "encoding": {
                    "codec": "bitpack",
                    "config": {"bits": 11},
                    "parts": {"data": "stored"},
                },
            },
            {
                "match": "b1",
                "encoding": {
                    "codec": "bitpack",
                    "config": {"bits": 1},
                    "parts": {"data": "stored"},
                },
            },
        ],
        "default": "lossless",
    }
    return tensors, recipe


def _lossless() -> tuple[dict, dict]:
    """raw, byteplanes and zstd (the default lossless trees) and an attachment."""
    r = _rng(8)
    tensors = {
        "f": (r.standard_normal((8, 8)) * 0.02).astype(np.float32),
        "z": np.zeros(64, np.float16),
        "i": np.arange(10, dtype=np.int32),
    }
    recipe = {
        "rules": [
            {
                "match": "f",
                "encoding": {
                    "codec": "byteplanes",
                    "config": {"rotate": True},
                    "parts": {
                        "p0": "stored",
                        "p1": "stored",
                        "p2": "stored",
                        "p3": {"codec": "zstd", "config": {"level": 3, "literals_only": False}},
                    },
                },
            },
        ],
        "default": "lossless",
    }
    return tensors, recipe


BUILDERS = {
    "quantize": (_quantize, {"quantize", "bitpack"}),
    "codebook": (_codebook, {"codebook", "bitpack"}),
    "sparse": (_sparse, {"sparse", "bitpack"}),
    "outlier": (_outlier, {"outlier", "quantize"}),
    "lowrank": (_lowrank, {"lowrank"}),
    "partition": (_partition, {"partition", "quantize", "bitpack"}),
    "huffman": (_huffman, {"huffman"}),
    "bitpack": (_bitpack, {"bitpack"}),
    "lossless": (_lossless, {"byteplanes", "zstd", "raw"}),
}


def codecs_used(f: cmf.CmfFile) -> set[str]:
    """Every codec name in the trees of ``f`` (shared values' trees too)."""
    out: set[str] = set()
    stack: list[Node] = [t.encoding for t in f.index.tensors if t.encoding is not None]
    stack += [a.encoding for a in f.index.attachments]
    stack += [s.encoding for s in f.index.shared if s is not None]
    while stack:
        node = stack.pop()
        if isinstance(node, CodecNode):
            out.add(node.codec.name)
            stack.extend(node.parts.values())
    return out


def has_shared_ref(f: cmf.CmfFile) -> bool:
    stack: list[Any] = [t.encoding for t in f.index.tensors if t.encoding is not None]
    while stack:
        node = stack.pop()
        if isinstance(node, SharedRef):
            return True
        if isinstance(node, CodecNode):
            stack.extend(node.parts.values())
    return False


def build(name: str) -> bytes:
    make, _ = BUILDERS[name]
    tensors, recipe = make()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"{name}.cmf")
        attachments = (
            {"config.json": b'{"codec": "%s"}' % name.encode()} if name == "lossless" else None
        )
        cmf.save_file(
            tensors, path, {"seed": name}, recipe=recipe, level=LEVEL, attachments=attachments
        )
        with open(path, "rb") as fh:
            return fh.read()


def codec_files() -> dict[str, tuple[bytes, set[str]]]:
    return {name: (build(name), codecs) for name, (_, codecs) in BUILDERS.items()}


def vector_files() -> dict[str, bytes]:
    """The golden vectors of spec/vectors/."""
    root = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spec", "vectors"
    )
    out = {}
    for f in sorted(os.listdir(root)):
        if f.endswith(".cmf"):
            with open(os.path.join(root, f), "rb") as fh:
                out[f] = fh.read()
    return out


if __name__ == "__main__":
    for name, (data, codecs) in codec_files().items():
        print(f"{name:10s} {len(data):6d} bytes  {sorted(codecs)}")
