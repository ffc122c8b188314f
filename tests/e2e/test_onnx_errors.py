"""Bad requests to model APIs and models that do not load.

A bad request is a 400 with `{"error": msg}` (tritonclient raises InferenceServerException with
msg) naming the input and saying what was expected and what was found; never a 500, and the
replica keeps serving (same pid, no restart). A model file that ONNX Runtime cannot load makes
`gyrus deploy` fail with a message naming the model and ONNX Runtime's error, and the API shows
status "error".
"""

import json
import struct

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from onnx_helpers import model_api, model_project, oracle, run_oracle, v2_client, v2_error, v2_inputs, v2_outputs

APIS = ("add", "fixed", "iris")


@pytest.fixture(scope="module")
def served(gyrus, projects_dir, onnx_models):
    proj = model_project(
        projects_dir,
        "errors",
        [model_api(a, f"{a}.onnx") for a in APIS],
        models={f"{a}.onnx": onnx_models / f"{a}.onnx" for a in APIS},
    )
    proc = gyrus.deploy(proj)
    assert proc.returncode == 0, gyrus.diag(*APIS, proc=proc)
    pids = {a: gyrus.replica_pids(a) for a in APIS}
    for a in APIS:
        assert len(pids[a]) == 1, (a, gyrus.describe(a))
    clients = {a: v2_client(gyrus, a) for a in APIS}
    yield {"gyrus": gyrus, "models": onnx_models, "pids": pids, "clients": clients}
    for c in clients.values():
        c.close()


def bad_json(g, api, endpoint=None, expect=(), **kw):
    """POSTs a bad request; asserts 400 with a JSON error containing every `expect` string."""
    r = g.post(endpoint or f"/{api}", **kw)
    assert r.status_code == 400, g.diag(api, resp=r)
    assert r.headers["content-type"].startswith("application/json"), g.diag(api, resp=r)
    try:
        error = r.json()["error"]
    except (ValueError, KeyError):
        raise AssertionError(f"no JSON error\n{g.diag(api, resp=r)}") from None
    assert isinstance(error, str) and error, r.text
    for s in expect:
        assert s in error, f"{s!r} not in the error {error!r}"
    return error


def bad_v2(served, api, inputs, expect=(), outputs=None, **kw):
    """Runs a tritonclient infer that must fail with 400; checks the message."""
    with pytest.raises(InferenceServerException) as excinfo:
        served["clients"][api].infer(api, inputs, outputs=outputs, **kw)
    e = excinfo.value
    assert e.status() == "400", v2_error(excinfo) + "\n" + served["gyrus"].diag(api)
    for s in expect:
        assert s in e.message(), f"{s!r} not in the error: {v2_error(excinfo)}"
    return e.message()


A = [[1.0, 2.0]]
B = [[3.0, 4.0]]
F32 = np.float32
BINARY = [True, False]
BINARY_IDS = ["binary", "json"]


# ------------------------------------------------------------------------------------------
# the simple JSON API


def test_json_missing_input(served):
    bad_json(served["gyrus"], "add", json={"a": A}, expect=['missing input "b"'])


def test_json_unknown_input(served):
    bad_json(served["gyrus"], "add", json={"a": A, "b": B, "c": B}, expect=['unknown input "c"'])


def test_json_wrong_rank(served):
    x = [[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]]  # [2, 3, 1] for [2, 3]
    bad_json(served["gyrus"], "fixed", json={"x": x}, expect=['"x"', "[2, 3]", "[2, 3, 1]"])


def test_json_wrong_fixed_dimension(served):
    x = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]  # [3, 3] for [2, 3]
    bad_json(served["gyrus"], "fixed", json={"x": x}, expect=['"x"', "[2, 3]", "[3, 3]"])


def test_json_wrong_dynamic_model_dimension(served):
    """iris takes [N, 4]: three features is a shape error naming the found shape."""
    bad_json(served["gyrus"], "iris", json={"input": [[1.0, 2.0, 3.0]]}, expect=['"input"', "[1, 3]"])


