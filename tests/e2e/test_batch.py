"""Batch APIs and jobs through the real daemon, workers and SQLite queue: a job submitted to
the API's endpoint (Cortex's body) runs every batch and on_job_complete() once; a batch that
raises is kept with its error and traceback; a worker SIGKILLed mid-batch loses no item; a
stop ends the workers; bad submissions get precise errors."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from e2e_helpers import write_files

API = "sums"

PREDICTOR = r'''
import json, os, time

class PythonPredictor:
    def __init__(self, config, job_spec):
        self.config = config
        self.out = config["out"]
        self.sleep = config.get("sleep", 0)
        self.job_id = job_spec["job_id"]
        os.makedirs(self.out, exist_ok=True)

    def predict(self, payload, batch_id):
        with open(os.path.join(self.out, "pids"), "a") as f:
            f.write(f"{os.getpid()} {batch_id}\n")
        if self.sleep:
            time.sleep(self.sleep)
        if "boom" in payload:
            raise ValueError(f"cannot sum batch {batch_id}")
        # One line per item processed: the test counts them.
        with open(os.path.join(self.out, "items"), "a") as f:
            for item in payload:
                f.write(f"{item}\n")
        return sum(payload)

    def on_job_complete(self):
        if self.config.get("fail_complete"):
            raise RuntimeError("cannot write the total")
        with open(os.path.join(self.out, "complete"), "a") as f:
            f.write(f"{self.job_id}\n")
'''


@pytest.fixture(scope="module")
def batch_api(gyrus, projects_dir):
    d = projects_dir / API
    d.mkdir(parents=True, exist_ok=True)
    write_files(d, {
        "predictor.py": PREDICTOR,
        "cortex.yaml": f"- name: {API}\n  kind: BatchAPI\n  predictor:\n    type: python\n    path: predictor.py\n",
    })
    gyrus.deploy_ok(d, API)
    return gyrus


def submit(g, body, query=""):
    return g.http.post(g.url(API) + query, json=body, headers={"Authorization": f"Bearer {g.token()}"}, timeout=30)


def job_status(g, job_id):
    r = g.control("GET", f"/apis/{API}/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_final(g, job_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = job_status(g, job_id)
        if s["status"] not in ("enqueuing", "running"):
            return s
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end: {json.dumps(job_status(g, job_id), indent=1)}\n{g.api_log(API)}")


def items_done(out: Path) -> list[int]:
    p = out / "items"
    return sorted(int(float(x)) for x in p.read_text().split()) if p.exists() else []


def test_a_job_runs_every_batch_and_on_job_complete_once(batch_api, tmp_path):
    out = tmp_path / "out"
    r = submit(batch_api, {"workers": 2, "config": {"out": str(out)},
                           "item_list": {"items": list(range(100)), "batch_size": 7}})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["total_batch_count"] == 15
    s = wait_final(batch_api, job["job_id"])
    assert s["status"] == "succeeded", s
    assert s["batch_metrics"]["succeeded"] == 15 and s["batch_metrics"]["failed"] == 0
    assert s["on_job_complete"]["status"] == "succeeded"
    assert items_done(out) == list(range(100))
    assert (out / "complete").read_text() == f"{job['job_id']}\n"
    # Cortex's GET on the endpoint shows the same job; the list has it.
    r = batch_api.http.get(batch_api.url(API), params={"jobID": job["job_id"]},
                           headers={"Authorization": f"Bearer {batch_api.token()}"}, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    listed = batch_api.control("GET", f"/apis/{API}/jobs").json()["jobs"]
    assert job["job_id"] in [j["job_id"] for j in listed]


def test_a_failing_batch_is_kept_with_its_traceback(batch_api, tmp_path):
    out = tmp_path / "out"
    r = submit(batch_api, {"workers": 1, "config": {"out": str(out)},
                           "item_list": {"items": [1, 2, "boom", 4], "batch_size": 2}})
    assert r.status_code == 200, r.text
    s = wait_final(batch_api, r.json()["job_id"])
    assert s["status"] == "completed_with_failures", s
    [failed] = s["failed_batches"]
    assert failed["batch_id"].endswith("-1")
    assert "ValueError: cannot sum batch" in failed["error"]
    assert "raise ValueError" in failed["traceback"]
    assert items_done(out) == [1, 2]
    assert s["on_job_complete"]["status"] == "succeeded"


def test_a_worker_killed_mid_batch_loses_no_item(batch_api, tmp_path):
    out = tmp_path / "out"
    r = submit(batch_api, {"workers": 2, "config": {"out": str(out), "sleep": 0.3},
                           "item_list": {"items": list(range(40)), "batch_size": 4}})
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    deadline = time.time() + 60
    while not (out / "pids").exists() and time.time() < deadline:
        time.sleep(0.05)
    victim = int((out / "pids").read_text().split()[0])
    os.kill(victim, signal.SIGKILL)
    s = wait_final(batch_api, job_id)
    assert s["status"] == "succeeded", (s, batch_api.api_log(API))
    done = items_done(out)
    assert sorted(set(done)) == list(range(40)), done
    # Only the killed batch can have run twice.
    assert len(done) - 40 <= 4, done
    log = (batch_api.home / "logs" / "jobs" / f"{API}-{job_id}.log").read_text()
    assert "died" in log, log


def test_stop_ends_a_job_within_seconds(batch_api, tmp_path):
    out = tmp_path / "out"
    r = submit(batch_api, {"workers": 2, "config": {"out": str(out), "sleep": 1},
                           "item_list": {"items": list(range(100)), "batch_size": 1}})
    job_id = r.json()["job_id"]
    deadline = time.time() + 60
    while not (out / "pids").exists() and time.time() < deadline:
        time.sleep(0.05)
    # Like every request that changes something, a DELETE says it speaks JSON (a browser's
    # cross-site form cannot).
    r = batch_api.http.delete(batch_api.url(API), params={"jobID": job_id},
                              headers={"Authorization": f"Bearer {batch_api.token()}",
                                       "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    stopped = time.time()
    s = wait_final(batch_api, job_id, timeout=30)
    assert s["status"] == "stopped", s
    assert time.time() - stopped < 15
    assert not (out / "complete").exists()


def test_a_job_past_its_timeout_ends_timed_out(batch_api, tmp_path):
    out = tmp_path / "out"
    r = submit(batch_api, {"workers": 1, "timeout": 3, "config": {"out": str(out), "sleep": 0.5},
                           "item_list": {"items": list(range(100)), "batch_size": 1}})
    assert r.status_code == 200, r.text
    started = time.time()
    s = wait_final(batch_api, r.json()["job_id"], timeout=60)
    assert s["status"] == "timed_out", s
    assert time.time() - started < 20, "the job should end soon after its timeout"
    assert 0 < s["batch_metrics"]["succeeded"] < 100, s
    assert not (out / "complete").exists(), "on_job_complete does not run for a timed-out job"


def test_a_predictor_that_cannot_start_gives_worker_error(batch_api):
    # No "out" in the config: the constructor raises KeyError in every worker.
    r = submit(batch_api, {"workers": 2, "item_list": {"items": [1, 2, 3], "batch_size": 1}})
    assert r.status_code == 200, r.text
    s = wait_final(batch_api, r.json()["job_id"], timeout=120)
    assert s["status"] == "worker_error", s
    assert "KeyError" in (s["error"] or ""), s
    assert s["batch_metrics"]["succeeded"] == 0, s


def test_a_failing_on_job_complete_is_visible_in_the_status(batch_api, tmp_path):
    out = tmp_path / "out"
    r = submit(batch_api, {"workers": 1, "config": {"out": str(out), "fail_complete": True},
                           "item_list": {"items": [1, 2], "batch_size": 1}})
    assert r.status_code == 200, r.text
    s = wait_final(batch_api, r.json()["job_id"])
    assert s["status"] == "completed_with_failures", s
    assert s["batch_metrics"]["succeeded"] == 2, s
    assert s["on_job_complete"]["status"] == "failed", s
    assert "cannot write the total" in s["on_job_complete"]["error"], s


def test_bad_submissions_are_refused_precisely(batch_api):
    r = submit(batch_api, {"item_list": {"items": [1], "batch_size": 1}})
    assert r.status_code == 400 and "workers is required" in r.json()["error"], r.text
    r = submit(batch_api, {"workers": 1, "item_list": {"items": ["x" * 300_000], "batch_size": 1}})
    assert r.status_code == 413 and "256 KiB" in r.json()["error"], r.text
    r = submit(batch_api, {"workers": 1, "item_list": {"items": list(range(10)), "batch_size": 3}}, "?dryRun=true")
    assert r.status_code == 200 and r.json()["batch_count"] == 4, r.text
    # Without the token the endpoint refuses: a job runs code on this machine.
    r = batch_api.http.post(batch_api.url(API), json={"workers": 1}, timeout=30)
    assert r.status_code == 401, r.text
    r = batch_api.control("GET", f"/apis/{API}/jobs/nope")
    assert r.status_code == 404, r.text


def test_the_cli_submits_waits_lists_and_shows_failed_batches(batch_api, tmp_path):
    out = tmp_path / "out"
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"workers": 1, "config": {"out": str(out)},
                                "item_list": {"items": [1, 2, 3, "boom"], "batch_size": 2}}))
    dry = batch_api.run("job", "submit", API, str(spec), "--dry-run")
    assert dry.returncode == 0 and "would run 2 batch(es)" in dry.stdout, dry.stdout + dry.stderr
    proc = batch_api.run("job", "submit", API, str(spec), "--wait", timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "status:   completed_with_failures" in proc.stdout, proc.stdout
    assert "ValueError: cannot sum batch" in proc.stdout, proc.stdout
    job_id = proc.stdout.split("submitted job ", 1)[1].split()[0]
    status = batch_api.json("job", "get", API, job_id, "-o", "json")
    assert status["batch_metrics"] == {**status["batch_metrics"], "succeeded": 1, "failed": 1}
    listed = batch_api.json("job", "list", API, "-o", "json")
    assert job_id in [j["job_id"] for j in listed["jobs"]]
    logs = batch_api.run("job", "logs", API, job_id)
    assert "raise ValueError" in logs.stdout, logs.stdout
    stop = batch_api.run("job", "stop", API, job_id)
    assert stop.returncode == 1 and "has already ended" in stop.stderr, stop.stderr


def test_a_daemon_killed_mid_job_resumes_it_and_runs_on_job_complete_once(batch_api, tmp_path):
    from e2e_helpers import wait_until
    out = tmp_path / "out"
    r = submit(batch_api, {"workers": 2, "config": {"out": str(out), "sleep": 0.2},
                           "item_list": {"items": list(range(60)), "batch_size": 3}})
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    wait_until(lambda: len(items_done(out)) >= 6, 60, what=lambda: "some batches to finish")
    daemon_pid = batch_api.health()["pid"]
    os.kill(daemon_pid, signal.SIGKILL)
    wait_until(lambda: batch_api.health() is None, 30, what=lambda: "the daemon to die")
    before = len(items_done(out))
    assert before < 60, "the job ended before the daemon was killed; make it longer"
    batch_api.start_daemon()
    s = wait_final(batch_api, job_id, timeout=180)
    assert s["status"] == "succeeded", (s, batch_api.diag(API))
    assert sorted(set(items_done(out))) == list(range(60))
    assert (out / "complete").read_text() == f"{job_id}\n", "on_job_complete runs exactly once"
    log = (batch_api.home / "logs" / "jobs" / f"{API}-{job_id}.log").read_text()
    assert "the daemon restarted" in log, log
