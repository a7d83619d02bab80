"""Small ONNX graphs whose inputs leave dims open that only some sizes fit (tests of generated
inputs: cmf.runtime.onnx_runner's shapes, the planner's floor on generated inputs)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh


def _model(nodes, name, inputs, outputs, inits) -> onnx.ModelProto:
    graph = oh.make_graph(
        nodes,
        name,
        inputs,
        outputs,
        initializer=[nh.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def fpn_onnx(seed: int = 0, width: int = 32) -> onnx.ModelProto:
    """A detector-shaped conv net: x [N, 3, H, W] (H, W open) through five stride-2 3x3 convs,
    then top-down: each level upsampled 2x and added to the level above, so H and W must be
    multiples of 32 (8 or 48 fail in onnxruntime); out [N, 1, H/2, W/2] through a sigmoid."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {}
    nodes, prev, cin = [], "x", 3
    for i in range(5):
        inits[f"c{i}.w"] = (rng.standard_normal((width, cin, 3, 3)) / np.sqrt(9 * cin)).astype(
            np.float32
        )
        inits[f"c{i}.b"] = (rng.standard_normal(width) / 10).astype(np.float32)
        nodes += [
            oh.make_node(
                "Conv", [prev, f"c{i}.w", f"c{i}.b"], [f"c{i}"], strides=[2, 2], pads=[1, 1, 1, 1]
            ),
            oh.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        prev, cin = f"r{i}", width
    inits["scales"] = np.array([1, 1, 2, 2], np.float32)
    top = "r4"
    for i in (3, 2, 1, 0):
        nodes += [
            oh.make_node("Resize", [top, "", "scales"], [f"u{i}"], mode="nearest"),
            oh.make_node("Add", [f"r{i}", f"u{i}"], [f"p{i}"]),
        ]
        top = f"p{i}"
    inits["head.w"] = (rng.standard_normal((1, width, 1, 1)) / np.sqrt(width)).astype(np.float32)
    nodes += [
        oh.make_node("Conv", [top, "head.w"], ["logit"]),
        oh.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    return _model(
        nodes,
        "fpn",
        [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 3, "H", "W"])],
        [oh.make_tensor_value_info("prob", TP.FLOAT, ["N", 1, None, None])],
        inits,
    )


def chunked_onnx(vocab: int = 100, dim: int = 64) -> onnx.ModelProto:
    """ids [batch, seq] int64 (seq open) -> Cast -> Gather into a ``vocab`` x ``dim`` table, then
    reshaped into chunks of 32 positions: seq must be a multiple of 32; out [batch * seq / 32, dim].
    """
    table = np.random.default_rng(2).standard_normal((vocab, dim)).astype(np.float32)
    nodes = [
        oh.make_node("Cast", ["ids"], ["ids32"], to=TP.INT32),
        oh.make_node("Gather", ["table", "ids32"], ["e"]),
        oh.make_node("Reshape", ["e", "chunk"], ["c"]),
        oh.make_node("ReduceMean", ["c"], ["out"], axes=[1], keepdims=0),
    ]
    return _model(
        nodes,
        "chunked",
        [oh.make_tensor_value_info("ids", TP.INT64, ["batch", "seq"])],
        [oh.make_tensor_value_info("out", TP.FLOAT, [None, dim])],
        {"table": table, "chunk": np.array([-1, 32, dim], np.int64)},
    )


def saturated_classifier_onnx(seed: int = 0, classes: int = 256) -> onnx.ModelProto:
    """x [N, 64] -> MatMul w1 [64, 128] -> Relu -> MatMul head [128, classes] + bias -> Softmax.
    Class 0's bias is so large that inputs like N(0, 1) nearly always give it: the softmax
    barely moves whatever ``head`` holds, so measured sensitivities call ``head`` (which feeds
    the output directly) nearly free."""
    rng = np.random.default_rng(seed)
    bias = np.zeros(classes, np.float32)
    bias[0] = 12.0
    inits = {
        "w1": (rng.standard_normal((64, 128)) / 8).astype(np.float32),
        "head": (rng.standard_normal((128, classes)) / 11).astype(np.float32),
        "bias": bias,
    }
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h"]),
        oh.make_node("Relu", ["h"], ["hr"]),
        oh.make_node("MatMul", ["hr", "head"], ["z"]),
        oh.make_node("Add", ["z", "bias"], ["logits"]),
        oh.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    x = [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 64])]
    outputs = [oh.make_tensor_value_info("probs", TP.FLOAT, ["N", classes])]
    return _model(nodes, "saturated", x, outputs, inits)


def stateful_onnx() -> onnx.ModelProto:
    """A streaming model as silero-vad is one: x [?, ?] (a batch of sample chunks whose length
    must be a multiple of 128), state [2, ?, 8] whose open dim is the batch again (1, not a
    length), and mode int64 [] that the graph tests with Equal against 7; out [batch, blocks + 8]
    (all zeros unless mode is 7)."""
    nodes = [
        oh.make_node("Reshape", ["x", "blocks"], ["xb"]),
        oh.make_node("ReduceSum", ["xb", "axes"], ["xs"], keepdims=0),  # [batch, blocks]
        oh.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
        oh.make_node("Concat", ["xs", "s0"], ["cat"], axis=1),
        oh.make_node("Equal", ["mode", "seven"], ["is7"]),
        oh.make_node("Cast", ["is7"], ["gain"], to=TP.FLOAT),
        oh.make_node("Mul", ["cat", "gain"], ["out"]),
    ]
    return _model(
        nodes,
        "stateful",
        [
            oh.make_tensor_value_info("x", TP.FLOAT, [None, None]),
            oh.make_tensor_value_info("state", TP.FLOAT, [2, None, 8]),
            oh.make_tensor_value_info("mode", TP.INT64, []),
        ],
        [oh.make_tensor_value_info("out", TP.FLOAT, [None, 9])],
        {
            "blocks": np.array([0, -1, 128], np.int64),
            "axes": np.array([2], np.int64),
            "zero": np.array(0, np.int64),
            "seven": np.array(7, np.int64),
        },
    )
