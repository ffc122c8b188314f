"""Builds a small multilayer perceptron with onnx.helper and saves it as model.onnx next to
this file: "x" (float [batch, 64], any batch size) -> Gemm(64->128) + Relu -> Gemm(128->128)
+ Relu -> Gemm(128->10) -> "logits" (float [batch, 10]).

The weights are random (numpy RandomState(0)), so the logits mean nothing; the model is for
trying batches and the Open Inference Protocol. Needs numpy and onnx (both in the repository's
.venv: `.venv/bin/python examples/mlp/make_model.py`).
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.RandomState(0)
initializers, nodes = [], []
prev = "x"
layers = [(64, 128), (128, 128), (128, 10)]
for i, (fan_in, fan_out) in enumerate(layers):
    # He-style scaling keeps the activations of order 1, so the logits stay finite.
    w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
    initializers += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
    last = i == len(layers) - 1
    gemm_out = "logits" if last else f"h{i}"
    nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [gemm_out], name=f"gemm{i}"))
    if not last:
        nodes.append(helper.make_node("Relu", [gemm_out], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"

graph = helper.make_graph(
    nodes,
    "mlp",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    initializer=initializers,
)
model = helper.make_model(
    graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, producer_name="gyrus-make-models"
)
onnx.checker.check_model(model, full_check=True)

out = Path(__file__).resolve().parent / "model.onnx"
out.write_bytes(model.SerializeToString())
print(f"saved {out}")
