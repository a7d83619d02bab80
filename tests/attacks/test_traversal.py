"""Path traversal and symlink corpus: every path a file can name, every way out of a directory.

- ONNX external data (``location`` in a model): relative to the model's directory only, no
  ``..``, no absolute or drive paths, no symlinked file or directory component, regular files
  only (a FIFO must not hang the reader); nothing of ``secret.bin`` (outside) may be read.
  (tests/convert/test_onnx.py has 14 more cases; together they are the corpus.)
- Hugging Face directories: ``model.safetensors.index.json`` naming files outside, shards and side
  files that are symlinks leaving the directory (refused), symlinked subdirectories and FIFOs
  (not side files); a Hugging Face cache snapshot (symlinks into ``../../blobs``) still packs.
- ``cmf unpack -o dir/``: attachment names that escape (refused when the file is opened),
  symlinks already in the output directory (refused), nothing written outside ``dir``.

Each refusal is a CmfError (one line from the CLI), never a traceback, and nothing outside is
read or written. ``test_corpus_size`` prints the number of cases (docs/reliability.md).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from safetensors.numpy import save_file as st_save

import cmf
from cmf.cli import run as cli_run
from cmf.convert import open_source
from cmf.convert.onnx import OnnxSource

from . import craft as c
from .common import base_parts

SECRET = b"SECRET-OUTSIDE!!" * 256  # 4096 bytes, the size of the weight below

# ----------------------------------------------------------------------------- ONNX


def _model(location: str, offset: str | None = None, length: str | None = None) -> onnx.ModelProto:
    init = TP(name="W", data_type=TP.FLOAT, dims=[16, 64], data_location=TP.EXTERNAL)
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            e = init.external_data.add()
            e.key, e.value = k, v
    x = oh.make_tensor_value_info("X", TP.FLOAT, [1, 16])
    y = oh.make_tensor_value_info("Y", TP.FLOAT, [1, 64])
    g = oh.make_graph([oh.make_node("MatMul", ["X", "W"], ["Y"])], "g", [x], [y], [init])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


@pytest.fixture
def model_dir(tmp_path):
    """model/ with w.bin (good data), sub/, links out; secret.bin and outside/ beside it."""
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (tmp_path / "secret.bin").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.bin").write_bytes(SECRET)
    (d / "w.bin").write_bytes(np.arange(1024, dtype=np.float32).tobytes())
    os.symlink(tmp_path / "secret.bin", d / "abs-link.bin")
    os.symlink("../secret.bin", d / "rel-link.bin")
    os.symlink("w.bin", d / "inside-link.bin")  # a symlink even to a file inside: refused
    os.symlink(tmp_path / "outside", d / "linkdir")
    os.symlink("..", d / "sub" / "up")
    os.symlink("/dev/zero", d / "zero.bin")
    os.mkfifo(d / "pipe.bin")
    return d


ONNX_CASES = {  # location -> what the error says
    "../secret.bin": "leaves the model's directory",
    "./../secret.bin": "leaves the model's directory",
    "sub/../../secret.bin": "leaves the model's directory",
    "sub/../w.bin": "leaves the model's directory",  # stays inside, but '..' is never followed
    "..": "leaves the model's directory",
    "/etc/passwd": "is absolute",
    "//server/share/w.bin": "is absolute",
    "{tmp}/secret.bin": "is absolute",
    "C:/Windows/w.bin": "is absolute",
    "c:w.bin": "is absolute",
    "..\\secret.bin": "backslash",
    "sub\\..\\..\\secret.bin": "backslash",
    "w.bin\x00.txt": "NUL",
    "abs-link.bin": "is a symlink",
    "rel-link.bin": "is a symlink",
    "inside-link.bin": "is a symlink",
    "linkdir/secret.bin": "linkdir is a symlink",
    "sub/up/secret.bin": "sub/up is a symlink",
    "sub/up/w.bin": "sub/up is a symlink",
    "zero.bin": "is a symlink",
    "pipe.bin": "not a regular file",
    "sub": "not a regular file",
    "%2e%2e/secret.bin": "No such file",
    "a" * 300: "too long",
    "": "has no location",
    "./": "leaves the model's directory",
}


@pytest.mark.parametrize("location", sorted(ONNX_CASES), ids=lambda s: repr(s)[:40])
def test_onnx_external_data_refused(model_dir, tmp_path, location):
    path = model_dir / "m.onnx"
    loc = location.replace("{tmp}", os.fspath(tmp_path))
    path.write_bytes(_model(loc).SerializeToString())
    with pytest.raises(cmf.CmfError, match=ONNX_CASES[location]) as info:
        src = OnnxSource(path)
        for _, a in src.items():  # (not reached) nothing of the secret may come out
            assert b"SECRET" not in a.tobytes()
    assert "\n" not in str(info.value)


def test_onnx_external_data_inside_is_read(model_dir):
    path = model_dir / "m.onnx"
    path.write_bytes(_model("./sub/../w.bin".replace("sub/../", "")).SerializeToString())
    (w,) = [a for _, a in OnnxSource(path).items()]
    assert w.tobytes() == (model_dir / "w.bin").read_bytes()


def test_onnx_unsupported_dtype_external_data_is_checked_too(model_dir):
    """Tensors cmf leaves in the graph (here complex64) get their external data inlined into the
    skeleton: the same checks apply, so the secret cannot be smuggled into the attachment."""
    m = _model("rel-link.bin")
    m.graph.initializer[0].data_type = TP.COMPLEX64
    m.graph.initializer[0].ClearField("dims")
    m.graph.initializer[0].dims.extend([512])
    path = model_dir / "m.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(cmf.CmfError, match="is a symlink"):
        OnnxSource(path)


# ----------------------------------------------------------------------------- HF directories


def _hf_dir(root, name="model"):
    d = root / name
    d.mkdir(parents=True)
    st_save({"w": np.ones((2, 3), np.float32)}, os.fspath(d / "model.safetensors"))
    (d / "config.json").write_text('{"model_type": "toy"}')
    return d


def _secret(root):
    p = root / "id_rsa"
    p.write_bytes(SECRET)
    return p


@pytest.mark.parametrize(
    "shard",
    [
        "../outside.safetensors",
        "/abs/outside.safetensors",
        "sub/model.safetensors",
        "..",
        ".",
        "",
        5,
        None,
    ],
)
def test_hf_shard_index_names_outside(tmp_path, shard):
    d = _hf_dir(tmp_path)
    st_save({"x": np.zeros(2, np.float32)}, os.fspath(tmp_path / "outside.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": shard}}))
    with pytest.raises(cmf.CmfError, match="is not a file in the directory"):
        open_source(d)


def test_hf_shard_symlink_outside(tmp_path):
    d = _hf_dir(tmp_path)
    st_save({"x": np.zeros(2, np.float32)}, os.fspath(tmp_path / "elsewhere.safetensors"))
    os.symlink(tmp_path / "elsewhere.safetensors", d / "extra.safetensors")
    with pytest.raises(cmf.CmfError, match="refusing to read extra.safetensors: it is a symlink"):
        open_source(d)


def test_hf_indexed_shard_symlink_outside(tmp_path):
    d = _hf_dir(tmp_path)
    st_save({"x": np.zeros(2, np.float32)}, os.fspath(tmp_path / "elsewhere.safetensors"))
    os.symlink(tmp_path / "elsewhere.safetensors", d / "shard-2.safetensors")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model.safetensors", "x": "shard-2.safetensors"}})
    )
    with pytest.raises(cmf.CmfError, match="refusing to read shard-2.safetensors"):
        open_source(d)


@pytest.mark.parametrize("link", ["tokenizer.json", "sub/special_tokens_map.json"])
def test_hf_side_file_symlink_outside(tmp_path, link):
    d = _hf_dir(tmp_path)
    secret = _secret(tmp_path)
    (d / "sub").mkdir()
    os.symlink(secret, d / link)
    with pytest.raises(cmf.CmfError, match=f"refusing to read {link}: it is a symlink"):
        open_source(d)
    os.unlink(d / link)
    os.symlink(os.path.relpath(secret, (d / link).parent), d / link)  # a relative link too
    with pytest.raises(cmf.CmfError, match="outside the model directory"):
        open_source(d)


def test_hf_side_files_not_taken(tmp_path):
    """A symlinked subdirectory and a FIFO are skipped (a FIFO must not hang the packer); a
    symlink to a file inside the directory is read."""
    d = _hf_dir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.json").write_bytes(SECRET)
    os.symlink(tmp_path / "elsewhere", d / "1_Pooling")
    os.mkfifo(d / "tokenizer.json")
    os.symlink("config.json", d / "config-copy.json")
    src = open_source(d)
    assert set(src.attachments) == {"config.json", "config-copy.json"}
    assert all(b"SECRET" not in v for v in src.attachments.values())


def test_hf_cache_snapshot_packs(tmp_path):
    """A Hugging Face cache snapshot: every file a symlink into the repository's blobs."""
    repo = tmp_path / "hub" / "models--org--toy"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    (snap / "1_Pooling").mkdir(parents=True)
    st_save({"w": np.ones((2, 3), np.float32)}, os.fspath(blobs / "h1"))
    (blobs / "h2").write_text('{"model_type": "toy"}')
    (blobs / "h3").write_text('{"pooling_mode_mean_tokens": true}')
    os.symlink("../../blobs/h1", snap / "model.safetensors")
    os.symlink("../../blobs/h2", snap / "config.json")
    os.symlink("../../../blobs/h3", snap / "1_Pooling" / "config.json")
    src = open_source(snap)
    assert src.names() == ["w"] and set(src.attachments) == {"config.json", "1_Pooling/config.json"}
    os.symlink(_secret(tmp_path), snap / "tokenizer.json")  # out of the repository: refused
    with pytest.raises(cmf.CmfError, match="refusing to read tokenizer.json"):
        open_source(snap)


