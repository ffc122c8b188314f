"""Adaptive batching of model APIs (`predictor.batching`): under concurrent load every request
gets exactly its own answer (bit for bit through an identity model, and the MLP's answer
from onnxruntime run in this process), and a model without a dynamic batch axis is refused at
deploy with a message naming the tensor.
"""

import json
import time

import numpy as np

from onnx_helpers import model_api, model_project, parallel_posts, run_oracle


def test_batched_answers_are_each_requests_own(gyrus, projects_dir, onnx_models):
    apis = [
        model_api("batch-id", "identity_float32.onnx", predictor={"batching": {"max_batch_size": 16}}),
        model_api("batch-mlp", "mlp.onnx", predictor={"batching": {}}),
    ]
    proj = model_project(
        projects_dir,
        "batching",
        apis,
        models={m: onnx_models / m for m in ("identity_float32.onnx", "mlp.onnx")},
    )
    proc = gyrus.deploy(proj)
    assert proc.returncode == 0, gyrus.diag("batch-id", "batch-mlp", proc=proc)

    rng = np.random.RandomState(3)
    # Identity: 1 to 4 rows per request, random bits as float32 (NaN payloads and subnormals
    # included): each answer must be the request's own bytes.
    rows = [rng.randint(1, 5) for _ in range(96)]
    xs = [rng.standard_normal((n, 3)).astype(np.float32) * 10.0 ** rng.randint(-30, 30) for n in rows]
    bodies = [{"x": x.tolist()} for x in xs]
    answers = parallel_posts(gyrus.url("/batch-id"), bodies, threads=24)
    for x, (status, text) in zip(xs, answers):
        assert status == 200, text
        got = np.asarray(json.loads(text)["y"], dtype=np.float32)
        assert got.shape == x.shape and got.tobytes() == x.tobytes()

    # What the replica reports (once a second): every request, and runs that held several.
    deadline = time.time() + 10
    while True:
        [stats] = gyrus.describe("batch-id")["models"]
        if stats["requests"] == len(bodies) or time.time() > deadline:
            break
        time.sleep(0.3)
    assert stats["batching"] is True and stats["requests"] == len(bodies), stats
    assert stats["runs"] < stats["requests"], ("no run held several requests", stats)
    assert sum(stats["batch_sizes"]) == stats["runs"], stats
    assert stats["shed_queue_full"] == stats["shed_deadline"] == 0, stats
    text = gyrus.ok("describe", "batch-id").stdout
    assert "BATCHING" in text and "batch-id: runs by rows:" in text, text

    mlp_x = [rng.standard_normal((rng.randint(1, 4), 64)).astype(np.float32) for _ in range(64)]
    answers = parallel_posts(gyrus.url("/batch-mlp"), [{"x": x.tolist()} for x in mlp_x], threads=24)
    for x, (status, text) in zip(mlp_x, answers):
        assert status == 200, text
        want = run_oracle(onnx_models / "mlp.onnx", {"x": x})["logits"]
        np.testing.assert_allclose(np.asarray(json.loads(text)["logits"]), want, rtol=1e-5, atol=1e-5)


def test_a_model_without_a_dynamic_batch_axis_is_refused(gyrus, projects_dir, onnx_models):
    api = model_api("batch-fixed", "fixed.onnx", predictor={"batching": {}})
    proj = model_project(projects_dir, "batch-fixed", [api], models={"fixed.onnx": onnx_models / "fixed.onnx"})
    proc = gyrus.deploy(proj)
    assert proc.returncode != 0, gyrus.diag("batch-fixed", proc=proc)
    assert (
        'model "batch-fixed" cannot be batched: batching needs a dynamic batch axis' in proc.stderr
        and 'input "x" has shape [2, 3]' in proc.stderr
    ), gyrus.diag("batch-fixed", proc=proc)


SERVER_SIDE = r'''
class PythonPredictor:
    def __init__(self, config):
        self.wrong = config.get("wrong", False)

    def predict(self, payload):
        if self.wrong:
            return {"not": "a list"}
        return [{"i": p["i"], "batch": len(payload)} for p in payload]
'''


