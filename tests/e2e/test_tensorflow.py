"""TensorFlow APIs (`predictor.type: tensorflow`), served through TensorFlow's C API in the
replica (gyrus installs tensorflow-cpu into its own environment on the first deploy):

- Cortex's TensorFlow iris example deployed unchanged (`examples/tensorflow-iris`): a
  `TensorFlowPredictor` whose `tensorflow_client.predict(payload)` returns flat lists;
- model APIs over the simple JSON API and the Open Inference Protocol, spoken by tritonclient;
- several models (`models: paths` with `signature_key`, `models: dir`), version directories;
- a batch job whose predictor calls `tensorflow_client`;
- precise 4xx answers for a wrong signature key, input name, dtype and shape.

Expected values come from TensorFlow run in this process on the same SavedModel.
"""

import json
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from e2e_helpers import copy_example, write_files, to_yaml
from onnx_helpers import v2_client, v2_error, v2_inputs, v2_outputs
from tf_helpers import copy_model, oracle

SETOSA = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}
VIRGINICA = {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 2.1}
IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.9, 3.1, 5.4, 2.1]], dtype=np.float32)
TF_INSTALL_TIMEOUT = 600
MLP_X = np.random.RandomState(7).standard_normal((3, 784)).astype(np.float32)

MULTI_PREDICTOR = r'''
class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload, query_params):
        try:
            return self.client.predict(payload.get("input"), payload.get("model"), payload.get("version"))
        except ValueError as e:
            if query_params.get("catch"):
                return {"caught": type(e).__name__, "message": str(e)}
            raise
'''

BATCH_PREDICTOR = r'''
import json, os


class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config, job_spec):
        self.client = tensorflow_client
        self.out = config["out"]
        os.makedirs(self.out, exist_ok=True)

    def predict(self, payload, batch_id):
        rows = list(zip(*payload))  # columns: the four measurements
        names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
        prediction = self.client.predict({n: list(c) for n, c in zip(names, rows)})
        with open(os.path.join(self.out, batch_id + ".json"), "w") as f:
            json.dump({"rows": payload, "class_ids": prediction["class_ids"]}, f)
'''


def project(base, name, apis, models, files=None):
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    for rel, src in models.items():
        copy_model(src, d / rel)
    write_files(d, files or {})
    (d / "cortex.yaml").write_text(to_yaml(apis))
    return d


def model_api(name, model, endpoint=None, **predictor):
    spec = {"name": name, "predictor": {"type": "tensorflow", "model": model, **predictor}}
    if endpoint:
        spec["endpoint"] = endpoint
    return spec


@pytest.fixture(scope="module")
def served(gyrus, projects_dir, tf_models):
    example = copy_example("tensorflow-iris", projects_dir)
    copy_model(tf_models / "iris", example / "model")
    # The first TensorFlow deploy installs tensorflow-cpu into GYRUS_HOME/runtime (from uv's
    # cache when scripts/setup-python.sh filled it; a download otherwise).
    proc = gyrus.deploy(example, timeout=TF_INSTALL_TIMEOUT)
    assert proc.returncode == 0, gyrus.diag("iris-tensorflow", "iris-tf-model", proc=proc)
    apis = [
        model_api("tf-iris-x", "iris-x"),
        model_api("tf-mlp", "mlp", endpoint="/team/tf-mlp"),
        model_api("tf-versions", "versions"),
        model_api("tf-strings", "strings"),
        model_api("tf-kinds", "kinds"),
        {
            "name": "tf-multi",
            "predictor": {
                "type": "tensorflow",
                "path": "predictor.py",
                "models": {
                    "paths": [
                        {"name": "flower", "model_path": "iris-x"},
                        {"name": "square", "model_path": "two-signatures", "signature_key": "square"},
                        {"name": "double", "model_path": "two-signatures", "signature_key": "double"},
                        {"name": "scaled", "model_path": "versions"},
                    ]
                },
            },
        },
        {"name": "tf-dir", "predictor": {"type": "tensorflow", "models": {"dir": "zoo"}}},
    ]
    models = {m: tf_models / m for m in ("iris-x", "mlp", "versions", "strings", "kinds", "two-signatures")}
    models.update({"zoo/petals": tf_models / "iris-x", "zoo/net": tf_models / "mlp"})
    proj = project(projects_dir, "tf-apis", apis, models, files={"predictor.py": MULTI_PREDICTOR})
    names = [a["name"] for a in apis]
    proc = gyrus.deploy(proj)
    assert proc.returncode == 0, gyrus.diag(*names, proc=proc)
    for name in names:
        assert f"{name} is live at " in proc.stdout, gyrus.diag(*names, proc=proc)
    return {"gyrus": gyrus, "models": tf_models, "projects": projects_dir}


