"""Nothing lost at the command line (issue 16): where pack and unpack write (one rule for the
output name), never onto an input, existing outputs only with --force, usage errors exit 2,
the package's install name, warnings a user sees, integrity errors that name what they damage,
PyTorch checkpoints. Each case is numbered as in the issue."""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest
from safetensors.numpy import load_file as st_load
from safetensors.numpy import save_file as st_save

import cmf
from cmf.extras import DISTRIBUTION, install_hint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.fixture
def model(tmp_path):
    """A safetensors file of a few float matrices and an int tensor."""
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "b.weight": rng.standard_normal((32, 64)).astype(np.float32),
        "ids": np.arange(10, dtype=np.int64),
    }
    path = tmp_path / "t.safetensors"
    st_save(tensors, str(path))
    return path


@pytest.fixture
def hf_dir(tmp_path, model):
    """A model directory: model.safetensors + config.json + tokenizer.json."""
    d = tmp_path / "hf"
    d.mkdir()
    os.link(model, d / "model.safetensors")
    (d / "config.json").write_text('{"model_type": "none"}')
    (d / "tokenizer.json").write_text("{}")
    return d


# -- 1. never onto the source; existing outputs only with --force --------------------------------


@pytest.mark.parametrize(
    "flags", [[], ["--preset", "q4"], ["--force"], ["--preset", "q4", "--force"]]
)
def test_1_pack_onto_its_source_is_refused(tmp_path, model, run, flags):
    before = sha(model)
    r = run("pack", model, "-o", model, *flags)
    assert r.code == 2 and "is an input of this command" in r.err, r.err
    assert sha(model) == before and sorted(os.listdir(tmp_path)) == ["t.safetensors"]


def test_1_links_to_an_input_are_the_input(tmp_path, model, run):
    before = sha(model)
    os.symlink(model, tmp_path / "sym.cmf")
    os.link(model, tmp_path / "hard.cmf")
    for name in ("sym.cmf", "hard.cmf"):
        r = run("pack", model, "-o", tmp_path / name, "--force")
        assert r.code == 2 and "is an input of this command (it is" in r.err, r.err
    attach = tmp_path / "notes.txt"
    attach.write_text("keep me")
    r = run("pack", model, "-o", tmp_path / "x.cmf", "--attach", attach, "--force")
    assert r.code == 0
    assert sha(model) == before and attach.read_text() == "keep me"
    r = run("pack", model, "-o", attach.with_suffix(".cmf"), "--attach", attach)
    assert r.code == 0  # a new name beside an input is fine
    os.link(tmp_path / "x.cmf", tmp_path / "x-link.safetensors")
    r = run("unpack", tmp_path / "x.cmf", "-o", tmp_path / "x-link.safetensors", "--force")
    assert r.code == 2 and "is an input of this command" in r.err


def test_1_an_existing_output_needs_force(tmp_path, model, run):
    out = tmp_path / "m.cmf"
    out.write_bytes(b"precious")
    r = run("pack", model, "-o", out)
    assert (
        r.code == 2 and "already exists; use --force" in r.err and out.read_bytes() == b"precious"
    )
    assert run("pack", model, "-o", out, "--force", "-q").code == 0
    assert cmf.validate(out).valid
    back = tmp_path / "back.safetensors"
    back.write_bytes(b"precious")
    r = run("unpack", out, "-o", back)
    assert r.code == 2 and back.read_bytes() == b"precious"
    assert run("unpack", out, "-o", back, "--force", "-q").code == 0


def test_1_the_python_api_keeps_overwrite_semantics(tmp_path):
    path = tmp_path / "m.cmf"
    cmf.save_file({"w": np.zeros(3, np.float32)}, path)
    cmf.save_file({"w": np.ones(3, np.float32)}, path)  # as safetensors.numpy.save_file does
    assert cmf.load_file(path)["w"].tolist() == [1, 1, 1]


def test_1_plan_and_write_refuses_its_source(tmp_path, model):
    from cmf.plan.planner import PlanOptions, plan_and_write

    before = sha(model)
    with pytest.raises(cmf.CmfError, match="is an input"):
        plan_and_write(model, model, PlanOptions(preset="small"))
    assert sha(model) == before


# -- 2. a directory output is a directory -------------------------------------------------------


