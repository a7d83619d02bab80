"""Fuzz target for sharded sets (spec/sharding.md, cmf/shards.py): ``shards``.

The input is the text of the shard index ``model.cmf.index.json``. Once per process the target
builds, in its scratch directory::

    shards/secret.cmf        a valid cmf file OUTSIDE the set: must never be opened
    shards/set/              the set's directory, where each input becomes the shard index
        model-0000i-of-0000N.cmf   a real set of 3 shards (cmf.shards.ShardedWriter): f32, f16,
                                   i64, bf16, bool, i8, a scalar, an empty tensor, a tie inside a
                                   shard (an alias) and one across shards (stored again)
        extra.cmf, dup.cmf, none.cmf   valid files outside the set: with metadata and an
                                   attachment, with a tensor named like one of shard 1, with no
                                   tensors
        link.cmf -> ../secret.cmf, up.cmf -> .., dir.cmf/, junk.cmf (not cmf), trunc.cmf (a
                                   shard cut short)

Each execution writes the input as the index and runs ``cmf.open(index)`` + ``get_tensor`` of
every tensor + ``metadata()`` + every attachment, then ``cmf.validate(index)``. Besides the
harness's rules (only CmfError, < 1 s, < 2 GiB; tools/fuzz_common.py) it checks:

- no file outside ``set/`` is opened, nor is an attempt made (an audit hook on ``open`` during
  the run flags ``secret.cmf``, anything else under the fixture's root and any ``*.cmf``
  outside ``set/``; a symlink opened with O_NOFOLLOW is refused by the kernel, not read), and
  no byte of ``secret.cmf`` appears in a tensor, the metadata or an attachment. Absolute
  names in seeds and mutations are fixed (``/secret.cmf``, ...), not the fixture's path, so
  that the python engine stays deterministic for a seed;
- a set the reader accepts is exactly what the index says: its shards, each tensor in the shard
  the weight_map names, with that shard's dtype, shape and bytes (writable arrays), and the last
  shard's metadata and attachments;
- the reader and the validator agree: every file the index can reach is valid, so a set the
  reader accepts must validate with no error, and one it rejects must be reported invalid with
  an error; ``validate`` never raises.

The mutator parses the JSON and edits it: shard names (the files above, traversal, absolute,
backslash, drive, hidden, NUL, overlong, case variants, non-strings), a shard renamed
consistently in ``shards`` and ``weight_map``, weight_map entries (moved, dropped, added, bad
tensor names), a set rebuilt consistently from any of the directory's files, ``format`` and
``version`` values, metadata and unknown keys; raw JSON tokens (NaN, 1e400, huge integers,
duplicate keys, deep nesting, escaped names, lone surrogates) are spliced in after
serialization. Inputs that are not JSON get byte mutations.

    python tools/fuzz_shards.py shards --engine python --runs 3000
    python tools/fuzz_shards.py shards --engine atheris --seconds 600
"""

from __future__ import annotations