def test_cortex_server_side_batching_gives_python_predictors_lists(gyrus, project):
    api = {
        "name": "ssb",
        "predictor": {
            "type": "python",
            "path": "predictor.py",
            "server_side_batching": {"max_batch_size": 8, "batch_interval": "200ms"},
        },
        "autoscaling": {"threads_per_worker": 8},
    }
    proj = project("ssb", SERVER_SIDE, api=api)
    gyrus.deploy_ok(proj, "ssb")
    answers = parallel_posts(gyrus.url("/ssb"), [{"i": i} for i in range(32)], threads=16)
    batches = []
    for i, (status, text) in enumerate(answers):
        assert status == 200, text
        body = json.loads(text)
        assert body["i"] == i, body
        batches.append(body["batch"])
    assert max(batches) > 1 and max(batches) <= 8, batches

    wrong = {**api, "name": "ssb-wrong", "predictor": {**api["predictor"], "config": {"wrong": True}}}
    proj = project("ssb-wrong", SERVER_SIDE, api=wrong)
    gyrus.deploy_ok(proj, "ssb-wrong")
    r = gyrus.post("/ssb-wrong", json={"i": 1})
    assert r.status_code == 500, r.text
    assert "must return a list of 1 responses, one per payload; it returned dict" in r.json()["error"], r.text


ONNX_PREDICTOR = r'''
import numpy as np


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload):
        [logits] = self.client.predict({"x": np.asarray(payload["x"], dtype=np.float32)})
        return {"logits": logits.tolist()}
'''


def test_model_calls_of_python_workers_are_batched_too(gyrus, projects_dir, onnx_models):
    api = {
        "name": "batch-py",
        "predictor": {"type": "onnx", "path": "predictor.py", "model": "mlp.onnx", "batching": {}},
        "autoscaling": {"threads_per_worker": 8, "workers_per_replica": 2},
    }
    proj = model_project(
        projects_dir, "batch-py", [api], models={"mlp.onnx": onnx_models / "mlp.onnx"}, files={"predictor.py": ONNX_PREDICTOR}
    )
    proc = gyrus.deploy(proj)
    assert proc.returncode == 0, gyrus.diag("batch-py", proc=proc)
    rng = np.random.RandomState(5)
    xs = [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(64)]
    answers = parallel_posts(gyrus.url("/batch-py"), [{"x": x.tolist()} for x in xs], threads=16)
    for x, (status, text) in zip(xs, answers):
        assert status == 200, text
        want = run_oracle(onnx_models / "mlp.onnx", {"x": x})["logits"]
        np.testing.assert_allclose(np.asarray(json.loads(text)["logits"]), want, rtol=1e-5, atol=1e-5)
    deadline = time.time() + 10
    while True:
        [stats] = gyrus.describe("batch-py")["models"]
        if stats["requests"] == len(xs) or time.time() > deadline:
            break
        time.sleep(0.3)
    assert stats["requests"] == len(xs) and stats["runs"] < stats["requests"], stats


HEAVY_PREDICTOR = r'''
import numpy as np


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client
        self.x = np.ones((4000, 64), dtype=np.float32)

    def predict(self, payload):
        [logits] = self.client.predict({"x": self.x})
        return {"rows": len(logits)}
'''


