"""A predictor whose workers keep crashing: requests fail fast instead of hanging.

The predictor's constructor returns (so the deploy goes through), but it leaves a thread
behind that kills the worker 1.5 s later, every time the replica restarts it. After three such
quick exits the replica's worker pool is crash-looping: while no worker is up, a request is
answered at once with 503, a Retry-After header and an error that says the workers keep
crashing, rather than waiting for a restart that is up to 30 s away and crashes again.
"""

import time

import pytest

from e2e_helpers import wait_until

API = "crashloop"

PREDICTOR = """
import os
import threading
import time


class PythonPredictor:
    def __init__(self, config):
        def crash():
            time.sleep(1.5)
            os._exit(3)

        threading.Thread(target=crash, daemon=True).start()

    def predict(self, payload):
        return {"ok": True}
"""

# Longer than the replica's queue timeout (30 s): a request that waits for a worker thread
# is answered by then, so a requests timeout here means the request hung.
REQUEST_TIMEOUT = 40


@pytest.fixture(scope="module")
def deployed(gyrus, project):
    proj = project(API, PREDICTOR)
    # The constructor returns, so the deploy may well report the API live; what matters is
    # what requests get afterwards, so its outcome is not asserted.
    return gyrus.deploy(proj)


def timed_post(gyrus):
    started = time.monotonic()
    r = gyrus.post(f"/{API}", json={"x": 1}, timeout=REQUEST_TIMEOUT)
    return r, time.monotonic() - started


def test_requests_fail_fast_with_retry_after_while_workers_crash(gyrus, deployed):
    def fast_503():
        r, elapsed = timed_post(gyrus)
        if r.status_code == 503 and elapsed < 2 and "crashing" in r.text:
            return r, elapsed
        return None

    r, elapsed = wait_until(
        fast_503,
        40,
        interval=0.2,
        what=lambda: "a fast 503 from the crash-looping workers\n" + gyrus.diag(API, proc=deployed),
    )
    retry_after = r.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, gyrus.diag(API, resp=r)
    error = r.json()["error"]
    assert "the predictor's workers keep crashing" in error, gyrus.diag(API, resp=r)
    assert "exit status: 3" in error, gyrus.diag(API, resp=r)
    assert "keeps crashing" in gyrus.api_log(API), gyrus.diag(API)
    # The daemon hears it in the replica's reports: `gyrus get` says so instead of "live".
    wait_until(
        lambda: gyrus.get(API)["status"] == "crash-looping",
        10,
        what=lambda: f"gyrus get to show crash-looping: {gyrus.get(API)}",
    )
    assert "crash-looping" in gyrus.ok("get", API).stdout


def test_requests_keep_being_answered(gyrus, deployed):
    # Between crashes a restarted worker serves for a moment (200, or 502 when it dies under
    # the request); otherwise the answer is a fast 503. Nothing waits for the next restart.
    for _ in range(10):
        r, elapsed = timed_post(gyrus)
        assert r.status_code in (200, 502, 503), gyrus.diag(API, resp=r)
        if r.status_code == 503:
            assert int(r.headers.get("Retry-After", "0")) >= 1, gyrus.diag(API, resp=r)
            assert elapsed < 2, f"a 503 took {elapsed:.1f}s\n" + gyrus.diag(API, resp=r)
        time.sleep(0.3)