import json
import os
import random
import sys
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tools` and `cmf` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_dtypes
import numpy as np

import cmf
from cmf.errors import CmfError
from tools.fuzz_common import (
    FUZZ_LIMITS,
    INTERESTING,
    Finding,
    Target,
    byte_mutate,
    main,
    scratch_dir,
    scratch_file,
)

INDEX = "model.cmf.index.json"
SECRET = b"\xde\xad\xbe\xefSECRET-OUTSIDE!" * 64
MARK = b"SECRET-OUTSIDE"
HOSTILE_FILES = [
    "link.cmf",
    "up.cmf",
    "dir.cmf",
    "junk.cmf",
    "trunc.cmf",
    "missing.cmf",
    "secret.cmf",
]
OTHER_VALID = ["extra.cmf", "dup.cmf", "none.cmf"]


# ----------------------------------------------------------------------------- the fixture


class _Fixture:
    """The directories above, and what every valid file in ``set/`` holds."""

    def __init__(self) -> None:
        from cmf.parallel import EncodeSettings, InlineExecutor, pack_tasks
        from cmf.plan.presets import resolve_recipe
        from cmf.shards import ShardedWriter

        self.root = os.path.join(scratch_dir(), "shards")
        self.dir = os.path.join(self.root, "set")
        os.makedirs(os.path.join(self.dir, "dir.cmf"), exist_ok=True)
        self.secret = os.path.join(self.root, "secret.cmf")
        marks = np.frombuffer(SECRET, np.uint8)
        cmf.save_file(
            {"secret": marks, "q": marks[:256].copy(), "embed.weight": marks[:64].copy()},
            self.secret,
            metadata={"secret": MARK.decode()},
            attachments={"secret.bin": SECRET},
        )

        r = np.random.default_rng(5)
        emb = r.standard_normal((8, 8)).astype(np.float32)
        tensors = {
            "embed.weight": emb,
            "embed.tied": emb.copy(),  # same shard: an alias
            "norm": r.standard_normal(8).astype(np.float16),
            "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
            "layer.0.w": r.standard_normal((8, 8)).astype(ml_dtypes.bfloat16),
            "mask": np.array([True, False, True, True]),
            "scalar": np.array(3.5, np.float32),
            "empty": np.zeros((0, 4), np.float32),
            "q": r.integers(-100, 100, 16).astype(np.int8),
            "lm_head.weight": emb.copy(),  # another shard: stored again
        }
        recipe, fallback = resolve_recipe("lossless")
        with ShardedWriter(
            os.path.join(self.dir, "model.cmf"), 400, metadata={"format": "pt", "name": "fuzz"}
        ) as sw:
            pack_tasks(
                sw, list(tensors.items()), EncodeSettings(recipe, 3, fallback), InlineExecutor()
            )
            sw.add_attachment("config.json", b'{"hidden_size": 8}')
        with open(os.path.join(self.dir, INDEX), "rb") as fh:
            self.index_bytes = fh.read()
        self.index = json.loads(self.index_bytes)
        self.shards: list[str] = list(self.index["shards"])
        if len(self.shards) < 2:
            raise RuntimeError(f"the fuzz set has {len(self.shards)} shard(s); expected several")

        cmf.save_file(
            {
                "extra.w": np.linspace(-2, 2, 6).reshape(2, 3),
                "extra.alias": np.linspace(-2, 2, 6).reshape(2, 3),
            },
            os.path.join(self.dir, "extra.cmf"),
            metadata={"note": "extra"},
            attachments={"extra.txt": b"extra attachment"},
        )
        first = next(iter(self.index["weight_map"]))
        cmf.save_file({first: np.arange(5, dtype=np.int32)}, os.path.join(self.dir, "dup.cmf"))
        cmf.save_file({}, os.path.join(self.dir, "none.cmf"))
        with open(os.path.join(self.dir, "junk.cmf"), "wb") as fh:
            fh.write(b"PK\x03\x04 this is not a cmf file\n" * 8)
        with open(os.path.join(self.dir, self.shards[0]), "rb") as fh:
            shard = fh.read()
        with open(os.path.join(self.dir, "trunc.cmf"), "wb") as fh:
            fh.write(shard[: len(shard) // 2])
        os.symlink(os.path.join("..", "secret.cmf"), os.path.join(self.dir, "link.cmf"))
        os.symlink("..", os.path.join(self.dir, "up.cmf"))
        os.remove(os.path.join(self.dir, INDEX))  # each input writes its own

        # what each valid file holds: {name: (dtype, shape, bytes)}, metadata, attachments
        self.contents: dict[str, dict] = {}
        for name in self.shards + OTHER_VALID:
            with cmf.open(os.path.join(self.dir, name)) as f:
                self.contents[name] = {
                    "tensors": {
                        t: (f.spec(t).dtype.numpy, f.spec(t).shape, f.get_tensor(t).tobytes())
                        for t in f.keys()
                    },
                    "metadata": f.metadata(),
                    "attachments": {a: f.get_attachment(a) for a in f.attachments()},
                }
        self.tensor_names = sorted(
            {t for c in self.contents.values() for t in c["tensors"]} | {"secret"}
        )
        self.index_path = os.path.join(self.dir, INDEX)  # where each input goes
        self.real_dir = os.path.realpath(self.dir)
        self.real_secret = os.path.realpath(self.secret)
        self.real_root = os.path.realpath(self.root)


_FIXTURE: _Fixture | None = None


def fixture() -> _Fixture:
    global _FIXTURE
    if _FIXTURE is None:
        _FIXTURE = _Fixture()
        _install_audit()
    return _FIXTURE


# ----------------------------------------------------------------------------- the open watch

_WATCH: list | None = None  # during a run: the paths opened outside set/
_HOOKED = False
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_APPEND", 0)

# The verdict on an open of an absolute path, by (path, O_NOFOLLOW): None (a symlink refused by
# the kernel, or a file of the set) or the resolved path (outside the set). os.path.realpath is
# an lstat per path component, ~20 us, 3 to 4 opens a run: a tenth of a run, for answers that
# only change when a symlink or a directory does. So the cache is dropped on anything that could
# change how a path resolves (renaming, removing or linking anything, mkdir, chdir; during a
# run, an open that writes or creates too), at any time, except the rename that puts each input
# in place as the index (a new regular file: it resolves as before); relative paths (they depend
# on the cwd) are not cached.
_VERDICTS: dict[tuple[str, bool], str | None] = {}
_RESOLVING_EVENTS = frozenset(
    {  # os.rename: rename, replace; os.remove: remove, unlink
        "os.rename",
        "os.remove",
        "os.rmdir",
        "os.mkdir",
        "os.symlink",
        "os.link",
        "os.chdir",
        "os.truncate",
        "shutil.move",
        "shutil.rmtree",
        "shutil.copytree",
        "shutil.copyfile",
        "shutil.unpack_archive",
    }
)


def _verdict(path: str, nofollow: bool, f: _Fixture) -> str | None:
    """What the checks below say about opening ``path``: None, or its resolved path when it is
    ``secret.cmf``, elsewhere under the fixture's root, or a ``*.cmf`` outside ``set/``."""
    if nofollow:
        parent = os.path.realpath(os.path.dirname(path) or ".")
        real = os.path.join(parent, os.path.basename(path))
        if os.path.islink(real):
            return None  # refused by the kernel (ELOOP): not a read
    else:
        real = os.path.realpath(path)
    inside = real.startswith(f.real_dir + os.sep)
    if real == f.real_secret or (
        not inside and (real.startswith(f.real_root + os.sep) or real.endswith(".cmf"))
    ):
        return real
    return None


def _audit(event: str, args: tuple) -> None:
    if event != "open":
        if event in _RESOLVING_EVENTS and _VERDICTS:
            try:
                ours = (
                    _WATCH is None
                    and event == "os.rename"
                    and _FIXTURE is not None
                    and args[1] == _FIXTURE.index_path
                )  # scratch_file's, outside a run
            except Exception:  # noqa: BLE001 - never break the audited call
                ours = False
            if not ours:
                _VERDICTS.clear()
        return
    if _WATCH is None:
        return
    try:
        path, flags = args[0], args[2]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return  # a file descriptor
        f = _FIXTURE
        assert f is not None
        nofollow = isinstance(flags, int) and flags >= 0 and bool(flags & _O_NOFOLLOW)
        if isinstance(flags, int) and flags >= 0 and flags & _O_WRITE:
            _VERDICTS.clear()  # a reader that creates files: be exact from here on
        if not os.path.isabs(path):
            real = _verdict(path, nofollow, f)
        else:
            key = (path, nofollow)
            try:
                real = _VERDICTS[key]
            except KeyError:
                real = _verdict(path, nofollow, f)
                if len(_VERDICTS) >= 4096:
                    _VERDICTS.clear()
                _VERDICTS[key] = real
        if real is not None:
            _WATCH.append(f"{path} -> {real}")
    except Exception as exc:  # noqa: BLE001 - never break the audited call
        _WATCH.append(f"audit hook failed on {args!r}: {exc}")


def _install_audit() -> None:
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # for the life of the process; idle unless _WATCH is set
        _HOOKED = True


# ----------------------------------------------------------------------------- the target


def _check_accepted(f: Any, data: bytes, fx: _Fixture) -> None:
    """The set the reader opened is exactly what the index says."""
    index = json.loads(data.decode("utf-8"))  # the reader accepted it: strict JSON
    shards, weight_map = index["shards"], index["weight_map"]
    if list(f.shard_names) != shards:
        raise Finding(f"opened shards {f.shard_names[:5]} but the index lists {shards[:5]}")
    if set(f.keys()) != set(weight_map):
        raise Finding(
            f"tensors {sorted(f.keys())[:8]} but the weight_map has {sorted(weight_map)[:8]}"
        )
    if any(s not in fx.contents for s in shards):
        raise Finding(
            f"opened a set with shards {shards[:5]}: not all are valid files of the set directory"
        )
    for name in f.keys():
        shard = weight_map[name]
        if f.shard_of(name) != shard:
            raise Finding(
                f"tensor {name!r} read from {f.shard_of(name)!r}, the weight_map says {shard!r}"
            )
        dtype, shape, raw = fx.contents[shard]["tensors"][name]
        spec = f.spec(name)
        a = f.get_tensor(name)
        if (
            not isinstance(a, np.ndarray)
            or a.dtype != dtype
            or a.shape != shape
            or spec.shape != shape
        ):
            raise Finding(
                f"tensor {name!r}: decoded "
                f"{getattr(a, 'dtype', '?')}{getattr(a, 'shape', '?')}, "
                f"index says {spec.describe()}, shard {shard!r} holds {dtype}{shape}"
            )
        if a.tobytes() != raw:
            raise Finding(f"tensor {name!r}: not the bytes of shard {shard!r}")
        if not a.flags.writeable:
            raise Finding(f"tensor {name!r}: get_tensor returned a read-only array")
    last = fx.contents[shards[-1]]
    meta = f.metadata()
    if meta != last["metadata"]:
        raise Finding(
            f"metadata {str(meta)[:200]} is not the last shard's {str(last['metadata'])[:200]}"
        )
    if list(f.attachments()) != list(last["attachments"]):
        raise Finding(
            f"attachments {f.attachments()} are not the last shard's {list(last['attachments'])}"
        )
    for name in f.attachments():
        blob = f.get_attachment(name)
        if blob != last["attachments"][name]:
            raise Finding(f"attachment {name!r}: not the bytes of the last shard")


def _no_secret(f: Any) -> None:
    for name in f.keys():
        if MARK in np.ascontiguousarray(f.get_tensor(name)).tobytes():
            raise Finding(f"tensor {name!r} holds bytes of a file outside the set's directory")
    if MARK.decode() in json.dumps(f.metadata(), default=str):
        raise Finding("the metadata comes from a file outside the set's directory")
    for name in f.attachments():
        if MARK in f.get_attachment(name):
            raise Finding(f"attachment {name!r} holds bytes of a file outside the set's directory")


def check_set(path: str, data: bytes, fx: _Fixture) -> None:
    """Open and read the set at ``path``, then validate it; raise the reader's CmfError (if
    any) after the checks, Finding on a broken invariant."""
    rejected: CmfError | None = None
    try:
        with cmf.open(path, limits=FUZZ_LIMITS) as f:
            _no_secret(f)
            _check_accepted(f, data, fx)
    except CmfError as exc:
        rejected = exc
    try:
        report = cmf.validate(path, limits=FUZZ_LIMITS)
    except CmfError as exc:
        raise Finding(f"validate raised {type(exc).__name__}: {exc}") from None
    if rejected is None and not report.valid:
        raise Finding(
            f"the reader accepts the set (every file valid) but validate reports "
            f"{report.errors[:3]}"
        )
    if rejected is not None and report.valid:
        raise Finding(f"the reader rejects ({rejected}) but validate reports the set valid")
    if rejected is not None:
        raise rejected


def run_shards(data: bytes) -> None:
    global _WATCH
    fx = fixture()
    path = scratch_file(data, INDEX, fx.dir)  # its rename keeps the open watch's cache
    _WATCH = []
    try:
        check_set(path, data, fx)
    finally:
        opened, _WATCH = _WATCH, None
        if opened:
            raise Finding(
                f"opened (or tried to open) a file outside the set's directory: {opened[:3]}"
            )


# ----------------------------------------------------------------------------- seeds


def _dump(obj: Any, indent: int | None = 2, ascii_only: bool = False) -> bytes:
    text = json.dumps(obj, indent=indent, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass") + b"\n"


def consistent(fx: _Fixture, shards: list) -> dict:
    """An index listing ``shards`` with the weight_map their contents need (first shard wins
    for a name in two)."""
    weight_map: dict[str, str] = {}
    for s in shards:
        for t in fx.contents.get(s, {}).get("tensors", {}) if isinstance(s, str) else ():
            weight_map.setdefault(t, s)
    return {
        "format": "cmf.shards",
        "version": 1,
        "metadata": {"total_size": 1},
        "shards": list(shards),
        "weight_map": weight_map,
    }


def _renamed(index: dict, old: str, new: Any) -> dict:
    index = json.loads(json.dumps(index))
    index["shards"] = [new if s == old else s for s in index["shards"]]
    index["weight_map"] = {k: new if v == old else v for k, v in index["weight_map"].items()}
    return index


def shard_seeds() -> list[bytes]:
    fx = fixture()
    s = fx.shards
    seeds = [fx.index_bytes, _dump(fx.index, None)]
    for shards in (
        s[:-1] + ["extra.cmf"],
        ["extra.cmf"],
        s + ["none.cmf"],
        [s[0], "dup.cmf"] + s[1:],
        list(reversed(s)),
    ):
        seeds.append(_dump(consistent(fx, shards)))
    for new in ("link.cmf", "../" + s[0], "/secret.cmf", "..\\" + s[0], "junk.cmf", "up.cmf"):
        seeds.append(_dump(_renamed(fx.index, s[0], new)))
    unknown = json.loads(fx.index_bytes)
    unknown["comment"] = {"by": "fuzz"}
    unknown["version"] = 2
    seeds.append(_dump(unknown, None, True))
    return seeds


# ----------------------------------------------------------------------------- the mutator


def _hostile_names(fx: _Fixture) -> list:
    s0 = fx.shards[0]
    return [
        "../secret.cmf",
        "/secret.cmf",
        "/tmp/secret.cmf",
        "/dev/shm/../secret.cmf",
        "..\\secret.cmf",
        "../set/" + s0,
        "./" + s0,
        "set/" + s0,
        "/etc/passwd.cmf",
        "C:secret.cmf",
        "c:\\secret.cmf",
        "\\\\server\\share\\x.cmf",
        "." + s0,
        ".cmf",
        "..cmf",
        "...cmf",
        "~/x.cmf",
        "%2e%2e%2fsecret.cmf",
        "\uff0e\uff0e\uff0fsecret.cmf",
        "..\u2215secret.cmf",
        s0 + "\x00",
        s0 + "/",
        s0 + " ",
        " " + s0,
        s0.upper(),
        s0.upper().replace(".CMF", ".cmf"),
        s0[:-4],
        s0 + ".json",
        "x" * 251 + ".cmf",
        "x" * 252 + ".cmf",
        "\u00e9" * 126 + ".cmf",
        "\u00e9" * 125 + ".cmf",
        "\ud800.cmf",
        "",
        "secret.cmf\u202e",
        INDEX,
        "model.cmf",
        "con.cmf",
        "a:b.cmf",
        "1:x.cmf",
        1,
        None,
        True,
        1.5,
        [],
        {},
        [s0],
    ]


def _name(fx: _Fixture, rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.3:
        return rng.choice(fx.shards)
    if r < 0.45:
        return rng.choice(OTHER_VALID)
    if r < 0.65:
        return rng.choice(HOSTILE_FILES)
    return rng.choice(_hostile_names(fx))


def _tensor_name(fx: _Fixture, rng: random.Random) -> str:
    if rng.random() < 0.75:
        return rng.choice(fx.tensor_names)
    return rng.choice(
        [
            "",
            "\x00",
            "a\x00b",
            "a" * 1024,
            "a" * 1025,
            "\u00e9" * 513,
            "\ud800",
            "../x",
            "embed.weight ",
            "EMBED.WEIGHT",
            "__metadata__",
            "\u00e9",
        ]
    )


_RAW = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "-0",
    "1.0",
    "1E0",
    "1e0",
    "0x1",
    "01",
    "+1",
    "1" * 5000,
    "-" + "9" * 30,
    "true",
    "false",
    "null",
    '"1"',
    "[1]",
    "{}",
    '"\\ud800.cmf"',
    '"\\udfff"',
    '"a\\u0000.cmf"',
    "[" * 70 + "]" * 70,
    "[" * 3000 + "]" * 3000,
    "{" + ",".join(f'"k{i}": {i}' for i in range(300)) + "}",
]


class _Doc:
    """A parsed index being edited; raw tokens and duplicate keys are spliced in at dump."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.raw: list[str] = []
        self.dups: list[str] = []

    def raw_token(self, text: str) -> str:
        self.raw.append(text)
        return f"\x00RAW{len(self.raw) - 1}\x00"

    def dup_key(self, key: str) -> str:
        self.dups.append(key)
        return f"\x00DUP{len(self.dups) - 1}\x00"

    def dump(self, rng: random.Random) -> bytes:
        ascii_only = rng.random() < 0.3
        text = json.dumps(self.obj, indent=rng.choice((None, 2, 0)), ensure_ascii=ascii_only)
        for i, raw in enumerate(self.raw):
            text = text.replace(json.dumps(f"\x00RAW{i}\x00"), raw)
        for i, key in enumerate(self.dups):
            text = text.replace(
                json.dumps(f"\x00DUP{i}\x00"), json.dumps(key, ensure_ascii=ascii_only)
            )
        return text.encode("utf-8", "surrogatepass")


def _escaped(name: str) -> str:
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else c for c in name) + '"'


def _edit_shards(doc: _Doc, fx: _Fixture, rng: random.Random) -> None:
    idx = doc.obj
    shards = idx.get("shards")
    if not isinstance(shards, list) or rng.random() < 0.05:
        n = rng.choice((2, 100, 3000))  # drawn first, as when the list below was built eagerly
        idx["shards"] = rng.choice(
            (
                lambda: list(fx.shards),
                list,
                lambda: None,
                lambda: "x.cmf",
                lambda: {"a": 1},
                lambda: [f"s{i}.cmf" for i in range(n)],
            )
        )()  # built if drawn
        return
    op = rng.randrange(9)
    if op == 0 and shards:  # rename consistently in shards and weight_map: gets past membership
        old = rng.choice(shards)
        new = _name(fx, rng)
        idx["shards"] = [new if s == old else s for s in shards]
        wm = idx.get("weight_map")
        if isinstance(wm, dict):
            idx["weight_map"] = {k: new if v == old else v for k, v in wm.items()}
    elif op == 1 and shards:
        shards[rng.randrange(len(shards))] = _name(fx, rng)
    elif op == 2:
        shards.insert(rng.randrange(len(shards) + 1), _name(fx, rng))
    elif op == 3 and shards:
        shards.pop(rng.randrange(len(shards)))
    elif op == 4 and shards:
        shards.insert(rng.randrange(len(shards) + 1), rng.choice(shards))
    elif op == 5:
        rng.shuffle(shards)
    elif op == 6 and shards:  # a name written with \u escapes: checked after decoding?
        i = rng.randrange(len(shards))
        name = rng.choice([shards[i], "../secret.cmf", "..\\secret.cmf", "link.cmf", "/secret.cmf"])
        if isinstance(name, str):
            shards[i] = doc.raw_token(_escaped(name))
    elif op == 7 and shards:
        shards[rng.randrange(len(shards))] = doc.raw_token(rng.choice(_RAW))
    else:
        shards.append(_name(fx, rng))


def _edit_weight_map(doc: _Doc, fx: _Fixture, rng: random.Random) -> None:
    idx = doc.obj
    wm = idx.get("weight_map")
    if not isinstance(wm, dict) or rng.random() < 0.05:
        idx["weight_map"] = rng.choice(
            (
                lambda: dict(fx.index["weight_map"]),
                dict,
                list,
                lambda: None,
                lambda: "x",
                lambda: {f"t{i}": fx.shards[0] for i in range(2000)},
            )
        )()
        return
    shards = idx.get("shards") if isinstance(idx.get("shards"), list) else fx.shards
    op = rng.randrange(7)
    if op == 0 and wm:  # move a tensor
        wm[rng.choice(list(wm))] = (
            rng.choice(shards) if shards and rng.random() < 0.6 else _name(fx, rng)
        )
    elif op == 1 and wm:
        del wm[rng.choice(list(wm))]
    elif op == 2:
        wm[_tensor_name(fx, rng)] = (
            rng.choice(shards) if shards and rng.random() < 0.8 else _name(fx, rng)
        )
    elif op == 3 and wm:  # rename a tensor
        k = rng.choice(list(wm))
        wm[_tensor_name(fx, rng)] = wm.pop(k)
    elif op == 4 and wm:  # a duplicate key, possibly mapping elsewhere
        k = rng.choice(list(wm))
        wm[doc.dup_key(k)] = rng.choice(shards) if shards else k
    elif op == 5 and wm:
        wm[rng.choice(list(wm))] = doc.raw_token(rng.choice(_RAW))
    else:
        new = list(wm.items())
        rng.shuffle(new)
        idx["weight_map"] = dict(new)


def _edit_top(doc: _Doc, fx: _Fixture, rng: random.Random) -> None:
    idx = doc.obj
    op = rng.randrange(8)
    if op == 0:
        idx["format"] = rng.choice(
            [
                "cmf.shards",
                "CMF.shards",
                "cmf.shards\x00",
                "cmf.shards ",
                "",
                "safetensors",
                None,
                1,
                ["cmf.shards"],
                "cmf.shards\u200b",
            ]
        )
    elif op == 1:
        idx["version"] = rng.choice(
            [1, 0, 2, -1, True, False, 1.0, "1", None, [1], 2**64, rng.choice(INTERESTING)]
        )
    elif op == 2:
        idx["version"] = doc.raw_token(
            rng.choice(["1.0", "1e0", "-0", "1" * 5000, "NaN", "01", "1E400"])
        )
    elif op == 3:
        idx["metadata"] = rng.choice(
            [
                {},
                None,
                [],
                "x",
                {"total_size": -1},
                {"total_size": 2**70},
                {"total_size": doc.raw_token("NaN")},
                {"nested": doc.raw_token("[" * 70 + "]" * 70)},
                {"a": "\x00", "b": "\ud800"},
                {"format": "other"},
            ]
        )
    elif op == 4:  # an unknown top-level key, or one missing
        if rng.random() < 0.5 and idx:
            del idx[rng.choice(list(idx))]
        else:
            key = rng.choice(
                ["comment", "Format", "shards ", "__proto__", "weight_map\x00", "\ud800"]
            )
            idx[key] = rng.choice([1, "x", {}, [], None])
    elif op == 5 and idx:  # a duplicate top-level key
        k = rng.choice(list(idx))
        idx[doc.dup_key(k)] = rng.choice([idx[k], 2, "cmf.shards", [], {}, ["link.cmf"]])
    elif op == 6:
        idx[rng.choice(list(idx) or ["x"])] = doc.raw_token(rng.choice(_RAW))
    else:  # a set rebuilt consistently from any of the directory's files
        pool = fx.shards + OTHER_VALID + (HOSTILE_FILES if rng.random() < 0.3 else [])
        k = rng.randint(1, min(5, len(pool)))
        doc.obj = consistent(fx, rng.sample(pool, k))


def _edit_text(data: bytes, rng: random.Random) -> bytes:
    op = rng.randrange(6)
    if op == 0:
        return "\ufeff".encode() + data
    if op == 1:
        return data + rng.choice([b"x", b"{}", b"\x00", b"]", b" \n\t", b"\xff"])
    if op == 2 and data:
        return data[: rng.randrange(len(data))]
    if op == 3 and data:  # a byte that is not UTF-8 inside the text
        at = rng.randrange(len(data))
        return data[:at] + rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"]) + data[at:]
    if op == 4:
        return data.replace(b'"', b"'", 1)
    return byte_mutate(data, rng)


def mutate_index(data: bytes, rng: random.Random) -> bytes:
    """The structure-aware mutator (see module docstring); byte mutations for an input that is
    not a JSON object."""
    fx = fixture()
    try:
        obj = json.loads(data.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        if rng.random() < 0.1:  # back to a sane index now and then
            return _dump(consistent(fx, list(fx.shards)))
        return byte_mutate(data, rng)
    doc = _Doc(obj)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        r = rng.random()
        if r < 0.4:
            _edit_shards(doc, fx, rng)
        elif r < 0.7:
            _edit_weight_map(doc, fx, rng)
        else:
            _edit_top(doc, fx, rng)
    try:
        out = doc.dump(rng)
    except (ValueError, TypeError, RecursionError):
        return byte_mutate(data, rng)
    if rng.random() < 0.08:
        out = _edit_text(out, rng)
    return out


TARGETS = {
    "shards": Target("shards", run_shards, shard_seeds, mutate=mutate_index),
}

if __name__ == "__main__":
    sys.exit(main(TARGETS))
