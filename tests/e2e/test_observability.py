"""Observability (issue 16): /metrics read with Prometheus' own text parser after known traffic,
the tracker's counts against the classes and values the API answered, the 503 reasons, model
metrics of a batched model API, X-Request-ID from the client to the worker's log lines, and
`gyrus logs --json`.
"""

import json
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_helpers import wait_until
from onnx_helpers import model_api, model_project, parallel_posts

CLASSIFIER = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload, headers):
        kind = payload.get("kind")
        if kind == "boom":
            raise RuntimeError("boom on purpose")
        if kind == "object":
            return {"label": payload["label"], "score": 0.5}
        if kind == "echo-id":
            return {"label": "id", "request_id": headers.get("x-request-id")}
        if kind == "unreadable":
            return {"no_label": 1}
        if kind == "big":
            return "x" * 70000
        return {"label": payload["label"]}
"""

REGRESSOR = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if payload.get("text"):
            return "not a number"
        return payload["value"]
"""

SLOW = """
import time


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        time.sleep(float(payload.get("sleep", 0)))
        return "done"
"""


def scrape(g) -> dict:
    """Every sample of /metrics, parsed by prometheus_client: {(name, frozenset(labels)): value}."""
    r = g.http.get(f"{g.base_url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def eventually(g, check, what: str, timeout: float = 15):
    """Replicas report once a second: polls /metrics until `check(samples)` holds."""
    last = {}

    def ok():
        nonlocal last
        last = scrape(g)
        return check(last)

    try:
        wait_until(ok, timeout, what=what)
    except AssertionError:
        relevant = {k: v for k, v in last.items() if "gyrus_" in k[0]}
        raise AssertionError(f"{what}; last scrape:\n" + "\n".join(f"{k[0]} {dict(k[1])} = {v}" for k, v in sorted(relevant.items(), key=str)))


@pytest.fixture(scope="module")
def apis(gyrus, project):
    classifier = project(
        "obs-classes",
        CLASSIFIER,
        api={"tracker": {"key": "label", "model_type": "classification"}},
    )
    gyrus.deploy_ok(classifier, "obs-classes")
    regressor = project("obs-values", REGRESSOR, api={"tracker": {"model_type": "regression"}})
    gyrus.deploy_ok(regressor, "obs-values")
    slow = project("obs-slow", SLOW, api={"autoscaling": {"max_replica_concurrency": 1}})
    gyrus.deploy_ok(slow, "obs-slow")
    return gyrus


def test_request_counters_equal_the_requests_sent(apis):
    g = apis
    labels = ["setosa"] * 7 + ["virginica"] * 4 + ["versicolor"] * 2
    for label in labels:
        r = g.post("/obs-classes", json={"label": label})
        assert r.status_code == 200, r.text
    # A body that is not JSON (400), a predictor that raises (500), and two answers the
    # tracker cannot read (no "label"; a missing key): counted, never failed.
    assert g.post("/obs-classes", data=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert g.post("/obs-classes", json={"kind": "boom"}).status_code == 500
    assert g.post("/obs-classes", json={"kind": "unreadable"}).status_code == 200
    assert g.post("/obs-classes", json={"kind": "unreadable"}).status_code == 200
    assert g.get_http("/obs-classes").status_code == 200

    api = "obs-classes"
    ok = len(labels) + 2

    def settled(s):
        # Every request sent, the last one included, is in the replica's reports.
        return (
            value(s, "gyrus_requests_total", api=api, route="predict", status="2xx") == ok
            and value(s, "gyrus_requests_total", api=api, route="health", status="2xx") == 1
        )

    eventually(g, settled, "the counts of obs-classes to reach the requests sent")
    s = scrape(g)
    assert value(s, "gyrus_requests_total", api=api, route="predict", status="4xx") == 1
    assert value(s, "gyrus_requests_total", api=api, route="predict", status="5xx") == 1
    assert value(s, "gyrus_requests_total", api=api, route="health", status="2xx") == 1
    # The latency histogram holds every predict, its buckets cumulative up to +Inf.
    count = value(s, "gyrus_request_duration_seconds_count", api=api, route="predict")
    assert count == ok + 2
    assert value(s, "gyrus_request_duration_seconds_bucket", api=api, route="predict", le="+Inf") == count
    assert 0 < value(s, "gyrus_request_duration_seconds_sum", api=api, route="predict") < count * 5
    # Every predict reached the Python worker (it decodes the body, so the 400 too).
    assert value(s, "gyrus_worker_duration_seconds_count", api=api) == ok + 2
    # The tracker: one count per class answered, and the unreadable answers.
    for label in set(labels):
        assert value(s, "gyrus_tracker_predictions_total", api=api, **{"class": label}) == labels.count(label), label
    assert value(s, "gyrus_tracker_invalid_total", api=api) == 2
    # The state gauges.
    assert value(s, "gyrus_api_status", api=api, status="live") == 1
    assert value(s, "gyrus_replicas", api=api, state="ready") == 1
    assert value(s, "gyrus_replicas_requested", api=api) == 1
    assert value(s, "gyrus_build_info", version=g.health()["version"]) == 1


def test_a_large_answer_goes_out_whole_and_is_not_tracked(apis):
    g = apis
    before = value(scrape(g), "gyrus_tracker_invalid_total", api="obs-classes")
    r = g.post("/obs-classes", json={"kind": "big"})
    assert r.status_code == 200 and r.text == "x" * 70000
    eventually(g, lambda s: value(s, "gyrus_tracker_invalid_total", api="obs-classes") == before + 1, "the large answer counted as invalid")


def test_regression_tracker_sums_the_values(apis):
    g = apis
    values = [1.5, -2.0, 10.25, 0.0, 3.0, 3.0]
    for v in values:
        r = g.post("/obs-values", json={"value": v})
        assert r.status_code == 200, r.text
    assert g.post("/obs-values", json={"text": True}).status_code == 200
    eventually(
        g,
        lambda s: value(s, "gyrus_tracker_value_count", api="obs-values") == len(values)
        and value(s, "gyrus_tracker_invalid_total", api="obs-values") == 1,
        "the regression count",
    )
    s = scrape(g)
    assert value(s, "gyrus_tracker_value_sum", api="obs-values") == pytest.approx(sum(values))
    assert value(s, "gyrus_tracker_invalid_total", api="obs-values") == 1
    # Quantiles come from log-scale buckets: within 19% of the true values.
    assert value(s, "gyrus_tracker_value", api="obs-values", quantile="1") == pytest.approx(10.25, rel=0.2)


def test_503_reasons_are_counted(apis):
    g = apis
    results = {}

    def slow():
        results["slow"] = g.post("/obs-slow", json={"sleep": 5}, timeout=30)

    t = threading.Thread(target=slow)
    t.start()
    # The first request holds the replica's only slot (max_replica_concurrency: 1).
    wait_until(lambda: _in_flight(g, "obs-slow") >= 1, 10, what="the slow request in flight")
    busy = g.post("/obs-slow", json={})
    t.join()
    assert busy.status_code == 503 and busy.headers.get("retry-after"), busy.text
    assert results["slow"].status_code == 200
    eventually(
        g,
        lambda s: value(s, "gyrus_requests_total", api="obs-slow", route="predict", status="2xx") == 1,
        "the slow request counted",
    )
    s = scrape(g)
    assert value(s, "gyrus_rejected_requests_total", api="obs-slow", reason="concurrency_limit") == 1
    assert value(s, "gyrus_requests_total", api="obs-slow", route="predict", status="5xx") == 1


def _in_flight(g, api) -> float:
    return value(scrape(g), "gyrus_in_flight_requests", api=api, replica=g.describe(api)["replica_details"][0]["id"])


def test_request_ids_reach_the_worker_and_the_logs(apis):
    g = apis
    # Made when the client sends none: 16 hex digits, different each time.
    a = g.post("/obs-classes", json={"label": "x"}).headers["x-request-id"]
    b = g.post("/obs-classes", json={"label": "x"}).headers["x-request-id"]
    assert a != b and len(a) == 16 and int(a, 16) >= 0
    # Kept when the client sends one; the predictor sees the same id in its headers.
    r = g.post("/obs-classes", json={"kind": "echo-id"}, headers={"X-Request-ID": "client-chosen-42"})
    assert r.headers["x-request-id"] == "client-chosen-42"
    assert r.json()["request_id"] == "client-chosen-42"
    # An id that is not 1-128 visible ASCII characters is replaced.
    r = g.post("/obs-classes", json={"label": "x"}, headers={"X-Request-ID": "x" * 129})
    assert len(r.headers["x-request-id"]) == 16
    # The worker's traceback of a failed request, and the replica's line about it, name it.
    r = g.post("/obs-classes", json={"kind": "boom"}, headers={"X-Request-ID": "failing-req-7"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "failing-req-7"
    # ?debug=true lines too.
    g.post("/obs-classes?debug=true", json={"label": "dbg"}, headers={"X-Request-ID": "debug-req-8"})
    wait_until(lambda: "debug-req-8" in g.api_log("obs-classes"), 10, what="the lines in the log")
    log = g.api_log("obs-classes")
    assert "[request_id=failing-req-7] worker 0: predict() raised an exception" in log, log[-3000:]
    assert "request_id=failing-req-7 predict answered 500" in log, log[-3000:]
    assert "[request_id=debug-req-8] debug: payload:" in log, log[-3000:]
    # `gyrus logs --json`: one object per line, with the request's id when the line has one.
    out = g.ok("logs", "obs-classes", "--json", apis=("obs-classes",)).stdout
    objects = [json.loads(line) for line in out.splitlines()]
    assert objects and all(o["api"] == "obs-classes" and "line" in o for o in objects)
    assert any(o.get("request_id") == "failing-req-7" for o in objects), out[-2000:]
    assert len(objects) == len(g.cli_logs("obs-classes").splitlines())


def test_series_for_the_dashboard(apis):
    g = apis
    for _ in range(5):
        g.post("/obs-values", json={"value": 2.0})

    def series():
        r = g.control("GET", "/apis/obs-values/series?seconds=60")
        assert r.status_code == 200, r.text
        body = r.json()
        return body if sum(p["requests"] for p in body["points"]) >= 5 else None

    body = wait_until(series, 15, what="the 5 requests in the series")
    assert body["api"] == "obs-values" and body["interval_seconds"] == 1
    points = body["points"]
    assert 1 <= len(points) <= 60
    assert all(p["t"] > 1_700_000_000 and p["replicas_requested"] == 1 for p in points)
    assert sum(p["requests"] for p in points) >= 5
    busy = [p for p in points if p["requests"]]
    assert all(p["p50_ms"] is not None and p["p99_ms"] >= p["p50_ms"] for p in busy)
    tracker = body["tracker"]
    assert tracker["model_type"] == "regression" and tracker["count"] >= 5
    # Bounds, and an unknown API.
    assert g.control("GET", "/apis/obs-values/series?seconds=601").status_code == 400
    assert g.control("GET", "/apis/nope/series").status_code == 404
    # Without the token (and without a dashboard session): refused.
    assert g.http.get(f"{g.base_url}/_gyrus/v1/apis/obs-values/series", timeout=10).status_code == 401


def test_model_api_metrics(gyrus, projects_dir, onnx_models):
    g = gyrus
    api = model_api("obs-mlp", "mlp.onnx", predictor={"batching": {"max_batch_size": 16}})
    proj = model_project(projects_dir, "obs-mlp", [api], models={"mlp.onnx": onnx_models / "mlp.onnx"})
    proc = g.deploy(proj)
    assert proc.returncode == 0, g.diag("obs-mlp", proc=proc)
    sample = {"x": [[0.1] * 64]}
    n = 48
    answers = parallel_posts(g.url("/obs-mlp"), [sample] * n, threads=12)
    assert all(status == 200 for status, _ in answers), answers[:3]
    # Open Inference Protocol infer and metadata.
    meta = g.get_http("/v2/models/obs-mlp")
    assert meta.status_code == 200, meta.text
    infer = g.post(
        "/v2/models/obs-mlp/infer",
        json={"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.1] * 64}]},
    )
    assert infer.status_code == 200, infer.text
    eventually(
        g,
        lambda s: value(s, "gyrus_model_requests_total", api="obs-mlp", model="obs-mlp") == n + 1
        and value(s, "gyrus_requests_total", api="obs-mlp", route="infer", status="2xx") == 1,
        "the model's request count",
    )
    s = scrape(g)
    assert value(s, "gyrus_requests_total", api="obs-mlp", route="predict", status="2xx") == n
    assert value(s, "gyrus_requests_total", api="obs-mlp", route="infer", status="2xx") == 1
    assert value(s, "gyrus_requests_total", api="obs-mlp", route="metadata", status="2xx") == 1
    runs = value(s, "gyrus_model_run_duration_seconds_count", api="obs-mlp", model="obs-mlp")
    assert 1 <= runs <= n + 1
    # Rows per run add up to the requests' rows (one each), runs counted once.
    assert value(s, "gyrus_model_batch_size_sum", api="obs-mlp", model="obs-mlp") == n + 1
    assert value(s, "gyrus_model_batch_size_count", api="obs-mlp", model="obs-mlp") == runs
    assert value(s, "gyrus_model_queue_duration_seconds_count", api="obs-mlp", model="obs-mlp") == n + 1
    assert value(s, "gyrus_model_queue_depth", api="obs-mlp", model="obs-mlp") == 0
    # A model API has no Python worker.
    assert ("gyrus_worker_duration_seconds_count", frozenset({("api", "obs-mlp")})) not in s


def test_no_ready_replica_is_counted_by_the_gateway(gyrus, project):
    g = gyrus
    # A predictor whose constructor never finishes: the API's replica never becomes ready.
    stuck = project(
        "obs-stuck",
        "import time\nclass PythonPredictor:\n    def __init__(self, config):\n        time.sleep(600)\n    def predict(self, payload):\n        return 1\n",
    )
    g.run("deploy", str(stuck), "--no-wait")
    wait_until(lambda: g.run("get", "obs-stuck").returncode == 0, 30, what="obs-stuck known")
    for _ in range(3):
        r = g.post("/obs-stuck", json={})
        assert r.status_code == 503, r.text
    eventually(
        g,
        lambda s: value(s, "gyrus_rejected_requests_total", api="obs-stuck", reason="no_ready_replica") == 3,
        "the gateway's no_ready_replica count",
    )
    assert value(scrape(g), "gyrus_requests_total", api="obs-stuck", route="predict", status="5xx") == 3
    g.ok("delete", "obs-stuck")


def test_metrics_and_series_refuse_browsers(apis):
    g = apis
    # The series needs the token; a cross-site request is refused whatever it carries.
    r = g.http.get(
        f"{g.base_url}/_gyrus/v1/apis/obs-values/series",
        headers={"Origin": "https://evil.example", "Authorization": f"Bearer {g.token()}"},
        timeout=10,
    )
    assert r.status_code == 403, r.text
    # /metrics is open to this machine (the daemon is bound to loopback), but not to a page
    # whose own name was rebound to this address (its Host is its name), nor across sites.
    assert g.http.get(f"{g.base_url}/metrics", timeout=10).status_code == 200
    rebound = g.http.get(f"{g.base_url}/metrics", headers={"Host": "evil.example"}, timeout=10)
    assert rebound.status_code == 403, rebound.text
    cross = g.http.get(f"{g.base_url}/metrics", headers={"Origin": "https://evil.example"}, timeout=10)
    assert cross.status_code == 403, cross.text


BATCH = """
import time


class PythonPredictor:
    def __init__(self, config, job_spec):
        pass

    def predict(self, payload, batch_id):
        time.sleep(0.7)
"""


def test_running_jobs_show_their_batches(gyrus, projects_dir):
    from e2e_helpers import write_files

    g = gyrus
    d = projects_dir / "obs-jobs"
    d.mkdir(parents=True, exist_ok=True)
    write_files(d, {
        "predictor.py": BATCH,
        "cortex.yaml": "- name: obs-jobs\n  kind: BatchAPI\n  predictor:\n    type: python\n    path: predictor.py\n",
    })
    g.deploy_ok(d, "obs-jobs")
    r = g.http.post(
        g.url("/obs-jobs"),
        json={"workers": 1, "item_list": {"items": list(range(6)), "batch_size": 1}},
        headers={"Authorization": f"Bearer {g.token()}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    job = r.json()["job_id"]
    seen = []

    def progress(s):
        states = {st: value(s, "gyrus_job_batches", api="obs-jobs", job_id=job, state=st) for st in ("queued", "succeeded", "failed")}
        seen.append(states)
        return sum(states.values()) == 6 and states["succeeded"] >= 1 and states["queued"] >= 1

    eventually(g, progress, "a running job's batches, some done and some queued", timeout=60)
    assert seen[-1]["failed"] == 0
