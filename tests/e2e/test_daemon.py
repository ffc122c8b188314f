"""The daemon: status, stop, and APIs that come back when it starts again."""

import json
import os
import signal
import subprocess
import time

import pytest

from e2e_helpers import GYRUS_BIN, Gyrus, pid_alive, wait_until

API = "survivor"

PREDICTOR = """
import os

class PythonPredictor:
    def __init__(self, config):
        self.started = os.getpid()

    def predict(self, payload):
        return {"echo": payload, "pid": os.getpid()}
"""


def test_status_when_not_running(gyrus):
    # Exit code 3, as `systemctl status` says a unit is not running: scripts can test it.
    proc = gyrus.run("daemon", "status", "-o", "json")
    assert proc.returncode == 3 and json.loads(proc.stdout) is None, gyrus.diag(proc=proc)
    proc = gyrus.run("daemon", "status")
    assert proc.returncode == 3 and "not running" in proc.stdout, gyrus.diag(proc=proc)


def test_stop_when_not_running_is_harmless(gyrus):
    proc = gyrus.ok("daemon", "stop")
    assert "no gyrus daemon is running" in proc.stdout, gyrus.diag(proc=proc)


def test_daemon_restart_brings_apis_back(gyrus, project):
    proj = project(API, PREDICTOR)
    gyrus.deploy_ok(proj, API)
    r = gyrus.post(f"/{API}", json={"n": 1})
    assert r.status_code == 200 and r.json()["echo"] == {"n": 1}, gyrus.diag(API, resp=r)

    status = gyrus.json("daemon", "status", "-o", "json")
    assert status["home"] == str(gyrus.home), status
    assert status["addr"] == gyrus.addr, status
    daemon_pid = status["pid"]
    replica_pids = gyrus.replica_pids(API)
    assert replica_pids, gyrus.describe(API)
    worker_pid = r.json()["pid"]

    proc = gyrus.stop_daemon()
    assert f"pid {daemon_pid}" in proc.stdout, gyrus.diag(proc=proc)
    assert not pid_alive(daemon_pid), "daemon still alive after `gyrus daemon stop` returned"
    stopped = gyrus.run("daemon", "status", "-o", "json")
    assert stopped.returncode == 3 and json.loads(stopped.stdout) is None, gyrus.diag(proc=stopped)
    # The daemon stops its replicas, and they their Python workers.
    wait_until(
        lambda: not any(pid_alive(p) for p in replica_pids + [worker_pid]),
        30,
        what=lambda: f"replicas {replica_pids} and worker {worker_pid} to exit with the daemon\n{gyrus.diag(API)}",
    )
    proc = gyrus.run("get", API)
    assert proc.returncode == 1 and "no gyrus daemon is running" in proc.stderr, gyrus.diag(proc=proc)

    # Start the daemon without deploying: the API comes back by itself.
    gyrus.start_daemon()
    info = wait_until(
        lambda: (lambda i: i if i["status"] == "live" and i["replicas"]["ready"] == 1 else None)(gyrus.get(API)),
        60,
        what=lambda: f"{API} to be live again\n{gyrus.diag(API)}",
    )
    r = gyrus.post(f"/{API}", json={"n": 2})
    assert r.status_code == 200 and r.json()["echo"] == {"n": 2}, gyrus.diag(API, resp=r)
    assert r.json()["pid"] != worker_pid, "served by a worker that should have stopped"
    assert info["endpoint"] == f"/{API}"


def test_restart_through_deploy_of_another_project(gyrus, project):
    """`gyrus deploy` starts the daemon when none runs; the earlier API comes back too."""
    gyrus.stop_daemon()
    other = project(
        "other",
        "class PythonPredictor:\n    def __init__(self, config):\n        pass\n\n"
        "    def predict(self, payload):\n        return 'other'\n",
    )
    gyrus.deploy_ok(other, "other")
    assert_live_again(gyrus, 3)
    r = gyrus.post("/other", json={})
    assert r.status_code == 200 and r.text == "other", gyrus.diag("other", resp=r)


def test_crashed_daemon_takes_its_replicas_down_and_restores_them(gyrus):
    """kill -9 of the daemon: replicas and workers die with it (their stdin reaches EOF), the
    lock is released, and the next start restores the APIs. A deleted API stays deleted."""
    gyrus.ok("delete", "other")
    daemon_pid = gyrus.json("daemon", "status", "-o", "json")["pid"]
    replica_pids = gyrus.replica_pids(API)
    worker_pid = gyrus.post(f"/{API}", json={}).json()["pid"]
    os.kill(daemon_pid, signal.SIGKILL)  # started by this suite (`gyrus deploy` above)
    wait_until(
        lambda: not any(pid_alive(p) for p in [daemon_pid, *replica_pids, worker_pid]),
        30,
        what=lambda: f"daemon {daemon_pid}, replicas {replica_pids}, worker {worker_pid} to die\n{gyrus.diag(API)}",
    )
    gyrus.start_daemon()
    assert_live_again(gyrus, 4)
    assert [i["name"] for i in gyrus.json("get", "-o", "json")] == [API]
    r = gyrus.post("/other", json={})
    assert r.status_code == 404, gyrus.diag("other", resp=r)


def test_a_replica_still_starting_dies_with_the_daemon(tmp_path, project):
    """kill -9 of the daemon while a replica's predictor is still in its constructor: the
    replica and its worker end too, not when the constructor is done."""
    g = Gyrus(tmp_path / "home")
    try:
        stuck = project(
            "stuck-start",
            "import time\nclass PythonPredictor:\n    def __init__(self, config):\n        time.sleep(600)\n"
            "    def predict(self, payload):\n        return 1\n",
        )
        g.run("deploy", str(stuck), "--no-wait")
        replica_pids = wait_until(lambda: g.replica_pids("stuck-start"), 30, what="the replica started")
        daemon_pid = g.health()["pid"]
        os.kill(daemon_pid, signal.SIGKILL)  # started by this test
        wait_until(
            lambda: not any(pid_alive(p) for p in [daemon_pid, *replica_pids]),
            15,
            what=lambda: f"daemon {daemon_pid} and replicas {replica_pids} to die",
        )
    finally:
        g.teardown()


def test_stop_returns_when_the_daemon_is_an_unreaped_child(tmp_path):
    g = Gyrus(tmp_path / "home")
    # Like any program that starts `gyrus daemon` and only waits for it after stopping it.
    daemon = subprocess.Popen(
        [GYRUS_BIN, "daemon"], env=g.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_until(g.health, 30, what="the daemon to answer")
        t0 = time.monotonic()
        proc = g.run("daemon", "stop", timeout=10)  # raises AssertionError on timeout
        elapsed = time.monotonic() - t0
        assert proc.returncode == 0, g.diag(proc=proc)
        assert elapsed < 10, f"`gyrus daemon stop` took {elapsed:.1f}s"
    finally:
        if daemon.poll() is None:
            daemon.terminate()
        daemon.wait(10)
        g.teardown()


def assert_live_again(gyrus, n):
    """The API restored after a daemon restart is live and answers."""
    wait_until(
        lambda: gyrus.get(API)["status"] == "live",
        60,
        what=lambda: f"{API} to be live again\n{gyrus.diag(API)}",
    )
    r = gyrus.post(f"/{API}", json={"n": n})
    assert r.status_code == 200 and r.json()["echo"] == {"n": n}, gyrus.diag(API, resp=r)
