"""Concurrency: max_replica_concurrency (503 beyond it), workers_per_replica and
threads_per_worker."""

import threading
import time

import pytest
import requests

from e2e_helpers import pid_alive, wait_until

SLEEPER = """
import os
import threading
import time


class PythonPredictor:
    def __init__(self, config):
        self.seconds = float(config.get("seconds", 1))

    def predict(self, payload):
        time.sleep(self.seconds)
        return {"pid": os.getpid(), "thread": threading.get_ident()}
"""


def fire(g, endpoint, n, json_body=None, timeout=30):
    """Sends n requests at the same moment; returns (responses, seconds for all of them)."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def one(i):
        barrier.wait()
        try:
            # One session per thread: a shared session's connection pool is not thread-safe.
            with requests.Session() as s:
                s.trust_env = False
                results[i] = s.post(g.url(endpoint), json=json_body or {}, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - reported by the assertions
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.monotonic() - t0


def describe_results(results):
    return "\n".join(
        f"{i}: {r!r}" if isinstance(r, Exception) else f"{i}: {r.status_code} {r.text[:200]}"
        for i, r in enumerate(results)
    )


@pytest.fixture(scope="module")
def apis(gyrus, project):
    gyrus.deploy_ok(
        project(
            "gate",
            SLEEPER,
            api={"predictor": {"config": {"seconds": 1}}, "autoscaling": {"max_replica_concurrency": 1}},
        ),
        "gate",
    )
    gyrus.deploy_ok(
        project(
            "two-workers",
            SLEEPER,
            api={"predictor": {"config": {"seconds": 0.5}}, "autoscaling": {"workers_per_replica": 2}},
        ),
        "two-workers",
    )
    gyrus.deploy_ok(
        project(
            "four-threads",
            SLEEPER,
            api={"predictor": {"config": {"seconds": 0.5}}, "autoscaling": {"threads_per_worker": 4}},
        ),
        "four-threads",
    )
    return gyrus


def test_beyond_max_replica_concurrency_is_503(apis):
    results, _ = fire(apis, "/gate", 3)
    text = describe_results(results) + "\n" + apis.diag("gate")
    assert not any(isinstance(r, Exception) for r in results), text
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 503, 503], text
    for r in results:
        if r.status_code == 503:
            assert "error" in r.json(), text
    # Once the slot is free again, a request is served.
    r = apis.post("/gate", json={})
    assert r.status_code == 200, apis.diag("gate", resp=r)


def test_two_workers_serve_from_two_processes(apis):
    pids = set()
    for _ in range(3):
        results, _ = fire(apis, "/two-workers", 4)
        text = describe_results(results) + "\n" + apis.diag("two-workers")
        assert all(not isinstance(r, Exception) and r.status_code == 200 for r in results), text
        pids |= {r.json()["pid"] for r in results}
        if len(pids) >= 2:
            break
    assert len(pids) == 2, f"pids seen: {pids}"


def test_two_workers_run_requests_in_parallel(apis):
    # 2 workers x 1 thread, 0.5 s each: 2 requests take ~0.5 s, not 1 s.
    results, elapsed = fire(apis, "/two-workers", 2)
    assert all(not isinstance(r, Exception) and r.status_code == 200 for r in results), describe_results(results)
    assert len({r.json()["pid"] for r in results}) == 2, describe_results(results)
    assert elapsed < 0.9, f"2 requests on 2 workers took {elapsed:.2f}s"


def test_four_threads_serve_four_requests_at_once(apis):
    # Warm up connections and the worker's thread pool.
    r = apis.post("/four-threads", json={})
    assert r.status_code == 200, apis.diag("four-threads", resp=r)
    results, elapsed = fire(apis, "/four-threads", 4)
    text = describe_results(results) + "\n" + apis.diag("four-threads")
    assert all(not isinstance(r, Exception) and r.status_code == 200 for r in results), text
    assert len({r.json()["pid"] for r in results}) == 1, text  # one worker
    assert len({r.json()["thread"] for r in results}) == 4, text  # four threads
    # Serially this is 2 s; four threads take ~0.5 s.
    assert elapsed < 1.2, f"4 requests on 4 threads took {elapsed:.2f}s\n{text}"


def test_requests_beyond_the_threads_wait_for_a_free_one(apis):
    """Below max_replica_concurrency nothing is refused: 3 requests on the 4 threads of
    four-threads plus 3 more queue and are all answered."""
    results, elapsed = fire(apis, "/four-threads", 7)
    text = describe_results(results) + "\n" + apis.diag("four-threads")
    assert all(not isinstance(r, Exception) and r.status_code == 200 for r in results), text
    # 7 requests on 4 threads of 0.5 s: two rounds.
    assert 0.9 < elapsed < 2.5, f"{elapsed:.2f}s\n{text}"


def test_delete_stops_every_worker_process(apis):
    results, _ = fire(apis, "/two-workers", 4)
    workers = {r.json()["pid"] for r in results if not isinstance(r, Exception) and r.status_code == 200}
    replicas = apis.replica_pids("two-workers")
    assert len(workers) == 2 and replicas, (workers, replicas)
    apis.ok("delete", "two-workers")
    wait_until(
        lambda: not any(pid_alive(p) for p in [*workers, *replicas]),
        30,
        what=lambda: f"replicas {replicas} and workers {workers} to exit\n{apis.diag('two-workers')}",
    )
