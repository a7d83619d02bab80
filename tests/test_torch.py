"""cmf.torch (issue 18): save/load files and models as safetensors.torch does, every dtype bit
for bit, tied weights, and ``cmf.open(framework="pt").get_slice`` decoding only the rows asked
for (cmf.slicing) yet equal to slicing the whole tensor."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cmf  # noqa: E402
import cmf.torch as ct  # noqa: E402
from cmf import cli  # noqa: E402
from cmf.slicing import RowReader, read_rows  # noqa: E402

DTYPES = [
    "f64",
    "f32",
    "f16",
    "bf16",
    "f8_e4m3",
    "f8_e5m2",
    "i8",
    "i16",
    "i32",
    "i64",
    "u8",
    "u16",
    "u32",
    "u64",
    "bool",
]
SHAPES = [(3, 5), (), (0, 4), (7,)]


def bits(t: torch.Tensor) -> bytes:
    """The bytes of a CPU tensor (C order), computed by torch alone."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def random_tensor(dtype: str, shape: tuple, seed: int = 0) -> torch.Tensor:
    """Random bit patterns of ``dtype`` (NaNs with payloads among the floats), built by torch."""
    tdt = ct.TORCH_DTYPES[dtype]
    n = int(np.prod(shape, dtype=np.int64))
    size = torch.empty((), dtype=tdt).element_size()
    raw = np.random.default_rng(seed).integers(0, 256, n * size, dtype=np.uint8)
    if dtype == "bool":
        raw &= 1
    if dtype in ("f32", "bf16", "f16", "f64") and n:  # a NaN with a payload first
        nan = {
            "f32": b"\x01\x00\xc0\x7f",
            "bf16": b"\xc1\x7f",
            "f16": b"\x01\x7e",
            "f64": b"\x01\x00\x00\x00\x00\x00\xf8\x7f",
        }[dtype]
        raw[:size] = np.frombuffer(nan, np.uint8)
    if not n:
        return torch.empty(shape, dtype=tdt)
    return torch.frombuffer(bytearray(raw.tobytes()), dtype=torch.uint8).view(tdt).reshape(shape)


def test_import_cmf_does_not_import_torch():
    code = "import cmf, cmf.api, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips_bit_exact(tmp_path, dtype):
    tensors = {f"t{i}": random_tensor(dtype, shape, i) for i, shape in enumerate(SHAPES)}
    path = tmp_path / "x.cmf"
    ct.save_file(tensors, path, metadata={"k": "v"})
    got = ct.load_file(path)
    assert list(got) == list(tensors)
    for name, want in tensors.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        assert bits(got[name]) == bits(want), name
    with cmf.open(path, framework="pt") as f:
        assert f.metadata() == {"k": "v"} and f.keys() == list(tensors)
        for name, want in tensors.items():
            assert bits(f.get_tensor(name)) == bits(want)
            assert f.get_slice(name).get_dtype() == dtype.upper()
            assert f.get_slice(name).get_shape() == list(want.shape)


