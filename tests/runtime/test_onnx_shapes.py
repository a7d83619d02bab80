"""Generated inputs that fit the graph (cmf.runtime.onnx_runner): open dims resolved to sizes the
model runs on — image sizes a stride-32 network accepts, sequence lengths tried in turn —
checked by running the model, deterministic per seed; token ids inside the table they index."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from cmf.errors import CmfError
from cmf.runtime import load_runner
from cmf.runtime import onnx_runner as R
from cmf.runtime.onnx_runner import InputSpec, candidate_shapes

from .open_dims import chunked_onnx, fpn_onnx, saturated_classifier_onnx, stateful_onnx

ort = pytest.importorskip("onnxruntime")


def _save(tmp_path, model, name):
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return path


def test_image_input_gets_a_size_its_strides_accept(tmp_path):
    runner = load_runner(_save(tmp_path, fpn_onnx(), "fpn.onnx"))
    with pytest.raises(CmfError, match="failed to run"):  # the old sizes (1, 3, 8, 8) do not fit
        runner.run({"x": np.zeros((1, 3, 8, 8), np.float32)})
    shapes = runner.fitting_shapes()
    n, c, h, w = shapes["x"]
    assert (n, c) == (1, 3) and h % 32 == 0 and w % 32 == 0 and h >= 64
    a, b = runner.sample_inputs(0), runner.sample_inputs(1)
    assert a["x"].shape == shapes["x"] and a["x"].dtype == np.float32
    assert -1.0 <= a["x"].min() < a["x"].max() <= 1.0  # a picture in [-1, 1], not white noise
    assert np.array_equal(runner.sample_inputs(0)["x"], a["x"]) and not np.array_equal(
        a["x"], b["x"]
    )
    out = runner.run(b)["prob"]
    assert out.shape == (1, 1, h // 2, w // 2) and np.isfinite(out).all()


def test_sequence_length_tried_until_the_model_runs(tmp_path):
    runner = load_runner(_save(tmp_path, chunked_onnx(vocab=100), "chunked.onnx"))
    assert runner.fitting_shapes() == {"ids": (1, 32)}  # 16 does not fit chunks of 32; 32 does
    feeds = runner.sample_inputs(3)
    assert feeds["ids"].shape == (1, 32) and feeds["ids"].dtype == np.int64
    assert (
        feeds["ids"].min() >= 0 and feeds["ids"].max() < 100 and feeds["ids"].max() >= 10
    )  # via the Cast
    assert runner.run(feeds)["out"].shape == (1, 64)


def test_state_batch_and_compared_switch(tmp_path):
    runner = load_runner(_save(tmp_path, stateful_onnx(), "stateful.onnx"))
    assert runner.fitting_shapes() == {"x": (1, 128), "state": (2, 1, 8), "mode": ()}
    feeds = runner.sample_inputs(0)
    assert feeds["mode"].dtype == np.int64 and int(feeds["mode"]) == 7  # the value the graph tests
    out = runner.run(feeds)["out"]
    assert out.shape == (1, 9) and np.abs(out).sum() > 0  # the Equal branch taken: not all zeros


def test_candidates_share_symbolic_dims_and_keep_fixed_ones():
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    line = [InputSpec("x", f32, ("b", 3, 48, "w"))]
    got = candidate_shapes(line)
    assert got[0] == {"x": (1, 3, 48, 320)}  # a text line: wide first
    assert all(s["x"][:3] == (1, 3, 48) for s in got) and got[-1] == {
        "x": (1, 3, 48, 8)
    }  # old sizes last
    nhwc = candidate_shapes([InputSpec("img", f32, (None, None, None, 3))])
    assert nhwc[0] == {"img": (1, 224, 224, 3)}
    pair = candidate_shapes(
        [InputSpec("ids", i64, ("batch", "seq")), InputSpec("mask", i64, ("batch", "seq"))]
    )
    assert pair[0] == {"ids": (1, 16), "mask": (1, 16)}
    assert all(s["ids"] == s["mask"] for s in pair) and len({s["ids"] for s in pair}) == len(pair)
    assert candidate_shapes([InputSpec("x", f32, (2, 5))]) == [{"x": (2, 5)}]


def test_no_fitting_shape_is_one_cmf_error(tmp_path, monkeypatch):
    runner = load_runner(_save(tmp_path, chunked_onnx(), "chunked.onnx"))
    monkeypatch.setattr(R, "LENGTHS", (16, 8))
    runner._shapes = None
    tried = r"no generated inputs fit the model \(tried ids \[1, 16\]; ids \[1, 8\]\)"
    with pytest.raises(CmfError, match=tried):
        runner.sample_inputs(0)


def test_output_weights_found_through_bias_and_softmax():
    model = saturated_classifier_onnx()
    assert R.output_weights(model, ["w1", "head", "bias"]) == {"head", "bias"}
    assert R.output_weights(fpn_onnx(), [f"c{i}.w" for i in range(5)] + ["head.w"]) == {"head.w"}
