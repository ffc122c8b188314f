"""Model APIs through the simple JSON API: `predictor.type: onnx` with a `model` and no `path`
serves the model without Python. `POST /<endpoint>` takes `{input name: nested list}` (or the
bare nested list for a single-input model) and answers `{output name: nested list}`. Every
expected value comes from onnxruntime run in this process on the same model file.
"""

import json

import numpy as np
import pytest

from onnx_helpers import model_api, model_project, parallel_posts, run_oracle

# Four iris examples, one or more of each class.
ROWS = [
    [5.1, 3.5, 1.4, 0.2],
    [6.0, 2.9, 4.5, 1.5],
    [6.9, 3.1, 5.4, 2.1],
    [5.7, 2.8, 4.1, 1.3],
]

APIS = ("iris", "mlp", "add", "fixed")


@pytest.fixture(scope="module")
def served(gyrus, projects_dir, onnx_models):
    """One project, four model APIs (the mlp in a subfolder: a relative path with a folder)."""
    proj = model_project(
        projects_dir,
        "models",
        [
            model_api("iris", "iris.onnx"),
            model_api("mlp", "nets/mlp.onnx"),
            model_api("add", "add.onnx"),
            model_api("fixed", "fixed.onnx"),
        ],
        models={
            "iris.onnx": onnx_models / "iris.onnx",
            "nets/mlp.onnx": onnx_models / "mlp.onnx",
            "add.onnx": onnx_models / "add.onnx",
            "fixed.onnx": onnx_models / "fixed.onnx",
        },
    )
    proc = gyrus.deploy(proj)
    assert proc.returncode == 0, gyrus.diag(*APIS, proc=proc)
    for api in APIS:
        assert f"{api} is live at " in proc.stdout, gyrus.diag(*APIS, proc=proc)
    return {"gyrus": gyrus, "dir": proj, "models": onnx_models}


def post_ok(g, endpoint, api, **kw):
    r = g.post(endpoint, **kw)
    assert r.status_code == 200, g.diag(api, resp=r)
    assert r.headers["content-type"].startswith("application/json"), g.diag(api, resp=r)
    try:
        return r.json()
    except ValueError:
        raise AssertionError(f"not JSON\n{g.diag(api, resp=r)}") from None


def assert_iris(got, rows, models, g, what=""):
    """`got` is the JSON answer for `rows`: labels exact (JSON ints), probabilities close."""
    want = run_oracle(models / "iris.onnx", {"input": rows})
    assert sorted(got) == ["label", "probabilities"], (what, got)
    assert got["label"] == want["label"].tolist(), (what, got, want)
    assert all(type(v) is int for v in got["label"]), f"labels must be JSON integers: {got['label']!r}"
    probs = np.array(got["probabilities"], dtype=np.float64)
    assert probs.shape == want["probabilities"].shape, (what, got)
    np.testing.assert_allclose(probs, want["probabilities"], rtol=1e-5, atol=1e-7, err_msg=what)


def test_all_model_apis_are_live(served):
    g = served["gyrus"]
    by_name = {i["name"]: i for i in g.json("get", "-o", "json")}
    for api in APIS:
        info = by_name[api]
        assert info["status"] == "live", info
        assert info["replicas"]["ready"] == info["replicas"]["requested"] == 1, info
        assert info["error"] is None, info


def test_named_input(served):
    g = served["gyrus"]
    got = post_ok(g, "/iris", "iris", json={"input": [ROWS[0]]})
    assert_iris(got, [ROWS[0]], served["models"], g)


def test_bare_nested_list_for_a_single_input_model(served):
    g = served["gyrus"]
    got = post_ok(g, "/iris", "iris", json=[ROWS[1]])
    assert_iris(got, [ROWS[1]], served["models"], g)


@pytest.mark.parametrize("bare", [False, True], ids=["named", "bare"])
def test_one_example_without_the_batch_dimension(served, bare):
    """A value with fewer dimensions than the input gets leading dimensions of 1."""
    g = served["gyrus"]
    body = ROWS[2] if bare else {"input": ROWS[2]}
    got = post_ok(g, "/iris", "iris", json=body)
    assert len(got["label"]) == 1 and len(got["probabilities"]) == 1, got
    assert_iris(got, [ROWS[2]], served["models"], g)


def test_integers_are_cast_to_the_declared_dtype(served):
    g = served["gyrus"]
    rows = [[5, 3, 1, 0], [7, 3, 6, 2]]
    got = post_ok(g, "/iris", "iris", json={"input": rows})
    assert_iris(got, rows, served["models"], g)


