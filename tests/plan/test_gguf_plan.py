"""``cmf pack --gguf`` (issue 20): GGML-type candidates (F16, BF16 and the block types with
llama.cpp's fallbacks), a size target that counts the GGUF, the GGUF written from the plan holding
exactly the planned blocks (gguf-py and transformers' GGUF loader read it), F16 choices stored as
f16 and written as F16, the candidates measured in worker processes with --jobs, ``cmf report``'s
columns beside llama.cpp's recipes, and the refusals before any work."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from cmf.errors import CmfError  # noqa: E402
from cmf.plan.contracts import PlanOptions  # noqa: E402
from cmf.plan.ggml_candidates import PLANNED_TYPES, ggml_choices, gguf_tensor_bytes  # noqa: E402
from cmf.plan.ggml_recipes import recipe_types, use_more_bits  # noqa: E402

from ..runtime import helpers  # noqa: E402
from .gguf_helpers import write_gguf_llama  # noqa: E402


def _shapes(
    n_layers: int = 8, d: int = 576, f: int = 1536, kv: int = 192, tied: bool = True
) -> dict:
    out = {"token_embd.weight": (1000, d)}
    for i in range(n_layers):
        p = f"blk.{i}."
        out.update(
            {
                p + "attn_norm.weight": (d,),
                p + "attn_q.weight": (d, d),
                p + "attn_k.weight": (kv, d),
                p + "attn_v.weight": (kv, d),
                p + "attn_output.weight": (d, d),
                p + "ffn_norm.weight": (d,),
                p + "ffn_gate.weight": (f, d),
                p + "ffn_up.weight": (f, d),
                p + "ffn_down.weight": (d, f),
            }
        )
    out["output_norm.weight"] = (d,)
    if not tied:
        out["output.weight"] = (1000, d)
    return out


def test_recipes_follow_llama_cpp_rules_and_fallbacks():
    more = [i for i in range(8) if use_more_bits(i, 8)]
    assert more == [0, 3, 6, 7]
    q4 = recipe_types(_shapes(), "Q4_K_M", n_gqa=3)
    assert q4["token_embd.weight"] == "Q8_0"  # tied output, 576 % 256 != 0
    assert q4["blk.0.attn_norm.weight"] is None
    for i in range(8):
        want = "Q8_0" if i in more else "Q5_0"  # Q6_K / Q4_K fall back for rows of 576
        assert q4[f"blk.{i}.attn_v.weight"] == want
        assert q4[f"blk.{i}.attn_q.weight"] == "Q5_0"
        assert q4[f"blk.{i}.ffn_down.weight"] == ("Q6_K" if i in more else "Q4_K")  # rows of 1536
    wide = recipe_types(_shapes(d=512, f=1024, kv=256, tied=False), "Q4_K_M")
    assert wide["output.weight"] == "Q6_K" and wide["token_embd.weight"] == "Q4_K"
    assert wide["blk.1.attn_q.weight"] == "Q4_K" and wide["blk.0.attn_v.weight"] == "Q6_K"
    iq = recipe_types(_shapes(d=512, f=1024, kv=128), "IQ4_XS", n_gqa=4, imatrix=False)
    assert iq["blk.0.attn_v.weight"] == "Q5_K" and iq["blk.0.ffn_down.weight"] == "Q5_K"
    assert iq["blk.1.ffn_down.weight"] == "IQ4_XS" and iq["token_embd.weight"] == "Q6_K"
    assert recipe_types(_shapes(), "Q6_K")["blk.2.ffn_down.weight"] == "Q6_K"


def test_choices_take_llama_cpp_fallbacks():
    assert [c.label for c in ggml_choices(576)] == [
        "F16",
        "BF16",
        "Q8_0",
        "Q5_1",
        "Q5_0",
        "Q4_0",
        "IQ4_NL",
    ]
    assert len(ggml_choices(512)) == 11 and ggml_choices(512)[-1].label == "Q5_0"
    assert [c.label for c in ggml_choices(40)] == ["F16", "BF16"]  # no block type takes the rows
    assert gguf_tensor_bytes("Q4_K", (4, 512)) == 4 * 2 * 144
    assert gguf_tensor_bytes("F16", (4, 40)) == gguf_tensor_bytes("BF16", (4, 40)) == 4 * 40 * 2


def test_f16_and_bf16_choices_round_as_llama_cpp_and_refuse_what_does_not_fit():
    import ml_dtypes

    from cmf.codecs import ArraySpec
    from cmf.dtypes import BY_NAME
    from cmf.pipeline import decode_pending
    from cmf.plan.ggml_candidates import encode_ggml, measure_gguf

    x = np.random.default_rng(0).standard_normal((8, 40)).astype(np.float32)
    spec = ArraySpec(BY_NAME["f32"], x.shape)
    for t, dt in (("F16", np.float16), ("BF16", ml_dtypes.bfloat16)):
        pending, y = encode_ggml(x, spec, t, None, None)
        stored = decode_pending(pending)
        assert stored.dtype == np.dtype(dt) and pending.spec.dtype.name == t.lower()
        np.testing.assert_array_equal(stored, x.astype(dt))  # round to nearest even
        np.testing.assert_array_equal(y, x.astype(dt).astype(np.float32))
    big = x * 1e5  # beyond f16's range: F16 is refused, BF16 kept
    with pytest.raises(CmfError, match="range"):
        encode_ggml(big, spec, "F16", None, None)
    labels = [p.choice.label for p in measure_gguf("big", big).points]
    assert labels == ["BF16", "lossless"]
    curve = measure_gguf("x", x)
    f16 = next(p for p in curve.points if p.choice.label == "F16")
    assert (
        f16.bytes == 8 * 40 * 2
        and 0 < f16.error < next(p for p in curve.points if p.choice.label == "BF16").error
    )


GPTQ_TYPES = (
    "Q8_0",
    "Q4_0",
    "Q5_0",
    "Q5_1",
    "IQ4_NL",
    "IQ4_XS",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)


def test_gptq_rounding_writes_valid_blocks_and_lowers_the_output_error():
    from cmf.ggml_encode import quantize_blocks
    from cmf.plan.ggml_gptq import gptq_blocks

    rng = np.random.default_rng(1)
    n, rows = 256, 24
    x = rng.standard_normal((rows, n)).astype(np.float32)
    mix = rng.standard_normal((n, n)) / np.sqrt(n) + np.eye(n)
    inputs = rng.standard_normal((4 * n, n)) @ mix  # correlated input channels
    h = inputs.T @ inputs / len(inputs)
    u = np.linalg.cholesky(np.linalg.inv(h + 0.01 * np.mean(np.diag(h)) * np.eye(n))).T
    imp = np.diag(h).astype(np.float32)

    def deq(b, t):
        return gguf.quants.dequantize(b.reshape(-1), gguf.GGMLQuantizationType[t]).reshape(x.shape)

    def out_err(y):
        d = (y - x).astype(np.float64)
        return float(np.einsum("ij,jk,ik->", d, h, d))

    for t in GPTQ_TYPES:
        plain = quantize_blocks(x, t, imp)
        same, values = gptq_blocks(x, t, np.eye(n, dtype=np.float32), imp)  # no feedback: the plain
        assert np.mean(same == plain) > 0.99, t  # rounding (ties aside: the codes from float32)
        assert out_err(values) <= out_err(deq(plain, t)) * 1.001, t
        blocks, values = gptq_blocks(x, t, u, imp)
        np.testing.assert_array_equal(
            deq(blocks, t), values
        )  # valid blocks, values as llama.cpp reads them
        assert out_err(values) < 0.9 * out_err(deq(plain, t)), t
    with pytest.raises(CmfError, match="multiple of 256"):
        gptq_blocks(x[:, :96], "Q4_K", u[:96, :96])
    with pytest.raises(CmfError, match="positive diagonal"):
        gptq_blocks(x, "Q4_0", np.zeros((n, n), np.float32))


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    pytest.importorskip("tokenizers")
    from cmf.plan import ggml_candidates
    from cmf.plan.planner import plan_and_write

    # curves cached by earlier tests of the same tiny model (under monkeypatched settings) would
    # make this plan differ from one measured afresh in workers
    ggml_candidates._CURVES.clear()
    tmp = tmp_path_factory.mktemp("gguf-plan")
    model = write_gguf_llama(tmp / "llama", num_hidden_layers=1)
    path = str(tmp / "m.cmf")
    target = 600_000
    result = plan_and_write(
        model,
        path,
        PlanOptions(target_size=target, gguf=True, rounds=2, calibrate=list(helpers.TEXTS)),
    )
    return model, path, result, target


def _check_unpacked(model, path, result, out, run):
    """``cmf unpack -o out`` writes the planned types and values exactly; its size is the plan's."""
    assert run("unpack", path, "-o", out, "-q").code == 0
    assert os.path.getsize(out) == result.gguf_bytes
    reader = gguf.GGUFReader(str(out))
    got = {t.name: t for t in reader.tensors}
    import cmf
    from cmf.runtime.llama import hf_to_gguf_name, unpermute_qk

    config = json.load(open(os.path.join(model, "config.json")))
    with cmf.open(path) as f:
        for name, tp in result.tensors.items():
            t = got[hf_to_gguf_name(name)]
            want = "F32" if tp.point.choice.family == "lossless" else tp.point.choice.label
            assert t.tensor_type.name == want, name
            assert (
                int(t.n_bytes) == gguf_tensor_bytes(want, f.spec(name).shape) == tp.point.bytes
            ), name
            values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(f.spec(name).shape)
            if ".q_proj." in name or ".k_proj." in name:
                heads = (
                    config["num_attention_heads"]
                    if ".q_proj." in name
                    else config["num_key_value_heads"]
                )
                values = unpermute_qk(values, heads)
            np.testing.assert_array_equal(values, f.get_tensor(name))  # the planned blocks, exactly


