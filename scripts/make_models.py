#!/usr/bin/env python3
"""Writes the ONNX models of the end-to-end tests into OUT_DIR (created if missing).

    python scripts/make_models.py OUT_DIR

Everything is built locally and deterministically (scikit-learn's bundled iris data, numpy's
RandomState(0), onnx.helper); nothing is downloaded. Running it again produces the same bytes
(files already up to date are left alone). Each model is loaded and run with onnxruntime
before it is written; each identity model must give back exactly what it was given.

  iris.onnx            LogisticRegression on iris (skl2onnx): input "input" float [N, 4] ->
                       "label" int64 [N], "probabilities" float [N, 3]
  mlp.onnx             "x" float [batch, 64] -> Gemm+Relu, Gemm+Relu, Gemm -> "logits" float [batch, 10]
  identity_<t>.onnx    "x" -> Identity -> "y", shape [batch, 3], one per dtype <t>: bool, uint8,
                       uint16, uint32, uint64, int8, int16, int32, int64, float16, float32,
                       float64, string (onnxruntime's CPU Identity takes all of them)
  add.onnx             "a", "b" float [batch, 2] -> "sum" = a + b
  fixed.onnx           "x" float [2, 3] (fixed) -> "y" = x * 2
  corrupt.onnx         bytes that are not an ONNX model

Needs onnx, onnxruntime, skl2onnx, scikit-learn and numpy (tests/requirements.txt).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# Opset and IR version of the models built with onnx.helper: old enough for any recent
# onnxruntime (1.31 reads up to opset 26 / IR 13), new enough for every op used here.
OPSET = 17
IR_VERSION = 8
# skl2onnx's opsets for the iris classifier (default domain, ai.onnx.ml).
SKL_TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

# dtype name -> (TensorProto type, numpy dtype); the names are the files' suffixes.
IDENTITY_DTYPES: dict[str, tuple[int, object]] = {
    "bool": (TensorProto.BOOL, np.bool_),
    "uint8": (TensorProto.UINT8, np.uint8),
    "uint16": (TensorProto.UINT16, np.uint16),
    "uint32": (TensorProto.UINT32, np.uint32),
    "uint64": (TensorProto.UINT64, np.uint64),
    "int8": (TensorProto.INT8, np.int8),
    "int16": (TensorProto.INT16, np.int16),
    "int32": (TensorProto.INT32, np.int32),
    "int64": (TensorProto.INT64, np.int64),
    "float16": (TensorProto.FLOAT16, np.float16),
    "float32": (TensorProto.FLOAT, np.float32),
    "float64": (TensorProto.DOUBLE, np.float64),
    "string": (TensorProto.STRING, np.object_),
}

CORRUPT_BYTES = b"this is not an onnx model\n"


def sample(dtype_name: str) -> np.ndarray:
    """A [2, 3] array of the dtype with edge values (extremes, negatives, non-ASCII text)."""
    if dtype_name == "bool":
        return np.array([[True, False, True], [False, False, True]], dtype=np.bool_)
    if dtype_name == "string":
        return np.array(
            [[b"hello", b"", "caf\u00e9 \u2615".encode()], [b"with space", b"a\"quote'", b"line\nbreak"]],
            dtype=np.object_,
        )
    dt = np.dtype(IDENTITY_DTYPES[dtype_name][1])
    if dt.kind in "iu":
        info = np.iinfo(dt)
        mid = 0 if dt.kind == "u" else -1
        return np.array([[info.min, info.max, 0], [1, mid, info.max - 1]], dtype=dt)
    info = np.finfo(dt)
    return np.array([[0.1, -2.5, info.max], [info.tiny, -0.0, 1e-3]], dtype=dt)


# ------------------------------------------------------------------------------------------
# builders: each returns the model's bytes


def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="gyrus-make-models",
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def iris_bytes() -> bytes:
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
        target_opset=SKL_TARGET_OPSET,
    )
    # skl2onnx names the outputs output_label / output_probability: rename them.
    renames = {"output_label": "label", "output_probability": "probabilities"}
    for node in onx.graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for out in onx.graph.output:
        out.name = renames.get(out.name, out.name)
    # Deterministic bytes: skl2onnx names the graph with a random uuid and may list an opset
    # domain twice.
    onx.graph.name = "iris"
    opsets: dict[str, int] = {}
    for op in onx.opset_import:
        opsets[op.domain] = max(op.version, opsets.get(op.domain, 0))
    del onx.opset_import[:]
    onx.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    onnx.checker.check_model(onx, full_check=True)
    return onx.SerializeToString()


def mlp_bytes() -> bytes:
    rng = np.random.RandomState(0)
    sizes = [(64, 128), (128, 128), (128, 10)]
    inits, nodes = [], []
    prev = "x"
    for i, (fan_in, fan_out) in enumerate(sizes):
        # He-style scaling keeps activations O(1), so the logits are finite and well-conditioned.
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(sizes) - 1
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
        initializer=inits,
    )
    return _model(graph)


def identity_bytes(dtype_name: str) -> bytes:
    elem = IDENTITY_DTYPES[dtype_name][0]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="identity")],
        f"identity_{dtype_name}",
        [helper.make_tensor_value_info("x", elem, ["batch", 3])],
        [helper.make_tensor_value_info("y", elem, ["batch", 3])],
    )
    return _model(graph)


def add_bytes() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"], name="add")],
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2])],
    )
    return _model(graph)


def fixed_bytes() -> bytes:
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"], name="double")],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[two],
    )
    return _model(graph)


# ------------------------------------------------------------------------------------------
# verification with onnxruntime


def session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def check_iris(data: bytes) -> str:
    from sklearn.datasets import load_iris

    s = session(data)
    assert [i.name for i in s.get_inputs()] == ["input"], s.get_inputs()
    assert [o.name for o in s.get_outputs()] == ["label", "probabilities"], s.get_outputs()
    iris = load_iris()
    label, proba = s.run(None, {"input": iris.data.astype(np.float32)})
    assert label.dtype == np.int64 and label.shape == (150,), (label.dtype, label.shape)
    assert proba.dtype == np.float32 and proba.shape == (150, 3), (proba.dtype, proba.shape)
    accuracy = float((label == iris.target).mean())
    assert accuracy > 0.9, accuracy
    return f"accuracy {accuracy:.3f}"


def check_mlp(data: bytes) -> str:
    s = session(data)
    x = np.random.RandomState(1).standard_normal((5, 64)).astype(np.float32)
    (logits,) = s.run(None, {"x": x})
    assert logits.shape == (5, 10) and logits.dtype == np.float32, (logits.shape, logits.dtype)
    assert np.isfinite(logits).all() and np.abs(logits).max() < 1e3, logits
    return f"logits |max| {np.abs(logits).max():.2f}"


def check_identity(dtype_name: str, data: bytes) -> str:
    s = session(data)
    x = sample(dtype_name)
    if dtype_name == "string":
        # onnxruntime's Python API takes and returns str elements for string tensors.
        text = np.vectorize(lambda v: v.decode("utf-8"), otypes=[np.object_])(x)
        (y,) = s.run(None, {"x": text})
        assert y.shape == x.shape, (y.shape, x.shape)
        assert y.tolist() == text.tolist(), y
    else:
        (y,) = s.run(None, {"x": x})
        assert y.shape == x.shape, (y.shape, x.shape)
        assert y.dtype == x.dtype, (y.dtype, x.dtype)
        assert y.tobytes() == x.tobytes(), (y, x)
    return f"{s.get_inputs()[0].type} round-trips"


def check_add(data: bytes) -> str:
    s = session(data)
    a = np.array([[1.0, 2.0], [3.5, -4.0]], dtype=np.float32)
    b = np.array([[10.0, 20.0], [0.5, 4.0]], dtype=np.float32)
    (out,) = s.run(None, {"a": a, "b": b})
    assert np.array_equal(out, a + b), out
    return "a + b"


def check_fixed(data: bytes) -> str:
    s = session(data)
    assert s.get_inputs()[0].shape == [2, 3], s.get_inputs()[0].shape
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = s.run(None, {"x": x})
    assert np.array_equal(y, x * 2), y
    return "x * 2, shape [2, 3]"


def check_corrupt(data: bytes) -> str:
    try:
        session(data)
    except Exception as e:  # noqa: BLE001 - any load error is what we want
        return f"onnxruntime refuses it ({type(e).__name__})"
    raise AssertionError("onnxruntime loaded corrupt.onnx")


# ------------------------------------------------------------------------------------------


def build() -> list[tuple[str, bytes, callable]]:
    models = [
        ("iris.onnx", iris_bytes(), check_iris),
        ("mlp.onnx", mlp_bytes(), check_mlp),
    ]
    for name in IDENTITY_DTYPES:
        models.append((f"identity_{name}.onnx", identity_bytes(name), lambda d, n=name: check_identity(n, d)))
    models += [
        ("add.onnx", add_bytes(), check_add),
        ("fixed.onnx", fixed_bytes(), check_fixed),
        ("corrupt.onnx", CORRUPT_BYTES, check_corrupt),
    ]
    return models


def write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, data, check in build():
        note = check(data)
        changed = write_if_changed(out / name, data)
        print(f"{out / name}: {len(data)} bytes, {note}{'' if changed else ' (unchanged)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