def test_2_pack_into_a_new_directory(tmp_path, model, run):
    r = run("pack", model, "-o", f"{tmp_path / 'outdir2'}/", "--json")
    assert r.code == 0, r.err
    assert r.json()["output"] == os.path.join(f"{tmp_path / 'outdir2'}/", "model.cmf")
    assert (
        os.listdir(tmp_path / "outdir2") == ["model.cmf"]
        and cmf.validate(tmp_path / "outdir2" / "model.cmf").valid
    )
    r = run(
        "pack", model, "-o", tmp_path / "nested" / "deeper", "-q"
    )  # no suffix: a directory, parents made
    assert r.code == 0 and os.listdir(tmp_path / "nested" / "deeper") == ["model.cmf"]


# -- 3. output names are checked before any work ------------------------------------------------


@pytest.mark.parametrize(
    "name", ["out.gguf", "out.npz", "out.safetensors", "out.onnx", "out.CMF.bak", ""]
)
def test_3_pack_writes_only_cmf(tmp_path, model, run, name):
    r = run("pack", model, "-o", tmp_path / name if name else "")
    assert r.code == 2, r.err
    assert (
        ("cannot tell what to write" in r.err and ".cmf" in r.err)
        if name
        else "name is empty" in r.err
    )
    assert sorted(os.listdir(tmp_path)) == ["t.safetensors"]


@pytest.mark.parametrize(
    "name, says",
    [
        ("x.npz", "cannot tell what to write"),
        ("x.gguf", "cmf writes as GGUF"),
        ("x.onnx", "not packed from an ONNX model"),
        ("x.cmf", "cannot tell"),
    ],
)
def test_3_unpack_names(tmp_path, hf_dir, run, name, says):
    packed = tmp_path / "m.cmf"
    assert run("pack", hf_dir, "-o", packed, "-q").code == 0
    r = run("unpack", packed, "-o", tmp_path / name)
    assert r.code == 2 and says in r.err, r.err
    assert not (tmp_path / name).exists()


def test_3_unpack_to_a_name_without_suffix_is_a_directory(tmp_path, hf_dir, run):
    packed = tmp_path / "m.cmf"
    assert run("pack", hf_dir, "-o", packed, "-q").code == 0
    r = run("unpack", packed, "-o", tmp_path / "outdir3", "--json")
    assert r.code == 0, r.err
    assert sorted(os.listdir(tmp_path / "outdir3")) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert r.json()["attachments_not_written"] == []


def test_3_a_single_file_names_the_attachments_it_leaves_out(tmp_path, hf_dir, run):
    packed = tmp_path / "m.cmf"
    assert run("pack", hf_dir, "-o", packed, "-q").code == 0
    r = run("unpack", packed, "-o", tmp_path / "one.safetensors")
    assert r.code == 0
    assert (
        "cmf: warning: 2 attachments not written to a single file: config.json, tokenizer.json"
        in r.err
    )
    r = run("unpack", packed, "-o", tmp_path / "two.safetensors", "--json")
    assert r.json()["attachments_not_written"] == ["config.json", "tokenizer.json"]


# -- 4. the install name is ours --------------------------------------------------------------


def test_4_hints_name_the_distribution_we_publish():
    with open(os.path.join(ROOT, "pyproject.toml")) as fh:
        assert re.search(rf'^name = "{DISTRIBUTION}"$', fh.read(), re.M)
    assert install_hint("plan") == "pip install 'cmf-container[plan]'"
    stale = []
    for top in ("cmf", "spec", "docs", "tools", "README.md"):
        path = os.path.join(ROOT, top)
        files = (
            [path]
            if os.path.isfile(path)
            else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
        )
        for f in files:
            if f.endswith((".py", ".md")):
                with open(f, encoding="utf-8") as fh:
                    if re.search(r"(?<![\w-])cmf\[", fh.read()):
                        stale.append(os.path.relpath(f, ROOT))
    assert stale == []  # `pip install 'cmf[...]'` installs an unrelated project


def test_4_help_shows_the_hint(run):
    r = run("pack", "--help")
    text = "".join(r.out.split())  # help text wraps lines, even at the hyphen
    assert r.code == 0 and "pipinstall'cmf-container[plan]'" in text and "'cmf[" not in text


# -- 5. planner fallbacks are said (see also tests/plan/test_planner.py::test_cli_token_prior) -----


def test_5_a_data_free_fallback_is_a_warning(tmp_path, model, run):
    r = run("pack", model, "-o", tmp_path / "m.cmf", "--preset", "small", "--json")
    assert r.code == 0
    assert "cmf: warning: the model cannot be run" in r.err
    assert any("data-free" in w for w in r.json()["plan"]["warnings"])
    rep = run("report", tmp_path / "m.cmf")
    assert "warning: the model cannot be run" in rep.out


# -- 6. a sharded set's directory is created ----------------------------------------------------


