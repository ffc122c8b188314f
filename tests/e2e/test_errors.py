"""Failures of user code: exceptions in predict, a worker that dies, a constructor that raises."""

import json
import os
import signal
import time

import pytest
import requests

from e2e_helpers import wait_until

API = "fragile"

PREDICTOR = """
import os


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if payload.get("raise"):
            raise ValueError(payload["raise"])
        if payload.get("exit"):
            os._exit(1)
        return {"ok": True, "worker_pid": os.getpid()}
"""

BROKEN = """
class PythonPredictor:
    def __init__(self, config):
        helper_that_fails(config)

    def predict(self, payload):
        return "never"


def helper_that_fails(config):
    raise RuntimeError("cannot load the model: sentinel-constructor-failure")
"""


@pytest.fixture(scope="module")
def fragile(gyrus, project):
    gyrus.deploy_ok(project(API, PREDICTOR), API)
    return gyrus


def test_exception_in_predict_is_500_with_the_message(fragile):
    r = fragile.post(f"/{API}", json={"raise": "boom-1234"})
    assert r.status_code == 500, fragile.diag(API, resp=r)
    assert r.headers["content-type"].startswith("application/json"), fragile.diag(API, resp=r)
    assert "ValueError: boom-1234" in r.json()["error"], r.text
    # The replica keeps serving.
    r = fragile.post(f"/{API}", json={})
    assert r.status_code == 200 and r.json()["ok"] is True, fragile.diag(API, resp=r)


def test_exception_traceback_is_logged(fragile):
    fragile.post(f"/{API}", json={"raise": "logged-5678"})
    wait_until(
        lambda: "logged-5678" in fragile.cli_logs(API) and "Traceback" in fragile.cli_logs(API),
        10,
        what=lambda: "the traceback in the logs\n" + fragile.diag(API),
    )


def test_killed_worker_fails_its_request_then_recovers(fragile):
    before = fragile.post(f"/{API}", json={})
    assert before.status_code == 200, fragile.diag(API, resp=before)
    old_pid = before.json()["worker_pid"]

    r = fragile.post(f"/{API}", json={"exit": True})
    assert 500 <= r.status_code < 600, fragile.diag(API, resp=r)
    assert "error" in r.json(), r.text

    def served():
        resp = fragile.post(f"/{API}", json={}, timeout=10)
        return resp.status_code == 200 and resp.json()

    t0 = time.monotonic()
    got = wait_until(served, 30, interval=0.2, what=lambda: "the worker to come back\n" + fragile.diag(API))
    assert got["worker_pid"] != old_pid, "the dead worker cannot have answered"
    info = fragile.get(API)
    assert info["status"] == "live", info
    print(f"worker back after {time.monotonic() - t0:.1f}s")



def test_killed_replica_is_restarted(fragile):
    """The supervisor restarts a replica process that dies (here: SIGKILL of the replica this
    suite's daemon started); meanwhile the gateway answers 5xx, never hangs."""
    g = fragile
    ready = [r for r in g.describe(API)["replica_details"] if r["state"] == "ready"]
    assert len(ready) == 1, ready
    os.kill(ready[0]["pid"], signal.SIGKILL)
    try:
        r = g.post(f"/{API}", json={}, timeout=10)
    except requests.RequestException as e:
        pytest.fail(f"the gateway did not answer while the replica was down: {e!r}\n{g.diag(API)}")
    assert r.status_code == 200 or 500 <= r.status_code < 600, g.diag(API, resp=r)

    def back():
        info = g.describe(API)
        fresh = [x for x in info["replica_details"] if x["state"] == "ready" and x["pid"] != ready[0]["pid"]]
        resp = g.post(f"/{API}", json={}, timeout=10)
        return fresh and resp.status_code == 200 and (fresh, info)

    fresh, info = wait_until(back, 30, interval=0.2, what=lambda: "a new replica\n" + g.diag(API))
    assert fresh[0]["restarts"] >= 1, info
    assert {k: info["replicas"][k] for k in ("requested", "ready", "starting", "failed")} == {"requested": 1, "ready": 1, "starting": 0, "failed": 0}, info


def test_constructor_failure_fails_the_deploy(gyrus, project):
    proc = gyrus.deploy(project("broken", BROKEN))
    assert proc.returncode == 1, gyrus.diag("broken", proc=proc)
    assert "error: broken failed:" in proc.stderr, gyrus.diag("broken", proc=proc)
    assert "sentinel-constructor-failure" in proc.stderr, gyrus.diag("broken", proc=proc)

    info = gyrus.get("broken")
    assert info["status"] == "error", info
    assert "sentinel-constructor-failure" in (info["error"] or ""), info

    logs = gyrus.cli_logs("broken")
    assert "Traceback" in logs, logs
    assert "RuntimeError: cannot load the model: sentinel-constructor-failure" in logs, logs
    assert "helper_that_fails" in logs, logs  # the user's frames are in the traceback

    # No replica is ready: the endpoint answers 503, not 404.
    r = gyrus.post("/broken", json={})
    assert r.status_code == 503, gyrus.diag("broken", resp=r)
    assert "error" in r.json(), r.text


def test_constructor_failure_in_json_output(gyrus):
    proc = gyrus.run("get", "-o", "json")
    assert proc.returncode == 0, gyrus.diag(proc=proc)
    by_name = {i["name"]: i for i in json.loads(proc.stdout)}
    assert by_name["broken"]["status"] == "error", by_name
    # A failed API does not disturb the others.
    assert by_name[API]["status"] == "live", by_name


def test_fixing_the_constructor_makes_the_api_live(gyrus, project):
    fixed = project("broken", BROKEN.replace("        helper_that_fails(config)", "        pass", 1))
    proc = gyrus.deploy(fixed)
    assert proc.returncode == 0, gyrus.diag("broken", proc=proc)
    r = gyrus.post("/broken", json={})
    assert r.status_code == 200 and r.text == "never", gyrus.diag("broken", resp=r)
    assert gyrus.get("broken")["error"] is None


def test_predict_cli_reports_an_error_answer(fragile):
    proc = fragile.run("predict", API, '{"raise": "cli-error-2468"}')
    assert proc.returncode == 1, fragile.diag(API, proc=proc)
    assert "500" in proc.stderr and "ValueError: cli-error-2468" in proc.stderr, fragile.diag(API, proc=proc)


def test_failed_redeploy_keeps_the_previous_version_serving(fragile, project):
    """A new generation whose constructor raises: the API shows the error, and the replicas of
    the previous generation keep answering."""
    g = fragile
    before = g.get(API)
    broken = PREDICTOR.replace("        pass\n", "        raise KeyError('sentinel-redeploy-failure')\n", 1)
    assert broken != PREDICTOR
    proc = g.deploy(project(API, broken))
    assert proc.returncode == 1, g.diag(API, proc=proc)
    assert "sentinel-redeploy-failure" in proc.stderr, g.diag(API, proc=proc)
    info = g.get(API)
    assert info["status"] == "error", info
    assert info["generation"] == before["generation"] + 1, info
    r = g.post(f"/{API}", json={})
    assert r.status_code == 200 and r.json()["ok"] is True, g.diag(API, resp=r)
