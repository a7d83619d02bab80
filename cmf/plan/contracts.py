"""The planner's contracts: the options it takes (``PlanOptions``, the presets' targets, the
size-target syntax) and the result it gives (``PlanResult``, one ``TensorPlan`` per planned
tensor). cmf.plan.planner and cmf.plan.rounds both work on these; neither imports the other
for them."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

from ..errors import UsageError
from ..pipeline import Pending, decode_pending
from ..sizes import UNITS as SIZE_UNITS
from ..sizes import size_bytes, split_size
from .candidates import Curve, Point
from .lazy import LazyMapping

PLANNED_PRESETS: dict[str, dict[str, float]] = {
    # 1 - mean cosine on the calibration inputs, with a margin for other inputs (on MiniLM the
    # error on 300 held-out sentences came out 7-11 % above the calibration error)
    # kl: causal LMs, mean KL of next-token distributions (nats) on the calibration tokens
    "balanced": {
        "error": 8e-4,
        "kl": 0.01,
        "data_free": 10**-3.4,
    },  # cosine >= 0.999; weights ~34 dB SQNR
    # small: with error-feedback (GPTQ) codes the held-out error came out 19 % above the prediction
    "small": {
        "error": 7.8e-3,
        "kl": 0.05,
        "data_free": 10**-2.4,
    },  # cosine >= 0.99; weights ~24 dB SQNR
}
DEFAULT_ROUNDS = 4
INDEX_BYTES_PER_TENSOR = 400  # estimate of a tensor's share of the index (names, trees, crcs)
ATTACHMENT_LEVEL = 19  # zstd level of what the plan does not choose (a few hundred KB at most)
META_PLAN = "cmf.plan"
META_TENSORS = "cmf.plan.tensors"

Progress = Callable[[str, int, int], None]  # (stage, done, total)


# ----------------------------------------------------------------------------- options


def parse_target_size(text: str | int | float) -> tuple[str, float]:
    """``("bpp", x)`` for "4.0bpp" or ``("bytes", n)`` for "12MB", "500KiB", "1e7"."""
    if isinstance(text, bool):
        raise UsageError(f"target size: expected e.g. 4.0bpp or 12MB, found {text!r}")
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text <= 0:
            raise UsageError(f"target size must be positive, found {text!r}")
        return "bytes", float(text)
    try:
        value, unit = split_size(text)  # sizes and their units: cmf.sizes, the one parser
    except UsageError:
        raise UsageError(f"target size: expected e.g. 4.0bpp or 12MB, found {text!r}") from None
    if value <= 0 or not math.isfinite(value):
        raise UsageError(f"target size must be positive, found {text!r}")
    if unit in ("bpp", "bpw", "bits"):
        if value > 64:
            raise UsageError(f"target size {text!r}: more than 64 bits per parameter")
        return "bpp", value
    if unit not in SIZE_UNITS:
        raise UsageError(
            f"target size {text!r}: unknown unit {unit!r} (bpp, B, KB, MB, GB, KiB, MiB, GiB)"
        )
    return "bytes", size_bytes(text, "target size")


AUTO_JOBS = 0  # PlanOptions.jobs: as many worker processes as pay off (resolved_jobs)
AUTO_JOBS_ELEMENTS = 4 << 20  # planned elements from which measuring in workers pays off


def resolved_jobs(jobs: int, planned_elements: int) -> int:
    """``jobs``, or for AUTO_JOBS one worker per usable CPU when the planned tensors hold at
    least ``AUTO_JOBS_ELEMENTS`` elements (their curves take longer than starting workers),
    else 1."""
    from ..parallel import auto_jobs

    return auto_jobs(planned_elements, AUTO_JOBS_ELEMENTS) if jobs == AUTO_JOBS else jobs


@dataclass
class PlanOptions:
    preset: str | None = None
    target_error: float | None = None
    target_size: str | int | float | None = None
    calibrate: Any = None  # path (.txt, .npz, .npy) or list of texts / input dicts
    token_prior: str | None = (
        "en,world"  # languages of the token-embedding rows' frequency prior; None: off
    )
    data_free: bool = False
    level: int = 3
    rounds: int = DEFAULT_ROUNDS
    thorough: bool = False  # more candidate families (fixed-rate grid, bigger codebooks, low
    # rank), and the templates also where the step choices have error feedback
    steps_per_bit: int = 4  # step choices per bit of rate (fewer: faster, coarser curves)
    templates: bool = True  # also fixed-rate quantize and codebook candidates
    progress: Progress | None = None
    jobs: int = 1  # worker processes measuring the candidates (the same curves, plan and file);
    # AUTO_JOBS: one per usable CPU when the planned tensors are big enough (cmf.parallel.auto_jobs)
    executor: str = "process"  # or "dask": the candidates measured on a dask.distributed cluster
    scheduler: Any = None  # the dask scheduler address (or a distributed.Client)
    gguf: bool = False  # candidates are GGML types; sizes count the GGUF (cmf.plan.ggml_candidates)

    def check(self) -> None:
        """UsageError for options that cannot go together or are out of range."""
        given = [
            k
            for k, v in (
                ("preset", self.preset),
                ("target_error", self.target_error),
                ("target_size", self.target_size),
            )
            if v is not None
        ]
        if len(given) != 1:
            raise UsageError(
                "give one of a planning preset (balanced, small), a target error or a "
                f"target size; found {', '.join(given) or 'none'}"
            )
        if self.preset is not None and self.preset not in PLANNED_PRESETS:
            raise UsageError(
                f"unknown planning preset {self.preset!r}; choose one of "
                f"{', '.join(PLANNED_PRESETS)}"
            )
        if self.target_error is not None:
            e = self.target_error
            if (
                isinstance(e, bool)
                or not isinstance(e, (int, float))
                or not math.isfinite(e)
                or not 0 < e < 1
            ):
                raise UsageError(f"target error must be a number in (0, 1), found {e!r}")
        if self.target_size is not None:
            parse_target_size(self.target_size)
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise UsageError(f"rounds must be a positive integer, found {self.rounds!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < AUTO_JOBS:
            raise UsageError(
                f"jobs must be a positive integer or {AUTO_JOBS} (auto), found {self.jobs!r}"
            )
        if self.executor not in ("process", "dask"):
            raise UsageError(f"unknown executor {self.executor!r}; choose 'process' or 'dask'")
        if self.executor == "dask" and self.scheduler is None:
            raise UsageError("the dask executor needs a scheduler address")


# ----------------------------------------------------------------------------- the plan


@dataclass
class TensorPlan:
    name: str
    curve: Curve
    sensitivity: float
    point: Point | None = None
    pending: Pending | None = None


class PlanTarget(TypedDict, total=False):
    """What a plan aims at, as stored in the plan's metadata (spec/planner.md): one of ``error``
    (an output-error bound), ``bytes`` or ``bits_per_parameter`` (a size target); the rounds add
    ``file_bytes`` (the whole-file byte goal of a size target) and ``--gguf`` adds ``gguf``."""

    error: float
    bytes: int
    bits_per_parameter: float
    file_bytes: int
    gguf: bool


@dataclass
class PlanResult:
    """What the planner did (``summary()`` is the JSON the CLI prints and the file stores)."""

    kind: str  # encoder, decoder, onnx, or data-free
    metric: str
    target: PlanTarget
    preset: str | None
    parameters: int
    tensors: dict[str, TensorPlan]
    predicted_error: float = 0.0
    measured_error: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    file_error: float | None = None
    file_bytes: int = 0
    rounds: list[dict] = field(default_factory=list)
    copies: dict[str, list[str]] = field(
        default_factory=dict
    )  # planned name -> its identical tensors
    seconds: dict[str, float] = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    target_met: bool = True
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # fallbacks: what the plan could not use
    files: list[str] = field(
        default_factory=list
    )  # written: the file, or the shards then the shard index
    moments: Mapping = field(
        default_factory=dict, repr=False
    )  # the harness's input moments (not stored)
    output: dict = field(
        default_factory=dict
    )  # decoders: KL, top-1 agreement, perplexity of the chosen plan
    feedback: Any = field(
        default=None, repr=False
    )  # cmf.plan.feedback.FeedbackFiles: the error-feedback factors the rounds read (not stored)

    @property
    def path(self) -> str | None:
        """What to open: the written file, or the shard index of a sharded set."""
        return self.files[-1] if self.files else None

    @property
    def bits_per_parameter(self) -> float:
        return self.file_bytes * 8 / self.parameters if self.parameters else 0.0

    def summary(self, timings: bool = True) -> dict:
        """The plan as JSON; ``timings=False`` leaves out ``seconds`` (what the file stores, so
        that planning the same model twice, with any ``jobs``, writes the same bytes)."""
        out = {
            "version": 1,
            "kind": self.kind,
            "metric": self.metric,
            "preset": self.preset,
            "target": self.target,
            "target_met": self.target_met,
            "predicted_error": self.predicted_error,
            "measured_error": self.measured_error,
            "cosine_mean": self.cosine_mean,
            "cosine_min": self.cosine_min,
            **({"output": self.output} if self.output else {}),
            "parameters": self.parameters,
            "planned_tensors": len(self.tensors),
            "rounds": self.rounds,
            "calibration": self.calibration,
        }
        if timings:
            out["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        if self.notes:
            out["notes"] = list(self.notes)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def decoded(self) -> Mapping[str, np.ndarray]:
        """Every encoded planned tensor (and its copies) as the file will decode it: a mapping
        that decodes a tensor's pending tree each time it is asked for and keeps nothing, so a
        harness that runs one block at a time holds one block of decoded weights."""
        plans = {
            n: tp
            for name, tp in self.tensors.items()
            if tp.pending is not None
            for n in [name, *self.copies.get(name, ())]
        }
        out = LazyMapping(plans, lambda n: np.asarray(decode_pending(plans[n].pending)))
        if self.target.get("gguf"):  # each one's GGML type, for the harness's llama.cpp rounding
            out.ggml_types = {
                n: t
                for n, tp in plans.items()
                if tp.point is not None and (t := tp.point.choice.params.get("type"))
            }
        return out

    def tensor_table(self) -> dict[str, dict]:
        table = {}
        for name, tp in self.tensors.items():
            if tp.point is None:
                continue
            table[name] = {
                "choice": tp.point.choice.label,
                "bits": round(tp.point.bytes * 8 / max(tp.curve.numel, 1), 4),
                "bytes": int(tp.point.bytes),
                "error": float(tp.point.error),
                "sensitivity": float(tp.sensitivity),
                "predicted": float(tp.sensitivity * tp.point.error),
                "hull": [[int(p.bytes), float(p.error)] for p in tp.curve.hull],
            }
        return table
