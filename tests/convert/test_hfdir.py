"""Hugging Face model directories: sharded and single-file checkpoints with side files."""

from __future__ import annotations

import json
import os

import ml_dtypes  # noqa: F401  (registers bfloat16 for safetensors.numpy)
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file as st_load
from safetensors.numpy import save_file as st_save

import cmf
from cmf.cli import main
from cmf.convert import HFDirectorySource, open_source


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "embed.weight": rng.standard_normal((64, 16)).astype(np.float32),
        "layer.0.w": rng.standard_normal((16, 16)).astype(ml_dtypes.bfloat16),
        "layer.1.w": rng.standard_normal((16, 16)).astype(np.float16),
        "norm.bias": np.zeros(16, np.float32),
    }


def _sharded(tmp_path, tensors: dict[str, np.ndarray]) -> str:
    d = tmp_path / "model"
    (d / "1_Pooling").mkdir(parents=True)
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:2],
        "model-00002-of-00002.safetensors": names[2:],
    }
    weight_map = {}
    for fname, keys in shards.items():
        st_save({k: tensors[k] for k in keys}, str(d / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (d / ".gitattributes").write_text("*.safetensors filter=lfs")
    (d / "pytorch_model.bin").write_bytes(b"not carried")
    return str(d)


def test_sharded_directory_round_trip(tmp_path):
    tensors = _model(np.random.default_rng(0))
    d = _sharded(tmp_path, tensors)
    src = open_source(d)
    assert isinstance(src, HFDirectorySource)
    assert sorted(src.names()) == sorted(tensors)
    assert set(src.attachments) == {"config.json", "tokenizer.json", "1_Pooling/config.json"}

    out = tmp_path / "m.cmf"
    result = CliRunner().invoke(main, ["pack", d, "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    with cmf.open(out) as f:
        assert sorted(f.keys()) == sorted(tensors)
        assert f.get_attachment("1_Pooling/config.json") == b'{"pooling_mode_mean_tokens": true}'
        assert f.metadata() == {"format": "pt"}

    rebuilt = tmp_path / "rebuilt"
    result = CliRunner().invoke(main, ["unpack", str(out), "-o", str(rebuilt) + "/", "--quiet"])
    assert result.exit_code == 0, result.output
    back = st_load(str(rebuilt / "model.safetensors"))
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k].view(np.uint8), v.view(np.uint8))
    assert (
        rebuilt / "1_Pooling" / "config.json"
    ).read_text() == '{"pooling_mode_mean_tokens": true}'
    assert not (rebuilt / "model.safetensors.index.json").exists()  # one file now, no stale index


def test_default_output_name_for_directory(tmp_path):
    d = _sharded(tmp_path, _model(np.random.default_rng(1)))
    result = CliRunner().invoke(main, ["pack", d + "/", "--quiet"])
    assert result.exit_code == 0, result.output
    assert os.path.isfile(d + ".cmf")


@pytest.mark.parametrize(
    "weight_map, message",
    [
        ({"a": "../outside.safetensors"}, "not a file in the directory"),
        ({"a": "missing.safetensors"}, "is missing"),
        ("not a map", "not a valid shard index"),
    ],
)
def test_bad_shard_index(tmp_path, weight_map, message):
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(cmf.CmfError, match=message):
        open_source(str(d))


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(cmf.CmfError, match="no \\*.safetensors"):
        open_source(str(tmp_path))


def test_tensor_in_two_shards(tmp_path):
    a = np.ones(3, np.float32)
    st_save({"x": a}, str(tmp_path / "a.safetensors"))
    st_save({"x": a}, str(tmp_path / "b.safetensors"))
    with pytest.raises(cmf.CmfError, match="in both"):
        open_source(str(tmp_path))