def test_json_ragged_list(served):
    bad_json(served["gyrus"], "fixed", json={"x": [[1.0, 2.0, 3.0], [4.0, 5.0]]})


def test_json_strings_for_a_float_input(served):
    bad_json(served["gyrus"], "add", json={"a": [["one", "two"]], "b": B})


def test_json_malformed_body(served):
    bad_json(
        served["gyrus"],
        "add",
        data=b'{"a": [[1.0, 2.0]], "b": ',
        headers={"Content-Type": "application/json"},
    )


def test_json_bare_list_for_a_two_input_model(served):
    bad_json(served["gyrus"], "add", json=[[1.0, 2.0]])


def test_json_object_of_wrong_shape(served):
    bad_json(served["gyrus"], "add", json={"a": {"nested": "object"}, "b": B})


# ------------------------------------------------------------------------------------------
# the Open Inference Protocol (tritonclient)


@pytest.mark.parametrize("binary", BINARY, ids=BINARY_IDS)
def test_v2_missing_input(served, binary):
    bad_v2(served, "add", v2_inputs({"a": np.array(A, F32)}, binary=binary), expect=['missing input "b"'])


@pytest.mark.parametrize("binary", BINARY, ids=BINARY_IDS)
def test_v2_unknown_input(served, binary):
    inputs = v2_inputs({"a": np.array(A, F32), "b": np.array(B, F32), "c": np.array(B, F32)}, binary=binary)
    bad_v2(served, "add", inputs, expect=['unknown input "c"'])


@pytest.mark.parametrize("binary", BINARY, ids=BINARY_IDS)
def test_v2_wrong_datatype(served, binary):
    inputs = v2_inputs({"a": np.array([[1, 2]], np.int64), "b": np.array(B, F32)}, binary=binary)
    bad_v2(served, "add", inputs, expect=['"a"', "expected FP32", "found INT64"])


@pytest.mark.parametrize("binary", BINARY, ids=BINARY_IDS)
def test_v2_wrong_rank(served, binary):
    x = np.arange(6, dtype=F32).reshape(2, 3, 1)
    bad_v2(served, "fixed", v2_inputs({"x": x}, binary=binary), expect=['"x"', "[2, 3]", "[2, 3, 1]"])


@pytest.mark.parametrize("binary", BINARY, ids=BINARY_IDS)
def test_v2_fewer_dimensions_are_a_wrong_rank(served, binary):
    """Unlike the simple JSON API, the protocol takes shapes as given (no leading 1s added)."""
    x = np.arange(6, dtype=F32)
    bad_v2(served, "fixed", v2_inputs({"x": x}, binary=binary), expect=['"x"', "[2, 3]", "[6]"])


@pytest.mark.parametrize("binary", BINARY, ids=BINARY_IDS)
def test_v2_wrong_fixed_dimension(served, binary):
    x = np.arange(12, dtype=F32).reshape(4, 3)
    bad_v2(served, "fixed", v2_inputs({"x": x}, binary=binary), expect=['"x"', "[2, 3]", "[4, 3]"])


def test_v2_unknown_output(served):
    inputs = v2_inputs({"a": np.array(A, F32), "b": np.array(B, F32)})
    bad_v2(served, "add", inputs, outputs=v2_outputs(["difference"]), expect=['"difference"'])


def test_v2_unknown_model_version(served):
    with pytest.raises(InferenceServerException) as excinfo:
        served["clients"]["fixed"].infer("fixed", v2_inputs({"x": np.zeros((2, 3), F32)}), model_version="7")
    assert excinfo.value.status() is not None and excinfo.value.status().startswith("4"), v2_error(excinfo)


def test_v2_unknown_model(served):
    with pytest.raises(InferenceServerException) as excinfo:
        served["clients"]["fixed"].infer("nope", v2_inputs({"x": np.zeros((2, 3), F32)}))
    assert excinfo.value.status() is not None and excinfo.value.status().startswith("4"), v2_error(excinfo)