def test_size_target_counts_the_gguf_and_unpack_writes_the_planned_blocks(planned, run, tmp_path):
    model, path, result, target = planned
    assert result.target["gguf"] is True and result.target_met
    labels = {tp.point.choice.label for tp in result.tensors.values()}
    assert labels and labels <= {*PLANNED_TYPES, "lossless"}
    out = tmp_path / "out" / "m.gguf"
    _check_unpacked(model, path, result, out, run)
    assert result.gguf_bytes <= target
    # transformers' GGUF loader runs it
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(out.parent), gguf_file=out.name, dtype=torch.float32
    )
    ids = torch.tensor([[1, 5, 30, 250, 77]])
    with torch.no_grad():
        assert torch.isfinite(hf(ids).logits).all()


def test_f16_choices_are_f16_in_the_file_and_the_gguf(planned, run, tmp_path):
    """Near the F16 size, sensitive tensors take F16 (2 bytes a weight, counted so), stored as
    f16 tensors in the .cmf and written as F16 by cmf unpack; the model still runs from the file."""
    import cmf
    from cmf.plan.planner import plan_and_write

    model = planned[0]
    path = str(tmp_path / "f16.cmf")
    target = 1_100_000
    result = plan_and_write(
        model,
        path,
        PlanOptions(target_size=target, gguf=True, rounds=2, calibrate=list(helpers.TEXTS)),
    )
    chosen = {n: tp.point.choice.label for n, tp in result.tensors.items()}
    assert "F16" in chosen.values() and result.target_met and result.gguf_bytes <= target, chosen
    assert any(
        tp.point.choice.params.get("feedback") for tp in result.tensors.values()
    )  # GPTQ blocks too
    with cmf.open(path) as f:
        for name, label in chosen.items():
            assert f.spec(name).dtype.name == ("f16" if label == "F16" else "f32"), name
    _check_unpacked(model, path, result, tmp_path / "f16.gguf", run)
    assert result.file_error is not None and np.isfinite(result.file_error)