def test_loaded_tensors_own_writable_memory(tmp_path):
    path = tmp_path / "x.cmf"
    ct.save_file({"a": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, path)
    a = ct.load_file(path)["a"]
    a += 1  # torch.from_numpy of a read-only array would warn; this must just work
    assert a[0, 0].item() == 1.0
    assert ct.load_file(path, device="meta")["a"].device.type == "meta"


def test_bad_tensors_and_options_are_cmf_errors(tmp_path):
    with pytest.raises(cmf.CmfError, match="complex"):
        ct.save_file({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "c.cmf")
    with pytest.raises(cmf.CmfError, match="torch.Tensor"):
        ct.save_file({"n": np.zeros(2)}, tmp_path / "n.cmf")
    ct.save_file({"a": torch.zeros(2)}, tmp_path / "a.cmf")
    with pytest.raises(cmf.CmfError, match="framework"):
        cmf.open(tmp_path / "a.cmf", framework="jax")
    with pytest.raises(cmf.CmfError, match="framework='pt'"):
        cmf.open(tmp_path / "a.cmf", device="cuda")
    with cmf.open(tmp_path / "a.cmf", framework="pt") as f:
        with pytest.raises(cmf.CmfError, match="no tensor named 'b'"):
            f.get_slice("b")
        with pytest.raises(cmf.CmfError, match="out of range"):
            f.get_slice("a")[5]


# ----------------------------------------------------------------------------- models
class Net(torch.nn.Module):
    def __init__(self, tied: bool = True) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 50, bias=False)
        self.register_buffer("steps", torch.tensor([3], dtype=torch.int64))
        if tied:
            self.head.weight = self.emb.weight


def test_save_model_stores_tied_weights_once_and_load_model_fills_a_fresh_model(tmp_path):
    torch.manual_seed(0)
    src, dst = Net(), Net()
    path = tmp_path / "m.cmf"
    ct.save_model(src, path)
    with cmf.open(path) as f:
        assert sorted(f.keys()) == sorted(src.state_dict())
        assert f.entry("head.weight").alias == "emb.weight"  # stored once
    missing, unexpected = ct.load_model(dst, path)
    assert (missing, unexpected) == ([], [])
    for name, t in src.state_dict().items():
        assert bits(dst.state_dict()[name]) == bits(t), name
    assert dst.head.weight is dst.emb.weight  # still tied


def test_load_model_tied_name_absent_from_the_file_is_not_missing(tmp_path):
    torch.manual_seed(1)
    src = Net()
    state = {k: v for k, v in src.state_dict().items() if k != "head.weight"}
    path = tmp_path / "m.cmf"
    ct.save_file(state, path)  # as a checkpoint that drops the tied copy
    dst = Net()
    assert ct.load_model(dst, path) == ([], [])
    assert bits(dst.head.weight.detach()) == bits(src.emb.weight.detach())
    untied = Net(tied=False)
    with pytest.raises(cmf.CmfError, match=r"missing \['head.weight'\]"):
        ct.load_model(untied, path)


def test_load_model_strict_and_non_strict(tmp_path):
    torch.manual_seed(2)
    src = Net(tied=False)
    state = dict(src.state_dict())
    del state["norm.bias"]
    state["extra.weight"] = torch.ones(2)
    path = tmp_path / "m.cmf"
    ct.save_file(state, path)
    dst = Net(tied=False)
    before = dst.norm.weight.detach().clone()
    expected = r"missing \['norm.bias'\].*unexpected \['extra.weight'\]"
    with pytest.raises(cmf.CmfError, match=expected):
        ct.load_model(dst, path)
    assert bits(dst.norm.weight.detach()) == bits(before)  # nothing loaded on a strict failure
    missing, unexpected = ct.load_model(dst, path, strict=False)
    assert (missing, unexpected) == (["norm.bias"], ["extra.weight"])
    assert bits(dst.norm.weight.detach()) == bits(src.norm.weight.detach())


def test_load_model_lists_every_shape_and_dtype_mismatch(tmp_path):
    state = dict(Net(tied=False).state_dict())
    state["norm.weight"] = torch.zeros(17)
    state["norm.bias"] = torch.zeros(16, dtype=torch.float16)
    path = tmp_path / "m.cmf"
    ct.save_file(state, path)
    with pytest.raises(cmf.CmfError) as info:
        ct.load_model(Net(tied=False), path)
    msg = str(info.value)
    assert "2 tensor(s) differ" in msg
    assert "norm.weight: file f32[17], model f32[16]" in msg
    assert "norm.bias: file f16[16], model f32[16]" in msg


# ----------------------------------------------------------------------------- slices
KEYS = [
    np.s_[1:5],
    np.s_[3],
    np.s_[-2:],
    np.s_[::3],
    np.s_[9:1:-2],
    np.s_[:, 2:40],
    np.s_[2:3, ::2],
    np.s_[...],
    np.s_[5:5],
    np.s_[-1, 2],
    np.s_[0:63],
    np.s_[2:3],
]


def matrix(rows: int = 64, cols: int = 96, seed: int = 3) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((rows, cols), np.float32))


ZSTD_CODES = {
    "codec": "raw",
    "parts": {"data": {"codec": "zstd", "config": {"level": 1, "literals_only": True}}},
}