# ------------------------------------------------------------------------------------------
# the Open Inference Protocol over raw HTTP (what a client library would never send)

INFER = "/fixed/v2/models/fixed/infer"


def test_v2_malformed_json(served):
    bad_json(served["gyrus"], "fixed", INFER, data=b'{"inputs": [', headers={"Content-Type": "application/json"})


def test_v2_missing_inputs_field(served):
    bad_json(served["gyrus"], "fixed", INFER, json={"outputs": [{"name": "y"}]})


def test_v2_json_element_count_does_not_match_shape(served):
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    bad_json(served["gyrus"], "fixed", INFER, json=body, expect=['"x"'])


def test_v2_unknown_datatype(served):
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP33", "data": [0] * 6}]}
    bad_json(served["gyrus"], "fixed", INFER, json=body, expect=["FP33"])


def binary_body(header: dict, payload: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + payload, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def test_v2_binary_size_does_not_match_shape(served):
    payload = np.arange(3, dtype=F32).tobytes()  # 12 bytes for [2, 3] FP32 (24 needed)
    header = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}
    body, headers = binary_body(header, payload)
    bad_json(served["gyrus"], "fixed", INFER, data=body, headers=headers, expect=['"x"'])


def test_v2_binary_data_beyond_the_body(served):
    payload = np.arange(6, dtype=F32).tobytes()
    header = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 48}}]}
    body, headers = binary_body(header, payload)
    bad_json(served["gyrus"], "fixed", INFER, data=body, headers=headers)


def test_v2_header_length_beyond_the_body(served):
    body, headers = binary_body({"inputs": []}, b"")
    headers["Inference-Header-Content-Length"] = str(len(body) + 100)
    bad_json(served["gyrus"], "fixed", INFER, data=body, headers=headers)


def test_v2_truncated_bytes_element(served):
    """A BYTES element whose 4-byte length prefix promises more than there is (a 400 whether
    the framing or the datatype, BYTES for an FP32 input, is checked first)."""
    payload = struct.pack("<I", 100) + b"short"
    header = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(payload)}}]}
    body, headers = binary_body(header, payload)
    bad_json(served["gyrus"], "fixed", INFER, data=body, headers=headers)


def test_v2_corrupt_gzip_body(served):
    body = b"\x1f\x8b\x08\x00" + b"this is not a gzip stream"
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    bad_json(served["gyrus"], "fixed", INFER, data=body, headers=headers)


# ------------------------------------------------------------------------------------------
# after all of the above


def test_the_apis_kept_serving_in_the_same_replicas(served):
    """Runs after the bad requests above (pytest keeps file order)."""
    g = served["gyrus"]
    r = g.post("/add", json={"a": A, "b": B})
    assert r.status_code == 200 and r.json() == {"sum": [[4.0, 6.0]]}, g.diag("add", resp=r)
    x = np.arange(6, dtype=F32).reshape(2, 3)
    result = served["clients"]["fixed"].infer("fixed", v2_inputs({"x": x}), outputs=v2_outputs(["y"]))
    np.testing.assert_array_equal(result.as_numpy("y"), run_oracle(served["models"] / "fixed.onnx", {"x": x})["y"])
    for api in APIS:
        assert g.replica_pids(api) == served["pids"][api], (api, g.describe(api))
        info = g.describe(api)
        assert all(rep.get("restarts", 0) == 0 for rep in info["replica_details"]), info
        assert g.get(api)["status"] == "live"
    log = "".join(g.api_log(a) for a in APIS)
    assert "panicked" not in log, log[-3000:]


# ------------------------------------------------------------------------------------------
# models that do not load