def close(got, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), rtol=tol, atol=tol)


# --- Cortex's example, unchanged ------------------------------------------------------------


def test_cortex_tensorflow_iris_example_answers_the_right_label(served):
    g = served["gyrus"]
    for sample, label in ((SETOSA, "setosa"), (VIRGINICA, "virginica")):
        r = g.post("/iris-tensorflow", json=sample)
        assert r.status_code == 200, g.diag("iris-tensorflow", resp=r)
        assert r.text == label
    want = oracle(served["models"] / "iris" / "1", {k: [v] for k, v in VIRGINICA.items()})
    assert int(want["class_ids"][0]) == 2


def test_example_model_api_equals_tensorflow(served):
    g = served["gyrus"]
    batch = {k: [SETOSA[k], VIRGINICA[k]] for k in SETOSA}
    r = g.post("/iris-tf-model", json=batch)
    assert r.status_code == 200, g.diag("iris-tf-model", resp=r)
    body = r.json()
    want = oracle(served["models"] / "iris" / "1", batch)
    assert body["class_ids"] == want["class_ids"].tolist() == [0, 2]
    close(body["probabilities"], want["probabilities"])
    # One example without its batch dimension: each scalar becomes [1].
    r = g.post("/iris-tf-model", json=SETOSA)
    assert r.status_code == 200 and r.json()["class_ids"] == [0], r.text


def test_tensorflow_client_errors_name_the_key(served):
    g = served["gyrus"]
    cases = [
        ({"sepal_length": 5.2}, 'missing key "petal_length" for model "iris-tensorflow"'),
        ({**SETOSA, "colour": 1}, 'unknown key "colour" for model "iris-tensorflow"'),
        ({**SETOSA, "sepal_length": "long"}, 'input "sepal_length": expected float32 numbers, found strings'),
        ({**SETOSA, "sepal_length": [[5.2]]}, 'input "sepal_length": expected shape [-1] (rank 1), found [1, 1] (rank 2)'),
    ]
    for payload, message in cases:
        r = g.post("/iris-tensorflow", json=payload)
        assert r.status_code == 400, g.diag("iris-tensorflow", resp=r)
        assert message in r.json()["error"], r.text


# --- model APIs: simple JSON and the Open Inference Protocol --------------------------------


def test_model_api_errors_are_precise_4xx(served):
    g = served["gyrus"]
    cases = [
        ({"y": IRIS_ROWS.tolist()}, 'unknown input "y"; the model takes "x"'),
        ({"x": [["a", "b", "c", "d"]]}, 'input "x": expected FP32 numbers'),
        ({"x": [[1.0, 2.0, 3.0]]}, 'input "x": expected shape [-1, 4], found [1, 3] (dimension 1 must be 4)'),
    ]
    for body, message in cases:
        r = g.post("/tf-iris-x", json=body)
        assert r.status_code == 400, g.diag("tf-iris-x", resp=r)
        assert message in r.json()["error"], r.text


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_a_savedmodel(served, binary):
    g = served["gyrus"]
    client = v2_client(g, "/tf-iris-x")
    try:
        meta = client.get_model_metadata("tf-iris-x")
        assert meta["platform"] == "tensorflow_savedmodel"
        assert meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert [o["name"] for o in meta["outputs"]] == ["class_ids", "probabilities"]
        result = client.infer(
            "tf-iris-x", v2_inputs({"x": IRIS_ROWS}, binary), outputs=v2_outputs(["class_ids", "probabilities"], binary)
        )
        want = oracle(served["models"] / "iris-x", {"x": IRIS_ROWS})
        np.testing.assert_array_equal(result.as_numpy("class_ids"), want["class_ids"])
        np.testing.assert_array_equal(result.as_numpy("probabilities"), want["probabilities"])
    finally:
        client.close()


def test_tritonclient_mlp_at_the_gateway_root_equals_tensorflow(served):
    g = served["gyrus"]
    client = v2_client(g)
    try:
        result = client.infer("tf-mlp", v2_inputs({"x": MLP_X}))
        want = oracle(served["models"] / "mlp" / "1", {"x": MLP_X})
        close(result.as_numpy("logits"), want["logits"], tol=1e-4)
        with pytest.raises(InferenceServerException) as excinfo:
            client.infer("tf-mlp", v2_inputs({"x": MLP_X.astype(np.float64)}))
        assert excinfo.value.status() == "400", v2_error(excinfo)
        assert 'input "x": expected FP32, found FP64' in excinfo.value.message(), v2_error(excinfo)
    finally:
        client.close()


