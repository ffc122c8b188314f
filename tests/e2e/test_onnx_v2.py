"""The Open Inference Protocol (v2 REST) of model APIs, spoken by tritonclient, its reference
client: under each API's endpoint (`127.0.0.1:PORT/<endpoint>`) and at the gateway root
(`127.0.0.1:PORT`, the model named after the API). Binary tensor data (tritonclient's
default), JSON tensors (`binary_data=False`), compressed requests, model versions, metadata.
Expected tensors come from onnxruntime run in this process on the same model file.
"""

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from onnx_helpers import (
    expected_metadata,
    model_api,
    model_project,
    run_oracle,
    tensor_entries,
    v2_client,
    v2_error,
    v2_inputs,
    v2_outputs,
)

IRIS_ROWS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.9, 3.1, 5.4, 2.1], [5.7, 2.8, 4.1, 1.3], [6.3, 3.3, 6.0, 2.5]],
    dtype=np.float32,
)

# API name -> (endpoint, model file); the mlp sits at a custom endpoint with a path.
APIS = {
    "iris": ("/iris", "iris.onnx"),
    "mlp": ("/team/mlp-v2", "mlp.onnx"),
    "add": ("/add", "add.onnx"),
}


@pytest.fixture(scope="module")
def served(gyrus, projects_dir, onnx_models):
    specs = []
    for name, (endpoint, model) in APIS.items():
        extra = {"endpoint": endpoint} if endpoint != f"/{name}" else {}
        specs.append(model_api(name, model, **extra))
    proj = model_project(
        projects_dir, "v2", specs, models={m: onnx_models / m for _, m in APIS.values()}
    )
    proc = gyrus.deploy(proj)
    assert proc.returncode == 0, gyrus.diag(*APIS, proc=proc)
    for api in APIS:
        assert f"{api} is live at " in proc.stdout, gyrus.diag(*APIS, proc=proc)
    clients = {name: v2_client(gyrus, endpoint) for name, (endpoint, _) in APIS.items()}
    root = v2_client(gyrus)
    yield {"gyrus": gyrus, "models": onnx_models, "clients": clients, "root": root}
    for c in [*clients.values(), root]:
        c.close()


def model_file(served, api):
    return served["models"] / APIS[api][1]


def check_iris_result(served, result, rows=IRIS_ROWS, outputs=("label", "probabilities")):
    want = run_oracle(model_file(served, "iris"), {"input": rows})
    if "label" in outputs:
        label = result.as_numpy("label")
        assert label is not None, result.get_response()
        assert label.dtype == np.int64, label.dtype
        np.testing.assert_array_equal(label, want["label"])
    if "probabilities" in outputs:
        probs = result.as_numpy("probabilities")
        assert probs is not None, result.get_response()
        assert probs.dtype == np.float32, probs.dtype
        assert probs.shape == want["probabilities"].shape, probs.shape
        np.testing.assert_allclose(probs, want["probabilities"], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------
# health and metadata


@pytest.mark.parametrize("where", ["endpoint", "custom-endpoint", "root"])
def test_server_live_and_ready(served, where):
    client = {"endpoint": served["clients"]["iris"], "custom-endpoint": served["clients"]["mlp"], "root": served["root"]}[where]
    assert client.is_server_live(), served["gyrus"].diag(*APIS)
    assert client.is_server_ready(), served["gyrus"].diag(*APIS)


@pytest.mark.parametrize("where", ["endpoint", "root"])
def test_server_metadata(served, where):
    client = served["clients"]["iris"] if where == "endpoint" else served["root"]
    meta = client.get_server_metadata()
    assert meta["name"] == "gyrus", meta
    assert isinstance(meta["version"], str) and meta["version"], meta
    assert "binary_tensor_data" in meta["extensions"], meta


@pytest.mark.parametrize("api", list(APIS))
def test_model_metadata(served, api):
    meta = served["clients"][api].get_model_metadata(api)
    want = expected_metadata(api, model_file(served, api))
    assert meta["name"] == want["name"], meta
    assert meta["platform"] == "onnxruntime_onnx", meta
    assert meta["versions"] == ["1"], meta
    assert tensor_entries(meta["inputs"]) == want["inputs"], meta
    assert tensor_entries(meta["outputs"]) == want["outputs"], meta


def test_model_metadata_shapes(served):
    """Dynamic dimensions are -1 (checked literally, not only against the oracle)."""
    meta = served["clients"]["iris"].get_model_metadata("iris")
    assert tensor_entries(meta["inputs"]) == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}], meta
    assert tensor_entries(meta["outputs"]) == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ], meta


