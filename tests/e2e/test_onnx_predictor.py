"""ONNXPredictor (seed 000): the constructor receives `onnx_client`; `onnx_client.predict`
returns a list of numpy arrays, one per output in the model's order, takes a dict of input
names or the bare value for a single-input model, casts values to the declared dtype and adds
leading dimensions of 1; `input_signature()`, `output_signature()` and `models` describe the
model. Input errors that escape predict() are 400s with the engine's message; other exceptions
are 500s as for Python predictors. numpy is importable without a requirements.txt.
"""

import json

import numpy as np
import pytest

from onnx_helpers import model_project, parallel_posts, python_signature, run_oracle

API = "iris-py"

# `?op=` picks what predict() does with the payload; by default it runs the model on
# payload["input"] as given and describes what onnx_client.predict returned.
PREDICTOR = r'''
import os

import numpy as np


def describe(outputs):
    return {
        "type": type(outputs).__name__,
        "items": [
            {
                "type": type(a).__module__ + "." + type(a).__name__,
                "dtype": str(a.dtype),
                "shape": list(a.shape),
                "value": a.tolist(),
            }
            for a in outputs
        ],
    }


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client
        self.config = config
        # A warm-up on a thread the constructor waits for: the reply must still arrive.
        from concurrent.futures import ThreadPoolExecutor

        self.executor = ThreadPoolExecutor(1)
        self.executor.submit(self.client.predict, [5.1, 3.5, 1.4, 0.2]).result(timeout=20)

    def predict(self, payload, query_params):
        op = query_params.get("op", "predict")
        if op == "predict":
            return describe(self.client.predict(payload["input"]))
        if op == "numpy":
            # a float64 array: cast to the model's float32
            return describe(self.client.predict(np.asarray(payload["input"], dtype=np.float64)))
        if op == "named":
            return describe(self.client.predict(payload["input"], model_name=payload["model"]))
        if op == "keyword":
            return describe(self.client.predict(model_input=payload["input"]))
        if op == "describe":
            return {
                "inputs": self.client.input_signature(),
                "outputs": self.client.output_signature(),
                "models": list(self.client.models),
                "config": self.config,
                "pid": os.getpid(),
            }
        if op == "catch":
            try:
                self.client.predict(payload["input"])
            except Exception as e:
                return {"caught": type(e).__name__, "message": str(e)}
            return {"caught": None}
        if op == "thread":
            # predict() waits for a call made on another thread
            return describe(self.executor.submit(self.client.predict, payload["input"]).result(timeout=20))
        if op == "raise":
            raise RuntimeError("sentinel-onnx-predictor-error")
        if op == "seed":
            # seed 000's example, inline
            labels = ["setosa", "versicolor", "virginica"]
            prediction = self.client.predict(payload["input"])
            return labels[prediction[0][0]]
        raise ValueError(f"unknown op {op}")
'''


@pytest.fixture(scope="module")
def served(gyrus, projects_dir, onnx_models):
    spec = {
        "name": API,
        "predictor": {"type": "onnx", "path": "predictor.py", "model": "iris.onnx", "config": {"greeting": "hi", "n": 3}},
        "autoscaling": {"init_replicas": 1, "threads_per_worker": 4},
    }
    proj = model_project(
        projects_dir, API, [spec], models={"iris.onnx": onnx_models / "iris.onnx"}, files={"predictor.py": PREDICTOR}
    )
    gyrus.deploy_ok(proj, API)
    return {"gyrus": gyrus, "model": onnx_models / "iris.onnx"}


def call(served, payload, op=None, status=200):
    g = served["gyrus"]
    r = g.post(f"/{API}" + (f"?op={op}" if op else ""), json=payload)
    assert r.status_code == status, g.diag(API, resp=r)
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def check_outputs(served, got, rows):
    """`got` describes onnx_client.predict's result for `rows` (a [N, 4] batch)."""
    want = run_oracle(served["model"], {"input": rows})
    assert got["type"] == "list", got
    assert len(got["items"]) == 2, got
    label, probs = got["items"]
    assert label["type"] == probs["type"] == "numpy.ndarray", got
    assert label["dtype"] == "int64" and probs["dtype"] == "float32", got
    assert label["shape"] == list(want["label"].shape), got
    assert probs["shape"] == list(want["probabilities"].shape), got
    assert label["value"] == want["label"].tolist(), (got, want)
    np.testing.assert_allclose(probs["value"], want["probabilities"], rtol=1e-5, atol=1e-7)


ROW = [5.1, 3.5, 1.4, 0.2]
BATCH = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.9, 3.1, 5.4, 2.1], [5.7, 2.8, 4.1, 1.3], [6.3, 3.3, 6.0, 2.5]]


def test_dict_input(served):
    check_outputs(served, call(served, {"input": {"input": [ROW]}}), [ROW])


def test_bare_value_gets_leading_dimensions(served):
    """Seed 000 passes four floats as a flat list to a [N, 4] model."""
    got = call(served, {"input": ROW})
    assert got["items"][0]["shape"] == [1] and got["items"][1]["shape"] == [1, 3], got
    check_outputs(served, got, [ROW])


def test_dict_value_gets_leading_dimensions(served):
    got = call(served, {"input": {"input": ROW}})
    check_outputs(served, got, [ROW])