def test_the_highest_version_directory_is_served(served):
    g = served["gyrus"]
    client = v2_client(g, "/tf-versions")
    x = np.array([[1.5, -2.0]], dtype=np.float32)
    try:
        assert client.get_model_metadata("tf-versions")["versions"] == ["2"]
        result = client.infer("tf-versions", v2_inputs({"x": x}), model_version="2")
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
        with pytest.raises(InferenceServerException) as excinfo:
            client.infer("tf-versions", v2_inputs({"x": x}), model_version="1")
        assert excinfo.value.status() == "404", v2_error(excinfo)
        assert 'has no version "1"; the version served is "2"' in excinfo.value.message()
    finally:
        client.close()


def test_strings_and_other_dtypes(served):
    g = served["gyrus"]
    long = "a string well past the twenty-two bytes TensorFlow keeps inline"
    r = g.post("/tf-strings", json={"text": ["ab", "", long]})
    assert r.status_code == 200, g.diag("tf-strings", resp=r)
    assert r.json() == {"length": [2, 0, len(long)], "same": ["ab", "", long], "upper": ["AB", "", long.upper()]}
    feed = {"i": [[2**40, -3]], "f": [0.25], "b": [True]}
    r = g.post("/tf-kinds", json=feed)
    assert r.status_code == 200, g.diag("tf-kinds", resp=r)
    want = oracle(served["models"] / "kinds", feed)
    assert r.json() == {k: v.tolist() for k, v in want.items()}


# --- several models ------------------------------------------------------------------------


def test_tensorflow_client_picks_models_and_signatures(served):
    g = served["gyrus"]
    r = g.post("/tf-multi", json={"model": "flower", "input": {"x": IRIS_ROWS.tolist()}})
    assert r.status_code == 200, g.diag("tf-multi", resp=r)
    want = oracle(served["models"] / "iris-x", {"x": IRIS_ROWS})
    assert r.json()["class_ids"] == want["class_ids"].tolist()
    # Flat lists, as TensorFlow Serving answered through Cortex: [N, 3] becomes 3N values.
    assert len(r.json()["probabilities"]) == 3 * len(IRIS_ROWS)
    # The same SavedModel under two signature keys; a bare value for a one-input signature.
    assert g.post("/tf-multi", json={"model": "square", "input": [3.0, -4.0]}).json() == {"y": [9.0, 16.0]}
    assert g.post("/tf-multi", json={"model": "double", "input": [3.0, -4.0]}).json() == {"y": [6.0, -8.0]}
    assert g.post("/tf-multi", json={"model": "scaled", "input": [[1.0, 2.0]], "version": "highest"}).json() == {
        "y": [2.0, 4.0]
    }


def test_tensorflow_client_model_errors(served):
    g = served["gyrus"]
    cases = [
        ({"model": "nope", "input": [1.0]}, 'unknown model "nope"; this API serves "flower", "square", "double", "scaled"'),
        ({"input": [1.0]}, "this API serves several models, so predict() needs model_name"),
        ({"model": "scaled", "input": [[1.0, 2.0]], "version": 1}, 'model "scaled" has no version "1"; the version served is "2"'),
    ]
    for payload, message in cases:
        r = g.post("/tf-multi?catch=1", json=payload)
        assert r.status_code == 200, g.diag("tf-multi", resp=r)
        assert r.json()["caught"] == "InvalidInput" and message in r.json()["message"], r.text
    r = g.post("/tf-multi", json={"model": "nope", "input": [1.0]})
    assert r.status_code == 400 and 'unknown model "nope"' in r.json()["error"], r.text


def test_models_dir_serves_each_savedmodel_by_name(served):
    g = served["gyrus"]
    r = g.post("/tf-dir?model=petals", json={"x": IRIS_ROWS.tolist()})
    assert r.status_code == 200, g.diag("tf-dir", resp=r)
    assert r.json()["class_ids"] == oracle(served["models"] / "iris-x", {"x": IRIS_ROWS})["class_ids"].tolist()
    client = v2_client(g, "/tf-dir")
    try:
        result = client.infer("net", v2_inputs({"x": MLP_X[:1]}))
        close(result.as_numpy("logits"), oracle(served["models"] / "mlp" / "1", {"x": MLP_X[:1]})["logits"], tol=1e-4)
    finally:
        client.close()


# --- deploy-time checks ----------------------------------------------------------------------


def test_a_wrong_signature_key_fails_the_deploy_listing_the_signatures(served):
    g = served["gyrus"]
    proj = project(
        served["projects"],
        "tf-bad-key",
        [model_api("tf-bad-key", "model", signature_key="predict")],
        {"model": served["models"] / "two-signatures"},
    )
    proc = g.deploy(proj)
    assert proc.returncode != 0, g.diag(proc=proc)
    assert (
        'predictor.model: signature_key "predict" is not in the model; its signatures are "double", "square"'
        in proc.stderr
    ), g.diag(proc=proc)
    proj = project(
        served["projects"], "tf-no-key", [model_api("tf-no-key", "model")], {"model": served["models"] / "two-signatures"}
    )
    proc = g.deploy(proj)
    assert proc.returncode != 0
    assert 'none is "serving_default"; set signature_key to one of "double", "square"' in proc.stderr, g.diag(proc=proc)