def test_model_metadata_with_version(served):
    meta = served["clients"]["iris"].get_model_metadata("iris", model_version="1")
    assert meta["name"] == "iris", meta


def test_model_ready(served):
    client = served["clients"]["iris"]
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", model_version="1")
    assert not client.is_model_ready("iris", model_version="2")
    assert not client.is_model_ready("no-such-model")


def test_other_apis_models_are_not_under_this_endpoint(served):
    client = served["clients"]["iris"]
    assert not client.is_model_ready("add")
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("add")


# ------------------------------------------------------------------------------------------
# inference


@pytest.mark.parametrize(
    "binary_in, binary_out",
    [(True, True), (False, False), (True, False), (False, True)],
    ids=["binary", "json", "binary-in-json-out", "json-in-binary-out"],
)
def test_infer(served, binary_in, binary_out):
    client = served["clients"]["iris"]
    result = client.infer(
        "iris",
        v2_inputs({"input": IRIS_ROWS}, binary=binary_in),
        outputs=v2_outputs(["label", "probabilities"], binary=binary_out),
    )
    check_iris_result(served, result)
    response = result.get_response()
    assert response["model_name"] == "iris", response


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_compressed_request(served, algorithm, binary):
    client = served["clients"]["iris"]
    result = client.infer(
        "iris",
        v2_inputs({"input": IRIS_ROWS}, binary=binary),
        outputs=v2_outputs(["label", "probabilities"], binary=binary),
        request_compression_algorithm=algorithm,
    )
    check_iris_result(served, result)


def test_infer_with_model_version(served):
    client = served["clients"]["iris"]
    result = client.infer(
        "iris", v2_inputs({"input": IRIS_ROWS}), model_version="1", outputs=v2_outputs(["label", "probabilities"])
    )
    check_iris_result(served, result)


def test_infer_with_another_model_version_fails(served):
    client = served["clients"]["iris"]
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("iris", v2_inputs({"input": IRIS_ROWS}), model_version="2", outputs=v2_outputs(["label"]))
    assert "2" in excinfo.value.message(), v2_error(excinfo)


def test_infer_one_requested_output(served):
    client = served["clients"]["iris"]
    result = client.infer("iris", v2_inputs({"input": IRIS_ROWS}), outputs=v2_outputs(["probabilities"]))
    check_iris_result(served, result, outputs=("probabilities",))
    assert result.as_numpy("label") is None, result.get_response()


def test_infer_without_requested_outputs_returns_all(served):
    client = served["clients"]["iris"]
    result = client.infer("iris", v2_inputs({"input": IRIS_ROWS}))
    check_iris_result(served, result)


def test_infer_single_row(served):
    client = served["clients"]["iris"]
    row = IRIS_ROWS[2:3]
    result = client.infer("iris", v2_inputs({"input": row}), outputs=v2_outputs(["label", "probabilities"]))
    check_iris_result(served, result, rows=row)


