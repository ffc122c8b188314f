"""Every tensor datatype a model API serves, through one multi-model API of Identity models
(scripts/make_models.py: identity_<dtype>.onnx, "x" -> "y", shape [batch, 3]). Each dtype
round-trips exactly over the Open Inference Protocol, with binary tensor data and with JSON
tensors (BYTES for the string model, np.object_ arrays of bytes; FP16 as np.float16), and the
numeric ones also through the simple JSON API (`?model=NAME`). The samples hold each type's
extremes (integer min/max, uint64 max, float max and smallest normal, non-ASCII text).
"""

import numpy as np
import pytest

from onnx_helpers import (
    DTYPE_TO_V2,
    as_bytes_array,
    identity_dtypes,
    identity_sample,
    model_api,
    model_project,
    tensor_entries,
    v2_client,
    v2_error,
    v2_inputs,
    v2_outputs,
)

API = "dtypes"
DTYPES = identity_dtypes()
NUMERIC = [d for d in DTYPES if d not in ("bool", "string")]
FLOATS = ["float16", "float32", "float64"]


def model_name(dtype):
    return f"identity_{dtype}"


@pytest.fixture(scope="module")
def served(gyrus, projects_dir, onnx_models):
    files = {f"models/{model_name(d)}.onnx": onnx_models / f"{model_name(d)}.onnx" for d in DTYPES}
    spec = model_api(
        API,
        predictor={"models": [{"name": model_name(d), "model": f"models/{model_name(d)}.onnx"} for d in DTYPES]},
    )
    proj = model_project(projects_dir, API, [spec], models=files)
    gyrus.deploy_ok(proj, API)
    client = v2_client(gyrus, API)
    root = v2_client(gyrus)
    yield {"gyrus": gyrus, "client": client, "root": root}
    client.close()
    root.close()


def round_trip(client, dtype, x, binary):
    name = model_name(dtype)
    result = client.infer(
        name,
        v2_inputs({"x": x}, binary=binary, datatypes={"x": DTYPE_TO_V2[dtype]}),
        outputs=v2_outputs(["y"], binary=binary),
    )
    y = result.as_numpy("y")
    assert y is not None, result.get_response()
    out = next(o for o in result.get_response()["outputs"] if o["name"] == "y")
    assert out["datatype"] == DTYPE_TO_V2[dtype], out
    assert list(out["shape"]) == list(x.shape), out
    return y


@pytest.mark.parametrize("dtype", DTYPES)
def test_metadata_datatype(served, dtype):
    meta = served["client"].get_model_metadata(model_name(dtype))
    want = [{"name": "x", "datatype": DTYPE_TO_V2[dtype], "shape": [-1, 3]}]
    assert tensor_entries(meta["inputs"]) == want, meta
    assert tensor_entries(meta["outputs"]) == [{**want[0], "name": "y"}], meta


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(served, dtype, binary):
    x = identity_sample(dtype)
    y = round_trip(served["client"], dtype, x, binary)
    assert y.shape == x.shape, (y.shape, x.shape)
    if dtype == "string":
        # Binary BYTES come back as bytes, JSON ones as str: compare the bytes.
        assert as_bytes_array(y).tolist() == x.tolist(), (y, x)
    elif binary:
        assert y.dtype == x.dtype, (y.dtype, x.dtype)
        assert y.tobytes() == x.tobytes(), (y, x)  # bit for bit, the sign of -0.0 included
    else:
        assert y.dtype == x.dtype, (y.dtype, x.dtype)
        assert np.array_equal(y, x), (y, x)


@pytest.mark.parametrize("dtype", FLOATS)
def test_float_specials_in_binary(served, dtype):
    """NaN and infinities (which JSON cannot carry) survive binary tensor data."""
    x = np.array([[np.nan, np.inf, -np.inf], [-0.0, 1.0, -1.0]], dtype=dtype)
    y = round_trip(served["client"], dtype, x, binary=True)
    assert y.tobytes() == x.tobytes(), (y, x)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_larger_batch(served, binary):
    x = np.arange(-300, 300, dtype=np.int32).reshape(200, 3)
    y = round_trip(served["client"], "int32", x, binary)
    np.testing.assert_array_equal(y, x)


def test_empty_strings_and_unicode(served):
    x = np.array([[b"", "\u00fcber \U0001f600".encode(), b"x" * 1000]], dtype=np.object_)
    for binary in (True, False):
        y = round_trip(served["client"], "string", x, binary)
        assert as_bytes_array(y).tolist() == x.tolist(), (binary, y)


@pytest.mark.parametrize("dtype", ["int64", "string", "float16", "bool"])
def test_round_trip_at_the_gateway_root(served, dtype):
    x = identity_sample(dtype)
    y = round_trip(served["root"], dtype, x, binary=True)
    if dtype == "string":
        assert as_bytes_array(y).tolist() == x.tolist(), y
    else:
        assert y.tobytes() == x.tobytes(), (y, x)


@pytest.mark.parametrize("dtype", NUMERIC)
def test_simple_json_api(served, dtype):
    """Numbers in, numbers out; integers stay JSON integers (uint64 max included)."""
    g = served["gyrus"]
    x = identity_sample(dtype)
    r = g.post(f"/{API}?model={model_name(dtype)}", json={"x": x.tolist()})
    assert r.status_code == 200, g.diag(API, resp=r)
    got = r.json()
    assert list(got) == ["y"], got
    if dtype.startswith(("int", "uint")):
        assert got["y"] == x.tolist(), (got, x.tolist())
        assert all(type(v) is int for row in got["y"] for v in row), got
    else:
        y = np.array(got["y"], dtype=x.dtype)
        assert np.array_equal(y, x), (got, x.tolist())


def test_wrong_datatype_names_both(served):
    """An INT32 tensor for the INT64 model: the error says what was expected and found."""
    from tritonclient.utils import InferenceServerException

    x = np.array([[1, 2, 3]], dtype=np.int32)
    with pytest.raises(InferenceServerException) as excinfo:
        served["client"].infer(model_name("int64"), v2_inputs({"x": x}), outputs=v2_outputs(["y"]))
    msg = excinfo.value.message()
    assert excinfo.value.status() == "400", v2_error(excinfo)
    assert "expected INT64" in msg and "found INT32" in msg, v2_error(excinfo)