def test_jobs_measure_the_ggml_candidates_in_workers(planned, tmp_path, monkeypatch):
    """--jobs 2 measures the curves in worker processes (none here), giving the same plan and
    the same bytes as one process."""
    from cmf.plan import ggml_candidates
    from cmf.plan.planner import plan_and_write

    model, path, result, target = planned

    def not_here(*a, **k):
        raise AssertionError("measured in the planning process")

    monkeypatch.setattr(ggml_candidates, "_CURVES", {})
    monkeypatch.setattr(ggml_candidates, "measure_gguf", not_here)
    out = tmp_path / "jobs.cmf"
    got = plan_and_write(
        model,
        out,
        PlanOptions(target_size=target, gguf=True, rounds=2, jobs=2, calibrate=list(helpers.TEXTS)),
    )
    assert {n: tp.point.choice.label for n, tp in got.tensors.items()} == {
        n: tp.point.choice.label for n, tp in result.tensors.items()
    }
    assert out.read_bytes() == Path(path).read_bytes()


def test_report_shows_types_beside_llama_cpp_recipes(planned):
    from cmf.plan.report import render_text, report

    _, path, result, _ = planned
    rep = report(path)
    assert rep["gguf_bytes"] == result.gguf_bytes
    row = next(r for r in rep["tensors"] if r["name"].endswith("mlp.down_proj.weight"))
    assert set(row["ggml"]) == {"gguf", "Q4_K_M", "Q5_K_M", "Q6_K"}
    assert row["ggml"]["Q4_K_M"] == "Q6_K"  # the last layer is a use_more_bits layer
    text = "\n".join(render_text(rep))
    assert "Q4_K_M" in text and "GGUF (cmf unpack -o x.gguf)" in text
    assert result.file_error is not None and np.isfinite(result.file_error)  # the file runs


