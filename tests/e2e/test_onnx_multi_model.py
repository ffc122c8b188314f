"""APIs serving several models: `models: [{name, model}]`, `models: {paths: [...]}` and
`models: {dir: D}` (each *.onnx file directly in D named by its stem, each subdirectory
holding one .onnx file named by the subdirectory). The simple JSON API picks the model with
`?model=NAME`; the v2 API by the model name in the path, under the endpoint and at the gateway
root; an ONNXPredictor passes `model_name` to `onnx_client.predict`.

Model names are unique across the APIs of this module, so the gateway root can find each.
"""

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from onnx_helpers import (
    expected_metadata,
    model_project,
    python_signature,
    run_oracle,
    tensor_entries,
    v2_client,
    v2_inputs,
    v2_outputs,
)

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1]]
MLP_X = np.random.RandomState(11).standard_normal((3, 64)).astype(np.float32)
ADD_IN = {"a": [[1.0, 2.0]], "b": [[0.5, -2.0]]}
FIXED_IN = {"x": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}

# API -> {model name: model file it serves (for the oracle)}
SERVES = {
    "zoo": {"flower": "iris.onnx", "net": "mlp.onnx"},
    "zoo-paths": {"summer": "add.onnx", "doubler": "fixed.onnx"},
    "zoo-dir": {"adder": "add.onnx", "twice": "fixed.onnx", "petals": "iris.onnx"},
}

# Inputs for each model file (JSON-able) and the output to compare.
FEEDS = {
    "iris.onnx": {"input": IRIS_ROWS},
    "mlp.onnx": {"x": MLP_X.tolist()},
    "add.onnx": ADD_IN,
    "fixed.onnx": FIXED_IN,
}

PREDICTOR = r'''
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        op = query_params.get("op", "predict")
        if op == "models":
            return {"models": list(self.client.models)}
        if op == "signature":
            name = payload["model"]
            return {
                "inputs": self.client.input_signature(name),
                "outputs": self.client.output_signature(model_name=name),
            }
        if op == "no-name":
            try:
                self.client.predict(payload["input"])
            except Exception as e:
                return {"caught": type(e).__name__, "message": str(e)}
            return {"caught": None}
        outputs = self.client.predict(payload["input"], payload["model"])
        return [o.tolist() for o in outputs]
'''


@pytest.fixture(scope="module")
def served(gyrus, projects_dir, onnx_models):
    apis = [
        {
            "name": "zoo",
            "predictor": {
                "type": "onnx",
                "models": [{"name": "flower", "model": "iris.onnx"}, {"name": "net", "model": "nets/mlp.onnx"}],
            },
        },
        {
            "name": "zoo-paths",
            "predictor": {
                "type": "onnx",
                "models": {
                    "paths": [
                        {"name": "summer", "model_path": "add.onnx"},
                        {"name": "doubler", "model_path": "fixed.onnx"},
                    ]
                },
            },
        },
        {"name": "zoo-dir", "predictor": {"type": "onnx", "models": {"dir": "repo"}}},
        {
            "name": "zoo-py",
            "predictor": {"type": "onnx", "path": "predictor.py", "models": {"dir": "py-repo"}},
        },
    ]
    for a in apis:
        a["autoscaling"] = {"init_replicas": 1}
    m = onnx_models
    proj = model_project(
        projects_dir,
        "zoo",
        apis,
        models={
            "iris.onnx": m / "iris.onnx",
            "nets/mlp.onnx": m / "mlp.onnx",
            "add.onnx": m / "add.onnx",
            "fixed.onnx": m / "fixed.onnx",
            # dir: files named by their stem, subdirectories (one .onnx each) by their name
            "repo/adder.onnx": m / "add.onnx",
            "repo/twice/model.onnx": m / "fixed.onnx",
            "repo/petals/iris-v1.onnx": m / "iris.onnx",
            # the ONNXPredictor's models (names unique across the project)
            "py-repo/py-sum.onnx": m / "add.onnx",
            "py-repo/py-iris/model.onnx": m / "iris.onnx",
        },
        files={"predictor.py": PREDICTOR, "repo/NOTES.txt": "not a model\n"},
    )
    proc = gyrus.deploy(proj)
    names = (*SERVES, "zoo-py")
    assert proc.returncode == 0, gyrus.diag(*names, proc=proc)
    for api in names:
        assert f"{api} is live at " in proc.stdout, gyrus.diag(*names, proc=proc)
    clients = {api: v2_client(gyrus, api) for api in SERVES}
    root = v2_client(gyrus)
    yield {"gyrus": gyrus, "models": onnx_models, "clients": clients, "root": root}
    for c in [*clients.values(), root]:
        c.close()


def all_models():
    return [(api, name, file) for api, models in SERVES.items() for name, file in models.items()]


def check_json_answer(served, got, file):
    want = run_oracle(served["models"] / file, FEEDS[file])
    assert sorted(got) == sorted(want), (got, list(want))
    for name, arr in want.items():
        if arr.dtype.kind in "iu":
            assert got[name] == arr.tolist(), (name, got)
        else:
            np.testing.assert_allclose(np.array(got[name]), arr, rtol=1e-4, atol=1e-5, err_msg=name)


# ------------------------------------------------------------------------------------------
# the simple JSON API


@pytest.mark.parametrize("api, name, file", all_models())
def test_json_model_query_parameter(served, api, name, file):
    g = served["gyrus"]
    r = g.post(f"/{api}?model={name}", json=FEEDS[file])
    assert r.status_code == 200, g.diag(api, resp=r)
    check_json_answer(served, r.json(), file)