def quantized(bits: int, block: int, codes) -> dict:
    return {
        "rules": [
            {
                "match": "*",
                "dtypes": ["f32", "bf16"],
                "min_rank": 2,
                "encoding": {
                    "codec": "quantize",
                    "config": {
                        "bits": bits,
                        "block": block,
                        "axis": -1,
                        "scheme": "asymmetric",
                        "scale_dtype": "f16",
                        "search": False,
                    },
                    "parts": {"q": codes},
                },
            }
        ]
    }


CASES = {
    "lossless": dict(),
    "stored": dict(recipe={"default": "stored"}),
    "q8": dict(preset="q8"),
    "q4": dict(preset="q4"),
    "q8-zstd": dict(recipe=quantized(8, 0, ZSTD_CODES)),
    "q4-bitpack": dict(recipe=quantized(4, 32, {"codec": "bitpack", "config": {"bits": 4}})),
    "partition": dict(
        recipe={
            "default": {
                "codec": "partition",
                "fit": {"classes": [i % 3 for i in range(64)]},
                "parts": {
                    "p0": "lossless",
                    "p1": "stored",
                    "p2": quantized(8, 0, ZSTD_CODES)["rules"][0]["encoding"],
                },
            }
        }
    ),
}
ROW_ONLY = {"lossless", "stored", "q8-zstd", "q4-bitpack", "partition"}  # no node decoded whole


@pytest.mark.parametrize("case", sorted(CASES))
def test_get_slice_equals_slicing_the_whole_tensor(tmp_path, case):
    tensors = {
        "w": matrix(),
        "b": matrix(64, 8, 4).to(torch.bfloat16),
        "o": matrix(64, 33, 5),
        "i": torch.arange(64 * 3).reshape(64, 3),
    }
    if case == "partition":
        del tensors["i"]  # the recipe's third class quantizes: floats only
    path = tmp_path / f"{case}.cmf"
    ct.save_file(tensors, path, **CASES[case])
    with cmf.open(path, framework="pt") as f:
        for name in tensors:
            whole = f.get_tensor(name)
            sl = f.get_slice(name)
            for key in KEYS:
                if name == "b" and key == np.s_[:, 2:40]:
                    continue
                carrier = whole.view(torch.int16) if name == "b" else whole
                want = torch.from_numpy(np.array(carrier.numpy()[key]))  # numpy: negative steps
                got = sl[key]
                assert got.dtype == whole.dtype, (name, key)
                assert tuple(got.shape) == tuple(want.shape), (name, key)
                got_bits = got.view(torch.int16) if name == "b" else got
                assert bits(got_bits) == bits(want), (case, name, key)
    if case in ROW_ONLY:
        with cmf.open(path) as f:
            reader = RowReader(f)
            for name in tensors:
                read_rows(f, name, 10, 20, reader)
                read_rows(f, name, 2, 3, reader)  # 4-bit codes: ends mid-byte (bitpack masks)
            assert reader.whole == [], reader.whole


def test_get_slice_of_a_sharded_set(tmp_path):
    tensors = {f"layer{i}.weight": matrix(32, 64, i) for i in range(4)}
    src = tmp_path / "model.safetensors"
    from safetensors.torch import save_file as st_save

    st_save(tensors, str(src))
    out = tmp_path / "out" / "model.cmf"
    cli.run(["pack", str(src), "--shard-size", "10KB", "--quiet", "-o", str(out)])
    index = tmp_path / "out" / "model.cmf.index.json"
    assert index.exists()
    got = ct.load_file(index)
    assert all(bits(got[n]) == bits(t) for n, t in tensors.items())
    with cmf.open(index, framework="pt") as f:
        assert sorted(f.keys()) == sorted(tensors)
        for name, t in tensors.items():
            assert bits(f.get_slice(name)[5:9, 1:3]) == bits(t[5:9, 1:3].contiguous())
    model = torch.nn.Module()
    for i in range(4):
        setattr(model, f"layer{i}", torch.nn.Linear(64, 32, bias=False))
    assert ct.load_model(model, index) == ([], [])
    assert bits(model.layer2.weight.detach()) == bits(tensors["layer2.weight"])