@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_mlp_at_a_custom_endpoint(served, batch, binary):
    client = served["clients"]["mlp"]
    x = np.random.RandomState(batch).standard_normal((batch, 64)).astype(np.float32)
    result = client.infer("mlp", v2_inputs({"x": x}, binary=binary), outputs=v2_outputs(["logits"], binary=binary))
    logits = result.as_numpy("logits")
    assert logits is not None and logits.shape == (batch, 10), result.get_response()
    want = run_oracle(model_file(served, "mlp"), {"x": x})["logits"]
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_two_inputs(served, binary):
    client = served["clients"]["add"]
    a = np.array([[1.0, 2.0], [3.5, -4.25], [1e6, -1e-6]], dtype=np.float32)
    b = np.array([[0.5, 0.25], [-3.5, 4.25], [1.0, 1.0]], dtype=np.float32)
    result = client.infer("add", v2_inputs({"b": b, "a": a}, binary=binary), outputs=v2_outputs(["sum"], binary=binary))
    want = run_oracle(model_file(served, "add"), {"a": a, "b": b})["sum"]
    np.testing.assert_array_equal(result.as_numpy("sum"), want)


def test_v2_over_plain_http(served):
    """The REST paths themselves (what tritonclient builds): GET metadata, POST a JSON infer."""
    g = served["gyrus"]
    r = g.get_http("/iris/v2/health/ready")
    assert r.status_code == 200, g.diag("iris", resp=r)
    r = g.get_http("/iris/v2/models/iris")
    assert r.status_code == 200 and r.json()["name"] == "iris", g.diag("iris", resp=r)
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROWS[0].tolist()}]}
    r = g.post("/iris/v2/models/iris/infer", json=body)
    assert r.status_code == 200, g.diag("iris", resp=r)
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    want = run_oracle(model_file(served, "iris"), {"input": IRIS_ROWS[:1]})
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [1], r.text
    assert outputs["label"]["data"] == want["label"].tolist(), r.text
    assert outputs["probabilities"]["shape"] == [1, 3], r.text
    np.testing.assert_allclose(outputs["probabilities"]["data"], want["probabilities"].ravel(), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------
# the gateway root


def test_root_metadata_by_api_name(served):
    for api in APIS:
        meta = served["root"].get_model_metadata(api)
        want = expected_metadata(api, model_file(served, api))
        assert meta["name"] == api and meta["platform"] == "onnxruntime_onnx", meta
        assert tensor_entries(meta["inputs"]) == want["inputs"], meta


def test_root_infer_by_api_name(served):
    root = served["root"]
    assert root.is_model_ready("iris") and root.is_model_ready("mlp")
    result = root.infer("iris", v2_inputs({"input": IRIS_ROWS}), outputs=v2_outputs(["label", "probabilities"]))
    check_iris_result(served, result)
    x = np.random.RandomState(3).standard_normal((4, 64)).astype(np.float32)
    result = root.infer("mlp", v2_inputs({"x": x}, binary=False), outputs=v2_outputs(["logits"], binary=False))
    np.testing.assert_allclose(
        result.as_numpy("logits"), run_oracle(model_file(served, "mlp"), {"x": x})["logits"], rtol=1e-4, atol=1e-5
    )


def test_root_compressed_request(served):
    result = served["root"].infer(
        "add",
        v2_inputs({"a": np.ones((2, 2), np.float32), "b": np.full((2, 2), 2.5, np.float32)}),
        outputs=v2_outputs(["sum"]),
        request_compression_algorithm="gzip",
    )
    np.testing.assert_array_equal(result.as_numpy("sum"), np.full((2, 2), 3.5, np.float32))


def test_root_unknown_model(served):
    root = served["root"]
    assert not root.is_model_ready("no-such-model")
    with pytest.raises(InferenceServerException):
        root.infer("no-such-model", v2_inputs({"input": IRIS_ROWS}))


def test_the_simple_json_api_still_answers_at_the_endpoint(served):
    """The v2 paths live under the endpoint; POST to the endpoint itself is the simple API."""
    g = served["gyrus"]
    r = g.post("/team/mlp-v2", json={"x": [[0.0] * 64]})
    assert r.status_code == 200 and list(r.json()) == ["logits"], g.diag("mlp", resp=r)
    r = g.get_http("/iris/v2")
    assert r.status_code == 200 and r.json()["name"] == "gyrus", g.diag("iris", resp=r)