@pytest.mark.parametrize("api", list(SERVES))
def test_json_without_model_lists_the_names(served, api):
    g = served["gyrus"]
    r = g.post(f"/{api}", json=FEEDS["add.onnx"])
    assert r.status_code == 400, g.diag(api, resp=r)
    error = r.json()["error"]
    for name in SERVES[api]:
        assert name in error, (name, error)


@pytest.mark.parametrize("api", list(SERVES))
def test_json_unknown_model_lists_the_names(served, api):
    g = served["gyrus"]
    r = g.post(f"/{api}?model=no-such-model", json=FEEDS["add.onnx"])
    assert r.status_code == 400, g.diag(api, resp=r)
    error = r.json()["error"]
    for name in SERVES[api]:
        assert name in error, (name, error)


def test_json_model_of_another_api_is_unknown(served):
    g = served["gyrus"]
    r = g.post("/zoo?model=summer", json=FEEDS["add.onnx"])
    assert r.status_code == 400, g.diag("zoo", resp=r)
    assert "flower" in r.json()["error"], r.text


def test_dir_names_are_exactly_the_models(served):
    """NOTES.txt is not a model; names come from file stems and subdirectory names."""
    g = served["gyrus"]
    r = g.post("/zoo-dir?model=NOTES", json=FEEDS["add.onnx"])
    assert r.status_code == 400, g.diag("zoo-dir", resp=r)
    r = g.post("/zoo-dir?model=model", json=FEEDS["fixed.onnx"])  # the file stem inside twice/
    assert r.status_code == 400, g.diag("zoo-dir", resp=r)
    r = g.post("/zoo-dir?model=iris-v1", json=FEEDS["iris.onnx"])
    assert r.status_code == 400, g.diag("zoo-dir", resp=r)


# ------------------------------------------------------------------------------------------
# the Open Inference Protocol


@pytest.mark.parametrize("api, name, file", all_models())
def test_v2_metadata_and_ready(served, api, name, file):
    client = served["clients"][api]
    assert client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    want = expected_metadata(name, served["models"] / file)
    assert meta["name"] == name and meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"], meta
    assert tensor_entries(meta["inputs"]) == want["inputs"], meta
    assert tensor_entries(meta["outputs"]) == want["outputs"], meta


def v2_infer(served, client, name, file, binary=True):
    s_inputs = {k: np.asarray(v, dtype=np.float32) for k, v in FEEDS[file].items()}
    want = run_oracle(served["models"] / file, FEEDS[file])
    result = client.infer(name, v2_inputs(s_inputs, binary=binary), outputs=v2_outputs(list(want), binary=binary))
    for out, arr in want.items():
        got = result.as_numpy(out)
        assert got is not None and got.dtype == arr.dtype and got.shape == arr.shape, (out, result.get_response())
        np.testing.assert_allclose(got, arr, rtol=1e-4, atol=1e-5, err_msg=out)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("api, name, file", all_models())
def test_v2_infer_under_the_endpoint(served, api, name, file, binary):
    v2_infer(served, served["clients"][api], name, file, binary)


@pytest.mark.parametrize("api, name, file", all_models())
def test_v2_infer_at_the_gateway_root(served, api, name, file):
    assert served["root"].is_model_ready(name)
    v2_infer(served, served["root"], name, file)


def test_v2_models_of_other_apis_are_not_under_an_endpoint(served):
    client = served["clients"]["zoo"]
    assert not client.is_model_ready("summer")
    with pytest.raises(InferenceServerException):
        client.infer("summer", v2_inputs({k: np.asarray(v, np.float32) for k, v in ADD_IN.items()}))


# ------------------------------------------------------------------------------------------
# an ONNXPredictor with several models


def test_predictor_models(served):
    g = served["gyrus"]
    r = g.post("/zoo-py?op=models", json={})
    assert r.status_code == 200, g.diag("zoo-py", resp=r)
    assert sorted(r.json()["models"]) == ["py-iris", "py-sum"], r.text


@pytest.mark.parametrize("name, file", [("py-sum", "add.onnx"), ("py-iris", "iris.onnx")])
def test_predictor_model_name(served, name, file):
    g = served["gyrus"]
    r = g.post("/zoo-py", json={"model": name, "input": FEEDS[file]})
    assert r.status_code == 200, g.diag("zoo-py", resp=r)
    want = list(run_oracle(served["models"] / file, FEEDS[file]).values())
    got = r.json()
    assert len(got) == len(want), got
    for g_out, w_out in zip(got, want):
        np.testing.assert_allclose(np.array(g_out), w_out, rtol=1e-5, atol=1e-7)


def test_predictor_signatures_by_model_name(served):
    g = served["gyrus"]
    r = g.post("/zoo-py?op=signature", json={"model": "py-sum"})
    assert r.status_code == 200, g.diag("zoo-py", resp=r)
    add = served["models"] / "add.onnx"
    assert r.json() == {"inputs": python_signature(add, "inputs"), "outputs": python_signature(add, "outputs")}, r.text
    assert r.json()["inputs"] == {
        "a": {"type": "float32", "shape": [None, 2]},
        "b": {"type": "float32", "shape": [None, 2]},
    }, r.text


def test_predictor_without_model_name_lists_the_names(served):
    g = served["gyrus"]
    r = g.post("/zoo-py?op=no-name", json={"input": FEEDS["add.onnx"]})
    assert r.status_code == 200, g.diag("zoo-py", resp=r)
    got = r.json()
    assert got["caught"], got
    assert "py-sum" in got["message"] and "py-iris" in got["message"], got


def test_predictor_unknown_model_name_lists_the_names(served):
    g = served["gyrus"]
    r = g.post("/zoo-py", json={"model": "nope", "input": FEEDS["add.onnx"]})
    assert 400 <= r.status_code < 600, g.diag("zoo-py", resp=r)
    error = r.json()["error"]
    assert "py-sum" in error and "py-iris" in error, error