def test_6_shard_size_creates_the_directory(tmp_path, model, run):
    r = run("pack", model, "--shard-size", "10KB", "-o", tmp_path / "out" / "model.cmf", "--json")
    assert r.code == 0, r.err
    names = sorted(os.listdir(tmp_path / "out"))
    assert "model.cmf.index.json" in names and len(names) >= 3
    assert cmf.validate(tmp_path / "out" / "model.cmf.index.json").valid
    r = run("pack", model, "--shard-size", "10KB", "-o", tmp_path / "out" / "model.cmf")
    assert r.code == 2 and "already exist" in r.err  # the set is an existing output
    r = run("pack", model, "-o", tmp_path / "x.cmf.index.json")  # an index name without shards
    assert (
        r.code == 2 and "add --shard-size" in r.err and not (tmp_path / "x.cmf.index.json").exists()
    )
    r = run(
        "pack", model, "--shard-size", "10KB", "-o", tmp_path / "set" / "m.cmf.index.json", "-q"
    )
    assert r.code == 0 and (tmp_path / "set" / "m.cmf.index.json").exists()


# -- 8. integrity errors name what they damage --------------------------------------------------


def _flip_segment_of(path, owner_prefix: str) -> int:
    with cmf.open(path) as f:
        for i, seg in enumerate(f.index.segments):
            if any(o.startswith(owner_prefix) for o in f.segment_owners(i)):
                offset = seg.offset
                break
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x40
    open(path, "wb").write(bytes(data))
    return i


def test_8_crc_errors_name_the_tensor_and_attachment(tmp_path, hf_dir, run):
    packed = tmp_path / "m.cmf"
    assert run("pack", hf_dir, "-o", packed, "-q").code == 0
    seg = _flip_segment_of(packed, "tensor 'b.weight'")
    r = run("validate", packed)
    assert (
        r.code == 1 and f"segment {seg} CRC-32C" in r.out and "damaged tensor 'b.weight'" in r.out
    )
    j = run("validate", packed, "--json").json()
    assert j["damaged"] == [{"segment": seg, "owners": ["tensor 'b.weight'"]}]
    with pytest.raises(cmf.ChecksumError, match="damaged tensor 'b.weight'") as info:
        cmf.load_file(packed)
    assert info.value.owners == ["tensor 'b.weight'"] and info.value.segment == seg
    packed2 = tmp_path / "n.cmf"
    assert run("pack", hf_dir, "-o", packed2, "-q").code == 0
    _flip_segment_of(packed2, "attachment 'config.json'")
    assert "damaged attachment 'config.json'" in run("validate", packed2).out


def test_8_a_shard_is_named(tmp_path, model, run):
    assert (
        run("pack", model, "--shard-size", "10KB", "-o", tmp_path / "s" / "model.cmf", "-q").code
        == 0
    )
    index = json.loads((tmp_path / "s" / "model.cmf.index.json").read_text())
    shard = index["weight_map"]["a.weight"]
    _flip_segment_of(tmp_path / "s" / shard, "tensor 'a.weight'")
    j = run("validate", tmp_path / "s", "--json").json()
    assert [d["shard"] for d in j["damaged"]] == [shard] and j["damaged"][0]["owners"] == [
        "tensor 'a.weight'"
    ]
    assert any(
        e.startswith(f"shard {shard!r}") and "damaged tensor 'a.weight'" in e for e in j["errors"]
    )


# -- 10. exit codes and path style -------------------------------------------------------------


def test_10_recipe_with_a_fixed_preset_is_a_usage_error(tmp_path, model, run):
    recipe = tmp_path / "r.json"
    recipe.write_text('{"rules": []}')
    r = run("pack", model, "--preset", "q8", "--recipe", recipe, "-o", tmp_path / "x.cmf")
    assert r.code == 2 and "a preset or a recipe" in r.err and not (tmp_path / "x.cmf").exists()
    r = run("pack", model, "--shard-size", "lots", "-o", tmp_path / "x.cmf")
    assert r.code == 2 and "--shard-size" in r.err


def test_10_wrote_line_keeps_the_path_style(tmp_path, hf_dir, run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("pack", "hf", "-o", "m.cmf", "-q").code == 0
    r = run("unpack", "m.cmf", "-o", "back/")
    assert r.code == 0
    written = r.out.strip().removeprefix("wrote ").split(", ")
    assert written == ["back/model.safetensors", "back/config.json", "back/tokenizer.json"]
    assert st_load("back/model.safetensors").keys() == {"a.weight", "b.weight", "ids"}