def ort_load_error(path) -> str:
    """The part of ONNX Runtime's own load error that any binding repeats."""
    try:
        oracle(path)
    except Exception as e:  # noqa: BLE001 - onnxruntime's exception classes vary
        message = str(e)
    else:
        raise AssertionError(f"onnxruntime loaded {path}")
    assert "protobuf parsing failed" in message.lower(), message
    return "protobuf parsing failed"


def assert_load_failure(g, proc, api, mention):
    out = (proc.stdout or "") + (proc.stderr or "")
    assert proc.returncode != 0, g.diag(api, proc=proc)
    assert mention in out, f"{mention!r} not in the deploy output\n{g.diag(api, proc=proc)}"
    assert "protobuf parsing failed" in out.lower(), g.diag(api, proc=proc)
    info = g.get(api)
    assert info["status"] == "error", info
    assert "protobuf parsing failed" in (info["error"] or "").lower(), info
    assert mention in (info["error"] or ""), info


def test_corrupt_model_fails_the_deploy(gyrus, projects_dir, onnx_models, served):
    ort_load_error(onnx_models / "corrupt.onnx")
    proj = model_project(
        projects_dir,
        "corrupt",
        [model_api("broken-model", "corrupt.onnx")],
        models={"corrupt.onnx": onnx_models / "corrupt.onnx"},
    )
    proc = gyrus.deploy(proj)
    assert_load_failure(gyrus, proc, "broken-model", "corrupt.onnx")
    # No replica is ready: 503, not 404, and not 500.
    r = gyrus.post("/broken-model", json=[[1.0, 2.0]])
    assert r.status_code == 503, gyrus.diag("broken-model", resp=r)
    # The other APIs are undisturbed.
    assert gyrus.get("add")["status"] == "live"


def test_fixing_the_model_makes_the_api_live(gyrus, projects_dir, onnx_models):
    proj = model_project(
        projects_dir,
        "corrupt",
        [model_api("broken-model", "corrupt.onnx")],
        models={"corrupt.onnx": onnx_models / "iris.onnx"},  # the same path, a good model now
    )
    gyrus.deploy_ok(proj, "broken-model")
    rows = [[5.1, 3.5, 1.4, 0.2]]
    r = gyrus.post("/broken-model", json={"input": rows})
    assert r.status_code == 200, gyrus.diag("broken-model", resp=r)
    assert r.json()["label"] == run_oracle(onnx_models / "iris.onnx", {"input": rows})["label"].tolist()
    assert gyrus.get("broken-model")["error"] is None


def test_one_corrupt_model_of_several_fails_the_deploy(gyrus, projects_dir, onnx_models):
    spec = model_api(
        "half-broken",
        predictor={"models": [{"name": "good", "model": "iris.onnx"}, {"name": "bad", "model": "models/corrupt.onnx"}]},
    )
    proj = model_project(
        projects_dir,
        "half-broken",
        [spec],
        models={"iris.onnx": onnx_models / "iris.onnx", "models/corrupt.onnx": onnx_models / "corrupt.onnx"},
    )
    proc = gyrus.deploy(proj)
    assert_load_failure(gyrus, proc, "half-broken", "corrupt.onnx")
    info = gyrus.get("half-broken")
    assert "bad" in info["error"], info  # the model's name


def test_corrupt_model_of_an_onnx_predictor_fails_the_deploy(gyrus, projects_dir, onnx_models):
    predictor = (
        "class ONNXPredictor:\n"
        "    def __init__(self, onnx_client, config):\n"
        "        self.client = onnx_client\n"
        "\n"
        "    def predict(self, payload):\n"
        "        return 'never'\n"
    )
    spec = model_api("broken-predictor", "corrupt.onnx", predictor={"path": "predictor.py"})
    proj = model_project(
        projects_dir,
        "broken-predictor",
        [spec],
        models={"corrupt.onnx": onnx_models / "corrupt.onnx"},
        files={"predictor.py": predictor},
    )
    proc = gyrus.deploy(proj)
    assert_load_failure(gyrus, proc, "broken-predictor", "corrupt.onnx")