def test_a_directory_that_is_not_a_savedmodel_fails_the_deploy(served):
    g = served["gyrus"]
    proj = project(served["projects"], "tf-empty", [model_api("tf-empty", "model")], {})
    write_files(proj, {"model/weights.bin": b"\0"})
    proc = g.deploy(proj)
    assert proc.returncode != 0
    assert "is not a SavedModel: it holds no saved_model.pb" in proc.stderr, g.diag(proc=proc)
    assert "(found: weights.bin)" in proc.stderr


# --- batch -----------------------------------------------------------------------------------


def test_a_batch_job_runs_tensorflow_client_on_each_batch(served, tmp_path):
    g = served["gyrus"]
    api = "tf-batch"
    spec = {"name": api, "kind": "BatchAPI", "predictor": {"type": "tensorflow", "path": "predictor.py", "model": "model"}}
    proj = project(served["projects"], api, [spec], {"model": served["models"] / "iris"}, {"predictor.py": BATCH_PREDICTOR})
    g.deploy_ok(proj, api)
    rows = [list(SETOSA.values()), list(VIRGINICA.values())] * 6
    out = tmp_path / "out"
    r = g.http.post(
        g.url(api),
        headers={"Authorization": f"Bearer {g.token()}"},
        timeout=60,
        json={"workers": 2, "config": {"out": str(out)}, "item_list": {"items": rows, "batch_size": 4}},
    )
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    deadline = time.time() + 120
    while True:
        s = g.control("GET", f"/apis/{api}/jobs/{job_id}").json()
        if s["status"] not in ("enqueuing", "running"):
            break
        assert time.time() < deadline, (s, g.api_log(api))
        time.sleep(0.3)
    assert s["status"] == "succeeded", (s, (g.home / "logs" / "jobs" / f"{api}-{job_id}.log").read_text())
    batches = [json.loads((out / f"{job_id}-{n}.json").read_text()) for n in range(3)]
    assert [row for b in batches for row in b["rows"]] == rows
    assert [c for b in batches for c in b["class_ids"]] == [0, 2] * 6


# --- without TensorFlow ---------------------------------------------------------------------


def test_without_tensorflow_a_deploy_says_how_to_get_it(tmp_path_factory, projects_dir, tf_models, tmp_path):
    """A library path that is not there, and an install that fails (a uv that cannot reach the
    registry): the deploy fails with what to do, and the daemon serves on."""
    from conftest import new_gyrus
    from s3_helpers import with_env

    proj = project(projects_dir, "tf-nolib", [model_api("tf-nolib", "model")], {"model": tf_models / "iris-x"})
    g = new_gyrus(tmp_path_factory, "tf-nolib")
    try:
        proc = with_env(g, GYRUS_TF_LIBRARY=str(tmp_path / "missing.so")).deploy(proj, timeout=60)
        assert proc.returncode != 0, g.diag(proc=proc)
        assert f"GYRUS_TF_LIBRARY={tmp_path / 'missing.so'}: no such file; point it at a libtensorflow_cc.so.2" in proc.stderr, g.diag(proc=proc)
    finally:
        g.teardown()

    fake_uv = tmp_path / "uv"
    fake_uv.write_text("#!/bin/sh\necho 'error: Failed to fetch: https://pypi.org/simple/tensorflow-cpu/ (network unreachable)' >&2\nexit 2\n")
    fake_uv.chmod(0o755)
    g = new_gyrus(tmp_path_factory, "tf-offline")
    try:
        offline = with_env(g, GYRUS_UV=str(fake_uv))
        offline.env.pop("GYRUS_TF_LIBRARY", None)
        proc = offline.deploy(proj, timeout=60)
        assert proc.returncode != 0, g.diag(proc=proc)
        for text in (
            "installing TensorFlow (tensorflow-cpu==2.21.0) failed",
            "network unreachable",
            "pip install tensorflow-cpu==2.21.0` and set GYRUS_TF_LIBRARY to its libtensorflow_cc.so.2",
        ):
            assert text in proc.stderr, g.diag("tf-nolib", proc=proc)
        assert offline.get("tf-nolib")["status"] == "error"
        # Nothing half-installed is kept for the next deploy.
        runtime = g.home / "runtime"
        assert not runtime.exists() or not any(p.name.startswith("tensorflow-cpu") for p in runtime.iterdir())
    finally:
        g.teardown()
