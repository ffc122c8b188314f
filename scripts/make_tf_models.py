#!/usr/bin/env python3
"""Writes the TensorFlow SavedModels of the tests and the benchmark into OUT_DIR.

    python scripts/make_tf_models.py OUT_DIR [NAME ...]

Everything is built locally and deterministically (scikit-learn's bundled iris data, numpy's
RandomState(0), tf.Module); nothing is downloaded. A model whose directory exists is left alone.
Each is loaded back with tf.saved_model.load and checked before this script exits.

  iris/1/          Cortex's TensorFlow iris example: a tf.Module whose signature takes
                   "sepal_length", "sepal_width", "petal_length", "petal_width" (float32 [N])
                   and returns "class_ids" (int64 [N]) and "probabilities" (float32 [N, 3]).
                   Its weights are a logistic regression fitted on iris by scikit-learn.
  iris-x/          The same model with one input "x" float32 [N, 4] (for the Open Inference
                   Protocol); no version directory.
  mlp/1/           784-512-512-10 ReLU MLP, "x" float32 [N, 784] -> "logits" float32 [N, 10].
  versions/1, /2   "x" float32 [N, 2] -> "y" = x * version (2 is served).
  two-signatures/  signatures "double" and "square" ("x" float32 [N] -> "y"), no serving_default.
  strings/         "text" string [N] -> "upper" string [N], "length" int32 [N], "same" string
                   [N] (the input itself: TensorFlow may hand back the input's own buffer).
  kinds/           "i" int64 [N, 2], "f" float64 [N], "b" bool [N] -> "i2" = i*2, "f2" = f*2,
                   "nb" = not b (dtypes other than float32).

Needs tensorflow-cpu, scikit-learn and numpy (tests/requirements.txt).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_weights():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    clf = LogisticRegression(max_iter=1000, random_state=0).fit(data.data, data.target)
    return clf.coef_.T.astype(np.float32), clf.intercept_.astype(np.float32)


class IrisModule(tf.Module):
    """The classifier: softmax(x @ W + b); class_ids is the argmax."""

    def __init__(self, w, b):
        super().__init__()
        self.w = tf.Variable(w)
        self.b = tf.Variable(b)

    def classify(self, x):
        probabilities = tf.nn.softmax(tf.matmul(x, self.w) + self.b)
        return {"class_ids": tf.argmax(probabilities, axis=1), "probabilities": probabilities}


def save_iris(out: Path):
    module = IrisModule(*iris_weights())

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=n) for n in FEATURES])
    def serve(sepal_length, sepal_width, petal_length, petal_width):
        x = tf.stack([sepal_length, sepal_width, petal_length, petal_width], axis=1)
        return module.classify(x)

    tf.saved_model.save(module, str(out / "iris" / "1"), signatures={"serving_default": serve})

    module_x = IrisModule(*iris_weights())

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve_x(x):
        return module_x.classify(x)

    tf.saved_model.save(module_x, str(out / "iris-x"), signatures={"serving_default": serve_x})


def save_mlp(out: Path):
    rng = np.random.RandomState(0)
    sizes = [784, 512, 512, 10]
    module = tf.Module()
    module.layers = [
        (
            tf.Variable(rng.standard_normal((a, b)).astype(np.float32) * np.float32(np.sqrt(2.0 / a))),
            tf.Variable(np.zeros(b, np.float32)),
        )
        for a, b in zip(sizes, sizes[1:])
    ]

    @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name="x")])
    def serve(x):
        h = x
        for i, (w, b) in enumerate(module.layers):
            h = tf.matmul(h, w) + b
            if i < len(module.layers) - 1:
                h = tf.nn.relu(h)
        return {"logits": h}

    tf.saved_model.save(module, str(out / "mlp" / "1"), signatures={"serving_default": serve})


def save_versions(out: Path):
    for version in (1, 2):
        module = tf.Module()
        module.k = tf.Variable(float(version))

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(x, module=module):
            return {"y": x * module.k}

        tf.saved_model.save(module, str(out / "versions" / str(version)), signatures={"serving_default": serve})


def save_two_signatures(out: Path):
    module = tf.Module()
    spec = [tf.TensorSpec([None], tf.float32, name="x")]

    @tf.function(input_signature=spec)
    def double(x):
        return {"y": x * 2.0}

    @tf.function(input_signature=spec)
    def square(x):
        return {"y": x * x}

    tf.saved_model.save(module, str(out / "two-signatures"), signatures={"double": double, "square": square})


def save_strings(out: Path):
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text):
        return {"upper": tf.strings.upper(text), "length": tf.strings.length(text), "same": tf.identity(text)}

    tf.saved_model.save(module, str(out / "strings"), signatures={"serving_default": serve})


def save_kinds(out: Path):
    module = tf.Module()

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.int64, name="i"),
            tf.TensorSpec([None], tf.float64, name="f"),
            tf.TensorSpec([None], tf.bool, name="b"),
        ]
    )
    def serve(i, f, b):
        return {"i2": i * 2, "f2": f * 2.0, "nb": tf.logical_not(b)}

    tf.saved_model.save(module, str(out / "kinds"), signatures={"serving_default": serve})


MODELS = {
    "iris": save_iris,
    "mlp": save_mlp,
    "versions": save_versions,
    "two-signatures": save_two_signatures,
    "strings": save_strings,
    "kinds": save_kinds,
}


def check(out: Path):
    iris = tf.saved_model.load(str(out / "iris" / "1")).signatures["serving_default"]
    got = iris(
        sepal_length=tf.constant([5.2, 6.7]),
        sepal_width=tf.constant([3.6, 3.0]),
        petal_length=tf.constant([1.4, 5.2]),
        petal_width=tf.constant([0.3, 2.3]),
    )
    assert got["class_ids"].numpy().tolist() == [0, 2], got
    up = tf.saved_model.load(str(out / "strings")).signatures["serving_default"](tf.constant(["ab", "é"]))
    assert up["upper"].numpy().tolist()[0] == b"AB", up
    assert up["length"].numpy().tolist() == [2, 2], up  # bytes, not characters


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    names = argv[2:] or list(MODELS)
    for name in names:
        if name not in MODELS:
            print(f"unknown model {name!r}; one of {', '.join(MODELS)}", file=sys.stderr)
            return 2
        if (out / name).exists():
            continue
        tmp = out / f".{name}.tmp"
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        MODELS[name](tmp)
        (tmp / name).rename(out / name)
        if name == "iris":
            (tmp / "iris-x").rename(out / "iris-x")
        tmp.rmdir()
    if "iris" in names and "strings" in names:
        check(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
