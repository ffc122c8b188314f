"""Writes the benchmark's ONNX models into OUT_DIR (run with the repository's .venv: it needs
scikit-learn, skl2onnx and onnx):

  iris.onnx  scikit-learn LogisticRegression trained as examples/iris-python/train.py does,
             converted with skl2onnx (zipmap=False): input "input" float [N, 4], outputs
             "label" int64 [N] and "probabilities" float [N, 3]
  mlp.onnx   a 3-layer MLP built with onnx.helper: Gemm 64->128, Relu, Gemm 128->128, Relu,
             Gemm 128->10; input "x" float [batch, 64], output "logits" float [batch, 10];
             weights from numpy RandomState(0)
  mlp-large.onnx  the same with Gemm 784->512, 512->512, 512->10 (about 30 us a row on one
             core): the whole-machine part's model whose own time dominates its requests

Usage: python bench/onnx/models.py OUT_DIR [iris|mlp|mlp-large ...]
"""
import sys
from pathlib import Path

import numpy as np


def make_iris(path):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    iris = load_iris()
    x_train, _, y_train, _ = train_test_split(
        iris.data, iris.target, test_size=0.2, random_state=0, stratify=iris.target
    )
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        final_types=None,
    )
    names = [o.name for o in onx.graph.output]
    if names != ["label", "probabilities"]:
        raise SystemExit(f"unexpected iris outputs {names}")
    Path(path).write_bytes(onx.SerializeToString())


MLP_LARGE = ((784, 512), (512, 512), (512, 10))


def make_mlp(path, sizes=((64, 128), (128, 128), (128, 10))):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rs = np.random.RandomState(0)
    inits, nodes = [], []
    prev = "x"
    for i, (fan_in, fan_out) in enumerate(sizes):
        w = (rs.randn(fan_in, fan_out) / np.sqrt(fan_in)).astype(np.float32)
        b = (rs.randn(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "logits" if i == len(sizes) - 1 else f"h{i}"
        gemm_out = out if i == len(sizes) - 1 else f"g{i}"
        nodes.append(
            helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm_out], name=f"gemm{i}"))
        if i < len(sizes) - 1:
            nodes.append(helper.make_node("Relu", [gemm_out], [out], name=f"relu{i}"))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0][0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="gyrus-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    Path(path).write_bytes(model.SerializeToString())


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    which = sys.argv[2:] or ["iris", "mlp"]
    if "iris" in which:
        make_iris(out / "iris.onnx")
    if "mlp" in which:
        make_mlp(out / "mlp.onnx")
    if "mlp-large" in which:
        make_mlp(out / "mlp-large.onnx", MLP_LARGE)
    print(" ".join(str(out / f"{w}.onnx") for w in which))


if __name__ == "__main__":
    main()
