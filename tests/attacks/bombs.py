"""Memory bombs, measured in a fresh process: ``python -m tests.attacks.bombs NAME DIR``.

Prints one JSON line: the error (type and message), the tracemalloc peak of the attempt, and
peak RSS (VmHWM) before and after. The address space is capped (RLIMIT_AS) a little above what the
process uses, so a regression shows up as a MemoryError instead of a swapping machine.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from . import craft as c

TIB = 1 << 40
GIB = 1 << 30


def _zstd_tensor(shape: list[int], declared: int, dtype: str = "u8") -> bytes:
    frame = c.zstd_frame(rle=(0, 1000), declared=declared)
    return c.assemble([frame], {"tensors": [c.tensor("t", dtype, shape, c.raw(c.zstd(c.leaf(0))))]})


def _index(blob: bytes) -> bytes:
    return c.assemble([], blob)


# name -> (builder, limits kwargs, expected message substring)
BOMBS: dict[str, tuple[Callable[[], bytes], dict[str, Any], str]] = {
    "zstd-1tib-frame-small-tensor": (
        lambda: _zstd_tensor([16], TIB),
        {},
        "frame declares 1099511627776",
    ),
    "zstd-1tib-frame-1tib-tensor": (lambda: _zstd_tensor([TIB], TIB), {}, "memory budget"),
    "zstd-16gib-frame-16gib-tensor": (
        lambda: _zstd_tensor([16 * GIB], 16 * GIB),
        {},
        "cannot hold",
    ),
    "zstd-1tib-frame-budget-raised": (
        lambda: _zstd_tensor([TIB], TIB),
        {"max_tensor_bytes": 2 * TIB},
        "cannot hold",
    ),
    "zstd-1gib-attachment": (
        lambda: c.assemble(
            [c.zstd_frame(rle=(32, 1000), declared=GIB)],
            {"tensors": [], "attachments": [c.attachment("a", GIB, c.zstd(c.leaf(0)))]},
        ),
        {},
        "cannot hold",
    ),
    "zstd-1tib-byteplanes": (
        lambda: c.assemble(
            [c.zstd_frame(rle=(0, 1000), declared=TIB)] * 2,
            {
                "tensors": [
                    c.tensor(
                        "t", "f16", [TIB], c.byteplanes([c.zstd(c.leaf(0)), c.zstd(c.leaf(1))])
                    )
                ]
            },
        ),
        {},
        "memory budget",
    ),
    "zstd-no-content-size": (
        lambda: c.assemble(
            [c.zstd_frame(rle=(0, 1 << 17), declared=None)],
            {"tensors": [c.tensor("t", "u8", [1 << 17], c.raw(c.zstd(c.leaf(0))))]},
        ),
        {},
        "does not declare",
    ),
    "zstd-trailing-garbage": (
        lambda: c.assemble(
            [c.zstd_frame(rle=(0, 1000)) + b"\xff" * 64],
            {"tensors": [c.tensor("t", "u8", [1000], c.raw(c.zstd(c.leaf(0))))]},
        ),
        {},
        "zstd: corrupt frame",
    ),
    "zstd-two-frames": (
        lambda: c.assemble(
            [c.zstd_frame(rle=(0, 1000)) * 2],
            {"tensors": [c.tensor("t", "u8", [1000], c.raw(c.zstd(c.leaf(0))))]},
        ),
        {},
        "zstd: corrupt frame",
    ),
    "raw-1tib-shape-tiny-segment": (
        lambda: c.assemble(
            [b"\x00" * 16], {"tensors": [c.tensor("t", "f32", [1 << 38], c.raw(c.leaf(0)))]}
        ),
        {},
        "holds 16 bytes",
    ),
    "msgpack-nest-arrays-100k": (lambda: _index(b"\x91" * 100_000 + b"\xc0"), {}, "nests deeper"),
    "msgpack-nest-maps-100k": (
        lambda: _index(b"\x81\xa1k" * 100_000 + b"\xc0"),
        {},
        "nests deeper",
    ),
    "msgpack-array32-4g-items": (
        lambda: _index(b"\xdd\xff\xff\xff\xff" + b"\xc0" * 16),
        {},
        "max_array_len",
    ),
    "msgpack-map32-4g-pairs": (
        lambda: _index(b"\xdf\xff\xff\xff\xff" + b"\xc0" * 16),
        {},
        "max_map_len",
    ),
    "msgpack-str32-4gib": (lambda: _index(b"\xdb\xff\xff\xff\xff" + b"x" * 16), {}, "msgpack"),
    "msgpack-bin32-4gib": (lambda: _index(b"\xc6\xff\xff\xff\xff" + b"x" * 16), {}, "msgpack"),
    "msgpack-ext32-4gib": (lambda: _index(b"\xc9\xff\xff\xff\xff\x01" + b"x" * 16), {}, "msgpack"),
    "msgpack-nested-array32-in-segments": (
        lambda: _index(c.mp({"segments": [c.RawMP(b"\xdd\xff\xff\xff\xff")], "tensors": []})),
        {},
        "max_array_len",
    ),
    "trailer-index-length-2^64-1": (
        lambda: c.assemble([], {"tensors": []}, index_length=(1 << 64) - 1),
        {},
        "outside [1,",
    ),
}

# A legitimate file that does allocate (80 MiB of zeros from a 2.5 KiB frame): proves the
# measurement sees zstd's and numpy's allocations.
CONTROL = "control-80mib-legit"
BOMBS_AND_CONTROL = {
    **BOMBS,
    CONTROL: (
        lambda: c.assemble(
            [c.zstd_frame(rle=(0, 80 << 20))],
            {"tensors": [c.tensor("t", "u8", [80 << 20], c.raw(c.zstd(c.leaf(0))))]},
        ),
        {},
        "",
    ),
}


def _vm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize")


def _peak_rss() -> int:
    """This process's peak resident set in bytes: VmHWM from /proc (ru_maxrss is inherited
    from the parent across fork + exec on Linux, so a big pytest parent would hide growth)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(name: str, directory: str) -> None:
    import resource
    import tracemalloc

    import cmf

    from .common import read_all

    build, limits_kw, _ = BOMBS_AND_CONTROL[name]
    path = os.path.join(directory, f"{name}.cmf")
    with open(path, "wb") as fh:
        fh.write(build())
    try:  # 1 GiB of headroom over what the process maps now: far less than any bomb asks for
        cap = _vm_bytes() + GIB
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (OSError, ValueError):
        cap = None
    limits = cmf.Limits(**limits_kw)
    rss_before = _peak_rss()
    tracemalloc.start()
    try:
        read_all(path, limits)
        error, message, is_cmf = None, "", False
    except BaseException as exc:  # noqa: BLE001 - report whatever it is
        error, message, is_cmf = type(exc).__name__, str(exc), isinstance(exc, cmf.CmfError)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_after = _peak_rss()
    print(
        json.dumps(
            {
                "name": name,
                "file_bytes": os.path.getsize(path),
                "error": error,
                "message": message,
                "is_cmf_error": is_cmf,
                "tracemalloc_peak": peak,
                "rss_before": rss_before,
                "rss_after": rss_after,
                "as_cap": cap,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
