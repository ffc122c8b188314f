"""Trains the iris classifier and exports it to ONNX as model.onnx next to this file.

The iris data set ships inside scikit-learn, so nothing is downloaded. Needs scikit-learn,
skl2onnx and onnx (all in the repository's .venv: `.venv/bin/python examples/iris-onnx/train.py`).
The model takes "input" (float [N, 4]) and returns "label" (int64 [N]) and "probabilities"
(float [N, 3]).
"""
from pathlib import Path

import onnx
from onnx import helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

iris = load_iris()
clf = LogisticRegression(max_iter=1000, random_state=0).fit(iris.data, iris.target)
onx = convert_sklearn(
    clf,
    initial_types=[("input", FloatTensorType([None, 4]))],
    options={id(clf): {"zipmap": False}},
    target_opset={"": 17, "ai.onnx.ml": 3},
)
# Friendlier output names than skl2onnx's output_label / output_probability.
renames = {"output_label": "label", "output_probability": "probabilities"}
for node in onx.graph.node:
    node.output[:] = [renames.get(o, o) for o in node.output]
    node.input[:] = [renames.get(i, i) for i in node.input]
for out in onx.graph.output:
    out.name = renames.get(out.name, out.name)
# The same bytes on every run: a fixed graph name (skl2onnx picks a random one), and each opset once.
onx.graph.name = "iris"
opsets = {}
for op in onx.opset_import:
    opsets[op.domain] = max(op.version, opsets.get(op.domain, 0))
del onx.opset_import[:]
onx.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
onnx.checker.check_model(onx, full_check=True)

out = Path(__file__).resolve().parent / "model.onnx"
out.write_bytes(onx.SerializeToString())
print(f"training accuracy {clf.score(iris.data, iris.target):.3f}; saved {out}")