def test_a_batch_returns_one_result_per_row(served):
    from sklearn.datasets import load_iris

    g = served["gyrus"]
    rows = load_iris().data.tolist()  # 150 rows, three classes
    got = post_ok(g, "/iris", "iris", json={"input": rows})
    assert len(got["label"]) == len(rows) and len(got["probabilities"]) == len(rows)
    assert sorted(set(got["label"])) == [0, 1, 2], got["label"]
    assert_iris(got, rows, served["models"], g)


def test_mlp_batch(served):
    g = served["gyrus"]
    x = np.random.RandomState(7).standard_normal((3, 64)).astype(np.float32)
    got = post_ok(g, "/mlp", "mlp", json={"x": x.tolist()})
    assert list(got) == ["logits"], got.keys()
    logits = np.array(got["logits"], dtype=np.float64)
    assert logits.shape == (3, 10), logits.shape
    want = run_oracle(served["models"] / "mlp.onnx", {"x": x})["logits"]
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 17, 256])
def test_mlp_dynamic_batch_sizes(served, batch):
    g = served["gyrus"]
    x = np.random.RandomState(batch).uniform(-2, 2, (batch, 64)).astype(np.float32)
    got = post_ok(g, "/mlp", "mlp", json=x.tolist())
    want = run_oracle(served["models"] / "mlp.onnx", {"x": x})["logits"]
    np.testing.assert_allclose(np.array(got["logits"]), want, rtol=1e-4, atol=1e-5)


def test_two_inputs(served):
    g = served["gyrus"]
    a = [[1.0, 2.0], [3.5, -4.25]]
    b = [[0.5, 0.25], [-3.5, 4.25]]
    got = post_ok(g, "/add", "add", json={"a": a, "b": b})
    want = run_oracle(served["models"] / "add.onnx", {"a": a, "b": b})["sum"]
    assert got == {"sum": want.tolist()}, got


def test_two_inputs_in_any_order_without_batch_dimension(served):
    g = served["gyrus"]
    got = post_ok(g, "/add", "add", json={"b": [10, 20], "a": [1, 2]})
    assert got == {"sum": [[11.0, 22.0]]}, got


def test_fixed_shape(served):
    g = served["gyrus"]
    x = [[1.0, 2.0, 3.0], [4.0, -5.5, 6.25]]
    got = post_ok(g, "/fixed", "fixed", json={"x": x})
    want = run_oracle(served["models"] / "fixed.onnx", {"x": x})["y"]
    assert got == {"y": want.tolist()}, got


def test_predict_cli(served):
    g = served["gyrus"]
    proc = g.ok("predict", "iris", json.dumps({"input": ROWS[:2]}), apis=("iris",))
    try:
        got = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"`gyrus predict` did not print JSON\n{g.diag('iris', proc=proc)}") from None
    assert_iris(got, ROWS[:2], served["models"], g)


def test_concurrent_requests(served):
    """64 requests in flight from 16 threads, each its own batch: every answer is its own."""
    g = served["gyrus"]
    mlp = served["models"] / "mlp.onnx"
    batches = [np.random.RandomState(100 + i).standard_normal((1 + i % 5, 64)).astype(np.float32) for i in range(64)]
    results = parallel_posts(g.url("/mlp"), [{"x": x.tolist()} for x in batches], threads=16)
    for x, (status, text) in zip(batches, results):
        assert status == 200, g.diag("mlp") + f"\nstatus {status}: {text[:500]}"
        got = np.array(json.loads(text)["logits"])
        np.testing.assert_allclose(got, run_oracle(mlp, {"x": x})["logits"], rtol=1e-4, atol=1e-5)


def test_absolute_model_path(gyrus, projects_dir, onnx_models):
    """`model` may be an absolute path outside the project folder."""
    model = (onnx_models / "iris.onnx").resolve()
    proj = model_project(projects_dir, "absolute", [model_api("iris-abs", str(model))])
    gyrus.deploy_ok(proj, "iris-abs")
    got = post_ok(gyrus, "/iris-abs", "iris-abs", json={"input": ROWS})
    assert_iris(got, ROWS, onnx_models, gyrus)


def test_custom_endpoint(gyrus, projects_dir, onnx_models):
    proj = model_project(
        projects_dir,
        "custom-endpoint",
        [model_api("iris-custom", "iris.onnx", endpoint="/zoo/flowers")],
        models={"iris.onnx": onnx_models / "iris.onnx"},
    )
    gyrus.deploy_ok(proj, "iris-custom")
    got = post_ok(gyrus, "/zoo/flowers", "iris-custom", json={"input": ROWS[:1]})
    assert_iris(got, ROWS[:1], onnx_models, gyrus)
    assert gyrus.get("iris-custom")["url"] == f"{gyrus.base_url}/zoo/flowers"