def test_bad_input_is_refused_before_any_work(planned, run, tmp_path, monkeypatch):
    """One clear error, before the model is loaded to run or anything is measured or written."""
    from cmf.plan import ggml_candidates, planner

    def no_work(*a, **k):
        raise AssertionError("work started before the input was refused")

    monkeypatch.setattr(planner, "open_harness", no_work)
    monkeypatch.setattr(ggml_candidates, "measure_gguf", no_work)
    model = planned[0]
    recipe = tmp_path / "r.json"
    recipe.write_text("{}")
    r = run("pack", model, "-o", tmp_path / "a.cmf", "--gguf", "--recipe", recipe)
    assert r.code == 2 and "--gguf plans GGML types itself: it does not go with --recipe" in r.err
    r = run(
        "pack",
        model,
        "-o",
        tmp_path / "a.cmf",
        "--gguf",
        "--target-size",
        "5bpp",
        "--recipe",
        recipe,
    )
    assert r.code == 2 and "--recipe" in r.err
    r = run("pack", model, "-o", tmp_path / "a.cmf", "--gguf")
    assert r.code == 2 and "--target-size" in r.err
    r = run("pack", model, "-o", tmp_path / "a.cmf", "--gguf", "--preset", "q8")
    assert r.code == 2
    r = run("pack", model, "-o", tmp_path / "a.cmf", "--gguf", "--target-size", "1bpp")
    assert r.code == 1 and "below the smallest GGUF the GGML types make" in r.err
    assert r.err.count("Error") <= 1 and "Traceback" not in r.err
    r = run("pack", model, "-o", tmp_path / "a.cmf", "--gguf", "--target-size", "100KB")
    assert r.code == 1 and "below the smallest GGUF" in r.err
    other = tmp_path / "other"
    shutil.copytree(model, other)
    config = json.load(open(other / "config.json"))
    config["model_type"] = "phi3"
    (other / "config.json").write_text(json.dumps(config))
    r = run("pack", other, "-o", tmp_path / "b.cmf", "--gguf", "--preset", "small")
    assert r.code == 1 and "model_type 'phi3' has no GGUF mapping" in r.err
    r = run(
        "pack",
        os.path.join(model, "model.safetensors"),
        "-o",
        tmp_path / "b.cmf",
        "--gguf",
        "--preset",
        "small",
    )
    assert r.code == 1 and "Hugging Face model directory" in r.err
    assert not os.path.exists(tmp_path / "a.cmf") and not os.path.exists(tmp_path / "b.cmf")
    with pytest.raises(CmfError, match="shard"):
        planner.plan_and_write(
            model, tmp_path / "c.cmf", PlanOptions(preset="small", gguf=True), shard_size=1 << 20
        )


