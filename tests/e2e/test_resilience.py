"""What survives the daemon's death and a hung replica, live.

- A failed rollout, then `kill -9` of the daemon and a new start: the last good version serves
  again and the failed one is still shown as failed, exactly as before the restart.
- After a restart, deploying the same project again is "up to date", not a new generation.
- A replica that stops answering (SIGSTOP) is taken out of routing and replaced while the
  other replica serves.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from e2e_helpers import pid_alive, wait_until

VERSIONED = """
import os


class PythonPredictor:
    def __init__(self, config):
        self.version = config["version"]

    def predict(self, payload):
        return {"version": self.version, "worker_pid": os.getpid()}
"""

BROKEN_INIT = """
class PythonPredictor:
    def __init__(self, config):
        raise RuntimeError("sentinel-restart-failure: cannot load " + config["version"])
"""


def version_of(g, name):
    r = g.post(f"/{name}", json={}, timeout=10)
    return r.json()["version"] if r.status_code == 200 else None


def kill_daemon(g, *apis):
    """kill -9 of the daemon this module started; waits until its replicas are gone too."""
    daemon_pid = g.health()["pid"]
    replicas = [p for api in apis for p in g.replica_pids(api)]
    os.kill(daemon_pid, signal.SIGKILL)
    wait_until(
        lambda: not any(pid_alive(p) for p in [daemon_pid, *replicas]),
        30,
        what=lambda: f"daemon {daemon_pid} and replicas {replicas} to die\n{g.diag(*apis)}",
    )


def test_failed_rollout_then_daemon_kill_serves_the_last_good_version(gyrus, project):
    name = "survivor"
    gyrus.deploy_ok(project(name, VERSIONED, api={"predictor": {"config": {"version": "v1"}}}), name)
    assert version_of(gyrus, name) == "v1"
    broken = project(name, BROKEN_INIT, api={"predictor": {"config": {"version": "v2"}}})
    proc = gyrus.deploy(broken)
    assert proc.returncode == 1 and "sentinel-restart-failure" in proc.stderr, gyrus.diag(name, proc=proc)
    failed = gyrus.get(name)
    assert failed["status"] == "error" and failed["generation"] == 2, failed
    assert version_of(gyrus, name) == "v1"

    kill_daemon(gyrus, name)
    gyrus.start_daemon()
    wait_until(
        lambda: version_of(gyrus, name) == "v1",
        90,
        what=lambda: "the last good version to serve again\n" + gyrus.diag(name),
    )
    info = gyrus.get(name)
    assert info["status"] == "error", info
    assert "sentinel-restart-failure" in (info["error"] or ""), info
    assert info["generation"] == 2, info
    assert info["replicas"]["ready"] == 1, info
    assert all(version_of(gyrus, name) == "v1" for _ in range(10))

    # Once more, with a graceful stop: the same.
    gyrus.stop_daemon()
    gyrus.start_daemon()
    wait_until(lambda: version_of(gyrus, name) == "v1", 90, what=lambda: gyrus.diag(name))
    assert gyrus.get(name)["status"] == "error"

    # A deploy that works moves on from there, and is what the next restart serves.
    fixed = project(name, VERSIONED, api={"predictor": {"config": {"version": "v3"}}})
    gyrus.deploy_ok(fixed, name)
    assert version_of(gyrus, name) == "v3"
    kill_daemon(gyrus, name)
    gyrus.start_daemon()
    wait_until(lambda: version_of(gyrus, name) == "v3", 90, what=lambda: gyrus.diag(name))
    assert gyrus.get(name)["status"] == "live"
    gyrus.ok("delete", name)


def test_unchanged_redeploy_after_a_restart_is_up_to_date(gyrus, project):
    name = "steady"
    proj = project(name, VERSIONED, api={"predictor": {"config": {"version": "v1"}}})
    gyrus.deploy_ok(proj, name)
    generation = gyrus.get(name)["generation"]
    gyrus.stop_daemon()
    gyrus.start_daemon()
    # Straight away (the restored replica may still be starting) and once live.
    proc = gyrus.deploy(proj)
    assert proc.returncode == 0 and f"{name}: up to date" in proc.stderr, gyrus.diag(name, proc=proc)
    wait_until(lambda: gyrus.get(name)["status"] == "live", 90, what=lambda: gyrus.diag(name))
    proc = gyrus.deploy(proj)
    assert proc.returncode == 0 and f"{name}: up to date" in proc.stderr, gyrus.diag(name, proc=proc)
    assert gyrus.get(name)["generation"] == generation
    gyrus.ok("delete", name)


def test_stopped_replica_is_replaced_and_the_other_serves(gyrus, project):
    name = "frozen"
    spec = {"autoscaling": {"min_replicas": 2, "max_replicas": 2, "init_replicas": 2}}
    gyrus.deploy_ok(project(name, VERSIONED, api={**spec, "predictor": {"config": {"version": "v1"}}}), name)
    replicas = gyrus.describe(name)["replica_details"]
    assert len([r for r in replicas if r["state"] == "ready"]) == 2, replicas
    victim = replicas[0]["pid"]
    os.kill(victim, signal.SIGSTOP)  # a replica this module's daemon started
    try:
        started = time.monotonic()
        # Within the heartbeat timeout (5 s) and a restart, the stopped replica is gone.
        wait_until(lambda: not pid_alive(victim), 30, what=lambda: gyrus.diag(name))
        detected = time.monotonic() - started
        assert detected < 15, detected
        # Its traffic goes to the other replica meanwhile, then to both again.
        answers = [gyrus.post(f"/{name}", json={}, timeout=10).status_code for _ in range(20)]
        assert answers == [200] * 20, answers
        wait_until(
            lambda: len([r for r in gyrus.describe(name)["replica_details"] if r["state"] == "ready"]) == 2,
            60,
            what=lambda: gyrus.diag(name),
        )
        ready = [r for r in gyrus.describe(name)["replica_details"] if r["state"] == "ready"]
        assert victim not in [r["pid"] for r in ready], ready
        assert any("stopped answering" in (r.get("last_exit") or "") for r in ready), ready
        assert "stopped answering" in gyrus.api_log(name)
        assert gyrus.get(name)["status"] == "live"
    finally:
        if pid_alive(victim):
            os.kill(victim, signal.SIGCONT)
    gyrus.ok("delete", name)


@pytest.mark.parametrize("clients", [2])
def test_requests_to_a_stopped_replica_end_with_503_not_a_hang(gyrus, project, clients):
    """Requests already sent to a replica that stops answering are answered 503 with
    Retry-After when it is replaced, not left hanging."""
    import threading

    name = "frozen-inflight"
    spec = {"autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    gyrus.deploy_ok(project(name, VERSIONED, api={**spec, "predictor": {"config": {"version": "v1"}}}), name)
    victim = gyrus.replica_pids(name)[0]
    os.kill(victim, signal.SIGSTOP)  # a replica this module's daemon started
    results = []
    try:

        def call():
            started = time.monotonic()
            r = gyrus.post(f"/{name}", json={}, timeout=40)
            results.append((r.status_code, r.headers.get("retry-after"), time.monotonic() - started))

        threads = [threading.Thread(target=call) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(45)
    finally:
        if pid_alive(victim):
            os.kill(victim, signal.SIGCONT)
    assert len(results) == clients, results
    for status, retry_after, elapsed in results:
        assert status == 503 and retry_after == "1", results
        assert elapsed < 15, results
    wait_until(lambda: version_of(gyrus, name) == "v1", 60, what=lambda: gyrus.diag(name))
    gyrus.ok("delete", name)
