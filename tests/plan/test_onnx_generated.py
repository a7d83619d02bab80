"""Planning ONNX models on generated inputs: inputs that fit graphs whose open dims only some sizes
fit (the planner never fails on a model onnxruntime runs), the warning that the inputs were
generated, and the data-free floor that keeps every tensor — tighter one that feeds an output —
from a large error that inputs which do not excite it would allow."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from cmf.plan.harness import open_harness
from cmf.plan.planner import GENERATED_OUTPUT_FACTOR, PLANNED_PRESETS, PlanOptions, plan_and_write

from ..runtime import helpers
from ..runtime.open_dims import chunked_onnx, fpn_onnx, saturated_classifier_onnx
from .conftest import FAST

cli = helpers.cli

pytest.importorskip("onnxruntime")
GENERATED = {**FAST, "calibrate": None}


def _save(tmp_path, model, name):
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return path


def test_conv_net_with_open_height_and_width_packs(tmp_path, cli):
    path = _save(tmp_path, fpn_onnx(), "fpn.onnx")
    h = open_harness(path)
    assert h.generated and h.samples == 8
    shape = h.feeds[0]["x"].shape
    assert shape[:2] == (1, 3) and shape[2] % 32 == 0 and shape[3] % 32 == 0
    assert not np.array_equal(h.feeds[0]["x"], h.feeds[1]["x"])
    out = tmp_path / "fpn.cmf"
    r = cli("pack", path, "-o", out, "--preset", "small", "--json")
    assert r.code == 0, r.err
    assert "cmf: warning: calibrated on generated inputs" in r.err
    plan = json.loads(r.out)["plan"]
    assert plan["kind"] == "onnx" and plan["target_met"] and plan["measured_error"] <= 7.8e-3
    assert plan["planned_tensors"] == 4  # c1..c4 (32 x 32 x 3 x 3)
    assert any("generated inputs" in w for w in plan["warnings"])
    rep = cli("report", out)
    assert rep.code == 0 and "generated inputs" in rep.out + rep.err


def test_symbolic_sequence_dim_plans(tmp_path):
    path = _save(tmp_path, chunked_onnx(vocab=128, dim=64), "chunked.onnx")
    h = open_harness(path)
    assert {f["ids"].shape for f in h.feeds} == {(1, 32)} and max(
        f["ids"].max() for f in h.feeds
    ) < 128
    r = plan_and_write(path, tmp_path / "c.cmf", PlanOptions(preset="balanced", **GENERATED))
    assert r.kind == "onnx" and "table" in r.tensors and r.file_error <= 8e-4


def _rel(r, name):
    tp = r.tensors[name]
    return tp.point.plain / tp.curve.plain_energy


@pytest.mark.parametrize("preset", ["balanced", "small"])
def test_floor_keeps_an_unexcited_output_layer(tmp_path, preset):
    path = _save(tmp_path, saturated_classifier_onnx(), "sat.onnx")
    base = PLANNED_PRESETS[preset]["data_free"]
    gen = plan_and_write(path, tmp_path / "g.cmf", PlanOptions(preset=preset, **GENERATED))
    assert 0 < gen.tensors["head"].sensitivity < 1e-6  # barely excited (not unexercised: s > 0)
    assert (
        _rel(gen, "head") <= base * GENERATED_OUTPUT_FACTOR
    )  # it feeds the output: the tighter bound
    assert _rel(gen, "w1") <= base
    assert any("generated inputs" in n and "head (feeding an output)" in n for n in gen.notes)
    npz = tmp_path / "inputs.npz"  # the same kind of inputs, given: trusted, no floor of this kind
    np.savez(npz, x=np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32))
    real = plan_and_write(
        path, tmp_path / "r.cmf", PlanOptions(preset=preset, **{**FAST, "calibrate": str(npz)})
    )
    assert _rel(real, "head") > 10 * base  # what the measured sensitivity alone allows
    assert not any("generated inputs" in n for n in real.notes)


def test_floor_gives_way_to_a_size_target(tmp_path):
    path = _save(tmp_path, saturated_classifier_onnx(), "sat.onnx")
    small = PLANNED_PRESETS["small"]["data_free"]
    r = plan_and_write(path, tmp_path / "s.cmf", PlanOptions(target_size="6bpp", **GENERATED))
    assert r.target_met and r.bits_per_parameter <= 6
    assert any("loosened to fit the size target" in n for n in r.notes)
    assert _rel(r, "head") <= 16 * small * GENERATED_OUTPUT_FACTOR
    r = plan_and_write(path, tmp_path / "s.cmf", PlanOptions(target_size="3.5bpp", **GENERATED))
    assert r.target_met and r.bits_per_parameter <= 3.5
    assert any("does not fit the size target and was not applied" in n for n in r.notes)


def _rapidocr_model(kind: str):
    """A PP-OCR model the ``rapidocr`` wheel ships (installed, or unpacked under
    $CMF_RAPIDOCR_MODELS); skip when there is none."""
    import glob
    import importlib.util
    import os

    dirs = [os.environ.get("CMF_RAPIDOCR_MODELS", "")]
    spec = importlib.util.find_spec("rapidocr")
    if spec is not None and spec.origin:
        dirs.append(os.path.join(os.path.dirname(spec.origin), "models"))
    found = sorted(p for d in dirs if d for p in glob.glob(os.path.join(d, f"*{kind}*.onnx")))
    if not found:
        pytest.skip(f"no rapidocr {kind} model (pip install rapidocr, or set CMF_RAPIDOCR_MODELS)")
    return found[-1]


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("kind", ["det", "rec"])
def test_rapidocr_models_plan_on_generated_inputs(tmp_path, cli, kind):
    """The issue's models: a detector with open height and width (failed with a shape mismatch
    on 1 x 8 x 8 inputs) and a text-line recognizer whose 18,710-class output layer measured as
    insensitive on noise."""
    out = tmp_path / f"{kind}.cmf"
    r = cli("pack", _rapidocr_model(kind), "-o", out, "--preset", "small", "--json")
    assert r.code == 0, r.err
    plan = json.loads(r.out)["plan"]
    assert plan["target_met"] and "cmf: warning: calibrated on generated inputs" in r.err
    assert any("held at relative weight error" in n for n in plan["notes"])