def test_each_type_is_priced_with_its_activation_rounding():
    """The harness's activation errors (moments' fifth item) are added to each GGML point by the
    type llama.cpp rounds that weight's input to (over 1 + damping, the weighted-error unit)."""
    from cmf.plan.ggml_candidates import activation_error, measure_gguf

    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    e2 = (rng.random(512) + 0.5).astype(np.float64)
    acts = {"F16": 1e-4, "BF16": 1e-2, "Q8_0": 0.5, "Q8_K": 2.0}
    plain = {p.choice.label: p.error for p in measure_gguf("t", x, (1, e2)).points}
    priced = {
        p.choice.label: p.error for p in measure_gguf("t", x, (1, e2, None, None, acts)).points
    }
    assert set(priced) == set(plain) and len(priced) == 12
    by_act = {"F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "IQ4_NL": "Q8_0", "Q5_0": "Q8_0"}
    by_act["lossless"] = None
    for label, e in priced.items():
        act = by_act.get(label, "Q8_K")  # the K-quants and IQ4_XS: Q8_K blocks of 256
        want = plain[label] + (acts[act] / 1.05 if act else 0.0)
        assert e == pytest.approx(want, rel=1e-9), label
        if act:
            got = activation_error(label, (1, e2, None, None, acts))
            assert got == pytest.approx(acts[act] / 1.05), label
    assert activation_error("Q4_K", (1, e2)) == 0.0  # no activation errors measured: none added


def test_eval_with_ggml_activations_is_what_the_plan_verified(planned, run, tmp_path):
    """``cmf eval --ggml-activations`` rounds as llama.cpp does for each tensor's type in the
    GGUF: on the calibration text it gives the KL the planner verified from the file (which it
    measured the same way), more than the float32 KL; an F32 model is not rounded."""
    from cmf.runtime.evaluate import evaluate

    model, path, result, _ = planned
    texts = list(helpers.TEXTS)
    rounded = evaluate(model, path, texts, max_tokens=256, ggml_activations=True)
    plain = evaluate(model, path, texts, max_tokens=256)
    assert rounded["ggml_activations"] is True and "ggml_activations" not in plain
    assert rounded["kl_mean"] == pytest.approx(result.file_error, rel=1e-3)
    assert rounded["kl_mean"] > plain["kl_mean"]
    assert evaluate(model, model, texts, ggml_activations=True)["kl_mean"] == 0.0
    data = tmp_path / "t.txt"
    data.write_text("\n".join(texts))
    got = run("eval", model, path, "--ggml-activations", "--data", data, "--json")
    assert got.code == 0 and json.loads(got.out)["kl_mean"] == pytest.approx(
        evaluate(model, path, str(data), ggml_activations=True)["kl_mean"]
    )
    with pytest.raises(CmfError, match="numpy runner"):
        evaluate(model, path, texts, engine="torch", ggml_activations=True)