def test_batch_keeps_its_shape(served):
    got = call(served, {"input": BATCH})
    assert got["items"][0]["shape"] == [5] and got["items"][1]["shape"] == [5, 3], got
    check_outputs(served, got, BATCH)


def test_integers_are_cast(served):
    rows = [[5, 3, 1, 0], [7, 3, 6, 2]]
    check_outputs(served, call(served, {"input": rows}), rows)


def test_float64_numpy_array_is_cast(served):
    check_outputs(served, call(served, {"input": BATCH}, op="numpy"), BATCH)


def test_model_name_of_the_only_model(served):
    """With one model, it is named after the API."""
    check_outputs(served, call(served, {"input": [ROW], "model": API}, op="named"), [ROW])


def test_model_input_as_keyword(served):
    check_outputs(served, call(served, {"input": [ROW]}, op="keyword"), [ROW])


def test_seed_example_indexing(served):
    """prediction[0][0] is the first example's class id, usable as a list index."""
    want = run_oracle(served["model"], {"input": [BATCH[2]]})["label"][0]
    got = call(served, {"input": BATCH[2]}, op="seed")
    assert got == ["setosa", "versicolor", "virginica"][int(want)], got


def test_signatures_models_and_config(served):
    got = call(served, {}, op="describe")
    assert got["inputs"] == python_signature(served["model"], "inputs"), got
    assert got["inputs"] == {"input": {"type": "float32", "shape": [None, 4]}}, got
    assert got["outputs"] == python_signature(served["model"], "outputs"), got
    assert got["outputs"] == {
        "label": {"type": "int64", "shape": [None]},
        "probabilities": {"type": "float32", "shape": [None, 3]},
    }, got
    assert got["models"] == [API], got
    assert got["config"] == {"greeting": "hi", "n": 3}, got


def test_input_error_escaping_predict_is_400(served):
    g = served["gyrus"]
    r = g.post(f"/{API}", json={"input": {"input": [ROW], "extra": [ROW]}})
    assert r.status_code == 400, g.diag(API, resp=r)
    assert 'unknown input "extra"' in r.json()["error"], r.text


def test_shape_error_escaping_predict_is_400(served):
    g = served["gyrus"]
    r = g.post(f"/{API}", json={"input": [[1.0, 2.0, 3.0]]})
    assert r.status_code == 400, g.diag(API, resp=r)
    error = r.json()["error"]
    assert '"input"' in error and "[1, 3]" in error, r.text


def test_input_error_can_be_caught(served):
    got = call(served, {"input": {"extra": [ROW]}}, op="catch")
    assert got["caught"], got
    assert '"extra"' in got["message"] or '"input"' in got["message"], got


def test_other_exceptions_are_500(served):
    g = served["gyrus"]
    r = g.post(f"/{API}?op=raise", json={})
    assert r.status_code == 500, g.diag(API, resp=r)
    assert "sentinel-onnx-predictor-error" in r.json()["error"], r.text
    check_outputs(served, call(served, {"input": [ROW]}), [ROW])


def test_concurrent_requests_on_four_threads(served):
    """threads_per_worker: 4 share one onnx_client; every answer matches its own batch."""
    g = served["gyrus"]
    rng = np.random.RandomState(5)
    batches = [(rng.uniform(0.1, 8.0, (1 + i % 6, 4)).round(2)).tolist() for i in range(40)]
    results = parallel_posts(g.url(f"/{API}"), [{"input": rows} for rows in batches], threads=12)
    for rows, (status, text) in zip(batches, results):
        assert status == 200, g.diag(API) + f"\nstatus {status}: {text[:500]}"
        check_outputs(served, json.loads(text), rows)


def test_constructor_arguments_by_name(gyrus, projects_dir, onnx_models):
    """Arguments are passed by the names the constructor declares (seed 002's order here)."""
    predictor = (
        "class ONNXPredictor:\n"
        "    def __init__(self, config, onnx_client):\n"
        "        self.client = onnx_client\n"
        "        self.config = config\n"
        "\n"
        "    def predict(self, payload):\n"
        "        label = self.client.predict({'input': payload})[0]\n"
        "        return {'label': int(label[0]), 'config': self.config}\n"
    )
    spec = {
        "name": "by-name",
        "predictor": {"type": "onnx", "path": "predictor.py", "model": "m/iris.onnx", "config": {"k": "v"}},
        "autoscaling": {"init_replicas": 1},
    }
    proj = model_project(
        projects_dir, "by-name", [spec], models={"m/iris.onnx": onnx_models / "iris.onnx"}, files={"predictor.py": predictor}
    )
    gyrus.deploy_ok(proj, "by-name")
    r = gyrus.post("/by-name", json=BATCH[2])
    assert r.status_code == 200, gyrus.diag("by-name", resp=r)
    want = int(run_oracle(onnx_models / "iris.onnx", {"input": [BATCH[2]]})["label"][0])
    assert r.json() == {"label": want, "config": {"k": "v"}}, r.text


def test_calls_from_other_threads_are_answered(served):
    """The constructor's warm-up ran on a thread it joined; predict() does the same."""
    for _ in range(3):
        got = call(served, {"input": [ROW]}, op="thread")
        check_outputs(served, got, [ROW])