def test_overload_is_an_explicit_503_and_counted(gyrus, projects_dir, onnx_models):
    """Model calls of 4000 rows (milliseconds each) from 16 worker threads at once: a queue
    bound of 1 refuses some at once, and a 1 ms deadline drops some unrun; each answer is a 503
    whose body names the model and the limit, and `describe` counts exactly those."""
    expect = {
        "shed-full": (
            {"max_queue_size": 1},
            "shed_queue_full",
            'model "shed-full" already has 1 requests waiting (its batching.max_queue_size); retry later',
        ),
        "shed-late": (
            {"max_latency": "1ms"},
            "shed_deadline",
            "past the model's batching.max_latency of 1 ms; it was dropped before it ran",
        ),
    }
    for api, (batching, counter, message) in expect.items():
        spec = {
            "name": api,
            "predictor": {"type": "onnx", "path": "predictor.py", "model": "mlp.onnx", "batching": batching},
            "autoscaling": {"workers_per_replica": 2, "threads_per_worker": 8},
        }
        proj = model_project(
            projects_dir, api, [spec], models={"mlp.onnx": onnx_models / "mlp.onnx"}, files={"predictor.py": HEAVY_PREDICTOR}
        )
        proc = gyrus.deploy(proj)
        assert proc.returncode == 0, gyrus.diag(api, proc=proc)
        answers = parallel_posts(gyrus.url(f"/{api}"), [{}] * 64, threads=16)
        assert all(status in (200, 503) for status, _ in answers), answers[:3]
        shed = [text for status, text in answers if status == 503]
        assert shed and len(shed) < len(answers), (api, len(shed))
        assert all(message in json.loads(text)["error"] for text in shed), shed[0]
        deadline = time.time() + 10
        while True:
            [stats] = gyrus.describe(api)["models"]
            if stats[counter] == len(shed) or time.time() > deadline:
                break
            time.sleep(0.3)
        assert stats[counter] == len(shed), (api, stats, len(shed))
        assert stats["requests"] == len(answers) - len(shed), stats
    # A 503 from a Python predictor says when to retry, as the model APIs' do.
    from concurrent.futures import ThreadPoolExecutor

    import requests

    def post(_):
        with requests.Session() as s:
            s.trust_env = False
            return s.post(gyrus.url("/shed-full"), json={}, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        refused = [r for r in pool.map(post, range(48)) if r.status_code == 503]
    assert refused and all(r.headers.get("Retry-After") == "1" for r in refused), refused[:1]


def test_a_store_model_saved_batchable_is_batched_by_default(gyrus, projects_dir, onnx_models):
    """`gyrus.onnx.save_model(..., signatures={"run": {"batchable": True}})`, BentoML's way of
    saying the model has a dynamic batch axis: its APIs batch without a `batching` block; a
    batch_dim other than 0 is refused at deploy."""
    import subprocess
    import sys

    for name, dim in (("mlp-b", 0), ("mlp-dim1", 1)):
        code = (
            "import sys, gyrus.onnx; gyrus.onnx.save_model(sys.argv[1], sys.argv[2], "
            "signatures={'run': {'batchable': True, 'batch_dim': int(sys.argv[3])}})"
        )
        subprocess.run(
            [sys.executable, "-c", code, name, str(onnx_models / "mlp.onnx"), str(dim)],
            check=True,
            env={**gyrus.env, "GYRUS_HOME": str(gyrus.home)},
            capture_output=True,
        )
    proj = model_project(projects_dir, "store-batch", [model_api("store-batch", "mlp-b:latest")])
    proc = gyrus.deploy(proj)
    assert proc.returncode == 0, gyrus.diag("store-batch", proc=proc)
    x = np.random.RandomState(1).standard_normal((2, 64)).astype(np.float32)
    r = gyrus.post("/store-batch", json={"x": x.tolist()})
    assert r.status_code == 200, r.text
    deadline = time.time() + 10
    while not gyrus.describe("store-batch").get("models") and time.time() < deadline:
        time.sleep(0.3)  # the replica reports once a second
    [stats] = gyrus.describe("store-batch")["models"]
    assert stats["batching"] is True, stats
    # Batchable along another dimension: served unbatched by default, refused when asked.
    proj = model_project(projects_dir, "store-dim1", [model_api("store-dim1", "mlp-dim1:latest")])
    gyrus.deploy_ok(proj, "store-dim1")
    api = model_api("store-dim1-on", "mlp-dim1:latest", predictor={"batching": {}})
    proj = model_project(projects_dir, "store-dim1-on", [api])
    proc = gyrus.deploy(proj)
    assert proc.returncode != 0, gyrus.diag("store-dim1-on", proc=proc)
    assert "its store signature has batch_dim 1, and gyrus batches along dimension 0" in proc.stderr, proc.stderr
