"""Golden vectors (spec/vectors/): the committed bytes decode to the manifest, forever.

The vectors are never regenerated here. A second test checks that today's writer still produces
the very same bytes from the same inputs; compressed bytes depend on the zstd library, so that
check runs only with the libzstd version recorded in the manifest (decoding does not depend on
it: any conforming zstd decoder gives the same output).
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import zstandard

import cmf

VECTORS = os.path.join(os.path.dirname(__file__), "..", "spec", "vectors")
MANIFEST = json.load(open(os.path.join(VECTORS, "manifest.json")))
NAMES = sorted(MANIFEST["vectors"])


@pytest.mark.parametrize("name", NAMES)
def test_vector_decodes_to_manifest(name):
    want = MANIFEST["vectors"][name]
    path = os.path.join(VECTORS, name)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == want["sha256_file"], "vector file changed"
    assert cmf.validate(path).valid
    with cmf.open(path) as f:
        assert f.minor == want["minor"]
        assert f.metadata() == want["metadata"]
        assert f.keys() == list(want["tensors"])
        for tname, t in want["tensors"].items():
            array = f.get_tensor(tname)
            assert array.dtype == cmf.dtypes.by_name(t["dtype"]).numpy
            assert list(array.shape) == t["shape"]
            assert hashlib.sha256(array.tobytes()).hexdigest() == t["sha256"], tname
        for aname, digest in want["attachments"].items():
            assert hashlib.sha256(f.get_attachment(aname)).hexdigest() == digest


@pytest.mark.skipif(
    zstandard.ZSTD_VERSION != tuple(MANIFEST["zstd_version"]),
    reason="compressed bytes are pinned for the libzstd that wrote the vectors",
)
@pytest.mark.parametrize("name", NAMES)
def test_writer_still_writes_the_same_bytes(tmp_path, name):
    from tools.make_vectors import VECTORS as BUILDERS

    path = str(tmp_path / name)
    BUILDERS[name](path)
    assert open(path, "rb").read() == open(os.path.join(VECTORS, name), "rb").read()