# ----------------------------------------------------------------------------- cmf unpack -o dir/


def _with_attachment(name: str, extra: tuple[str, ...] = ()) -> bytes:
    segments, index = base_parts()
    index["attachments"][0]["name"] = name
    for other in extra:
        segments.append(b"x")
        index["attachments"].append(c.attachment(other, 1, c.leaf(len(segments) - 1)))
    return c.assemble(segments, index)


def _unpack(tmp_path, data: bytes, out, *flags: str) -> tuple[int, str]:
    path = tmp_path / "in.cmf"
    path.write_bytes(data)
    try:
        cli_run(["unpack", os.fspath(path), "-o", os.fspath(out) + "/", "--quiet", *flags])
        return 0, ""
    except SystemExit as exc:
        return int(exc.code), ""


def _written_outside(tmp_path, out) -> list[str]:
    allowed = {os.fspath(tmp_path / "in.cmf")}
    found = []
    for d, _, files in os.walk(tmp_path):
        for f in files:
            p = os.path.join(d, f)
            if p not in allowed and not p.startswith(os.fspath(out) + os.sep) and "keep" not in p:
                found.append(p)
    return found


UNPACK_NAMES = [
    "../evil.json",
    "a/../../evil.json",
    "/tmp/evil.json",
    "..\\evil.json",
    "C:evil.json",
    "a//evil.json",
    "./evil.json",
    "..",
    ".",
    "a/./b",
    "a/",
    "/",
    "a\\b",
]


@pytest.mark.parametrize("name", UNPACK_NAMES)
def test_unpack_refuses_escaping_names(tmp_path, name, capsys):
    out = tmp_path / "out"
    rc, _ = _unpack(tmp_path, _with_attachment(name), out)
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("cmf: error:") and "Traceback" not in err, err
    assert not _written_outside(tmp_path, out)


@pytest.mark.parametrize(
    "name, plant",
    [
        ("config.json", "file-link"),  # out/config.json is a symlink to a file elsewhere
        ("sub/config.json", "dir-link"),  # out/sub is a symlink to a directory elsewhere
        ("a/b/c/config.json", "deep-link"),  # out/a/b is a symlink
        ("sub/config.json", "dangling"),  # out/sub is a dangling symlink
    ],
)
def test_unpack_refuses_symlinks_in_the_output(tmp_path, name, plant, capsys):
    out = tmp_path / "out"
    keep = tmp_path / "keep"
    keep.mkdir(parents=True)
    (keep / "victim.json").write_text("untouched")
    out.mkdir()
    if plant == "file-link":
        os.symlink(keep / "victim.json", out / "config.json")
    elif plant == "dir-link":
        os.symlink(keep, out / "sub")
    elif plant == "deep-link":
        (out / "a").mkdir()
        os.symlink(keep, out / "a" / "b")
    else:
        os.symlink(tmp_path / "nowhere", out / "sub")
    rc, _ = _unpack(tmp_path, _with_attachment(name), out)
    err = capsys.readouterr().err
    if plant == "file-link":  # an existing output: refused before anything is written
        assert rc == 2 and "already exists; use --force" in err, err
        assert (keep / "victim.json").read_text() == "untouched"
        rc, _ = _unpack(tmp_path, _with_attachment(name), out, "--force")
        err = capsys.readouterr().err
    assert rc == 1 and "refusing to write attachment" in err and "Traceback" not in err, err
    assert (keep / "victim.json").read_text() == "untouched"
    assert os.listdir(keep) == ["victim.json"] and not (tmp_path / "nowhere").exists()


def test_unpack_good_names_land_inside(tmp_path):
    out = tmp_path / "out"
    rc, _ = _unpack(tmp_path, _with_attachment("tok/vocab.txt", ("a..b", "..x/y")), out)
    assert rc == 0
    assert (out / "tok" / "vocab.txt").exists() and (out / "..x" / "y").exists()
    assert not _written_outside(tmp_path, out)


def test_corpus_size():
    onnx_more = 14  # tests/convert/test_onnx.py::HOSTILE
    hf = 8 + 1 + 1 + 2 + 1 + 1
    unpack = len(UNPACK_NAMES) + 4
    print(
        f"\ntraversal corpus: ONNX external data {len(ONNX_CASES) + 1 + onnx_more}, HF directories "
        f"{hf}, cmf unpack {unpack}: {len(ONNX_CASES) + 1 + onnx_more + hf + unpack} cases refused"
    )
