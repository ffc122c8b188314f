"""Autoscaling, rolling updates, self-healing, draining and memory limits, live.

One daemon for the module, started with GYRUS_AUTOSCALE_INTERVAL=1s so that the autoscaler
acts within seconds. Each test deploys its own API (unique name) and deletes it at the end.
The load is bounded (at most 4 concurrent clients) so the tests hold on a 2-core machine.

Run by hand with `-s` to see the `gyrus get API` snapshots of the autoscaling test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from e2e_helpers import GYRUS_BIN, Gyrus, pid_alive, tail, wait_until

# ------------------------------------------------------------------------------------------
# predictors

SLEEPER = """
import os
import time


class PythonPredictor:
    def __init__(self, config):
        self.seconds = float(config.get("seconds", 0.5))
        self.version = config.get("version", "v1")

    def predict(self, payload):
        time.sleep(float(payload.get("sleep", self.seconds)) if isinstance(payload, dict) else self.seconds)
        return {"version": self.version, "worker_pid": os.getpid()}
"""

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
        raise RuntimeError("sentinel-rollout-failure: cannot load " + config["version"])

    def predict(self, payload):
        return {"version": "never"}
"""

HOG = """
import os
import time


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        mb = int(payload.get("alloc_mb", 0))
        if mb:
            # Filled, so every page is resident (a zeroed bytearray may not be).
            hog = b"\\x01" * (mb * 2**20)
            time.sleep(float(payload.get("hold", 8)))
            return {"allocated": len(hog)}
        return {"ok": True, "worker_pid": os.getpid()}
"""

# ------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def g(gyrus):
    """The module's gyrus; its daemon (started by the first command) autoscales every second."""
    gyrus.env["GYRUS_AUTOSCALE_INTERVAL"] = "1s"
    return gyrus


@pytest.fixture
def apis(g):
    """Names of APIs a test deployed; each is deleted when the test ends (pass or fail)."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            g.run("delete", name, timeout=60)
        except AssertionError:
            pass


def cli(g, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """`gyrus ARGS` without touching g's shared HTTP session (safe from background threads)."""
    return subprocess.run(
        [GYRUS_BIN, *args],
        env=g.env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def cli_json(g, *args: str) -> Any:
    proc = cli(g, *args, "-o", "json")
    if proc.returncode != 0:
        raise RuntimeError(f"gyrus {' '.join(args)} -o json: exit {proc.returncode}: {proc.stderr}")
    return json.loads(proc.stdout)


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


@dataclass
class Result:
    start: float
    end: float
    status: int | None  # None: no HTTP answer (exception)
    body: Any
    error: str | None = None

    def __repr__(self) -> str:
        what = f"{self.status} {str(self.body)[:160]}" if self.status is not None else f"EXC {self.error}"
        return f"[{self.start:.2f}-{self.end:.2f}] {what}"


@dataclass
class Load:
    """`clients` threads, each sending requests back to back until stopped."""

    g: Any
    endpoint: str
    clients: int
    payload: dict = field(default_factory=dict)
    timeout: float = 30
    results: list[Result] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        self.t0 = time.monotonic()

    def _run(self):
        with session() as s:
            while not self._stop.is_set():
                t = time.monotonic()
                try:
                    r = s.post(self.g.url(self.endpoint), json=self.payload, timeout=self.timeout)
                    try:
                        body = r.json()
                    except ValueError:
                        body = r.text
                    res = Result(t - self.t0, time.monotonic() - self.t0, r.status_code, body)
                except requests.RequestException as e:
                    res = Result(t - self.t0, time.monotonic() - self.t0, None, None, repr(e))
                    time.sleep(0.05)  # no hot loop against a port that refuses
                with self._lock:
                    self.results.append(res)

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self) -> list[Result]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self.results

    def now(self) -> float:
        return time.monotonic() - self.t0

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)


def failures(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status != 200]


def summary(results: list[Result], limit: int = 40) -> str:
    bad = failures(results)
    codes: dict[Any, int] = {}
    for r in results:
        codes[r.status] = codes.get(r.status, 0) + 1
    lines = [f"{len(results)} requests, by status: {codes}"]
    if bad:
        lines.append(f"failed ({len(bad)}):")
        lines += [f"  {r!r}" for r in bad[:limit]]
    return "\n".join(lines)


def deploy_api(g, project, apis, name, predictor, api=None, timeout=90):
    apis.append(name)
    proj = project(name, predictor, api=api)
    g.deploy_ok(proj, name, timeout=timeout)
    return proj


def ready_replicas(info: dict) -> list[dict]:
    return [r for r in info["replica_details"] if r["state"] == "ready"]


def worker_pids_of(pid: int) -> list[int]:
    """The child processes of `pid` (a replica's Python workers)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    kids += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def log_lines(g, api: str) -> list[str]:
    return g.api_log(api).splitlines()


# ------------------------------------------------------------------------------------------
# 1. autoscaling


def test_autoscale_up_under_load_and_back_down(g, project, apis):
    name = "scaler"
    deploy_api(
        g,
        project,
        apis,
        name,
        SLEEPER,
        api={
            "predictor": {"config": {"seconds": 0.5}},
            "autoscaling": {
                "min_replicas": 1,
                "max_replicas": 4,
                "init_replicas": 1,
                "workers_per_replica": 1,
                "threads_per_worker": 1,
                "window": "3s",
                "upscale_stabilization_period": "0s",
                "downscale_stabilization_period": "3s",
                "max_upscale_factor": 10,
            },
        },
    )
    # The variable reached the daemon (the first command of this module started it).
    daemon = g.json("daemon", "status", "-o", "json")
    with open(f"/proc/{daemon['pid']}/environ", "rb") as f:
        environ = f.read().split(b"\0")
    assert b"GYRUS_AUTOSCALE_INTERVAL=1s" in environ, "the daemon runs without GYRUS_AUTOSCALE_INTERVAL=1s"

    info = g.get(name)
    assert info["status"] == "live", info
    assert info["replicas"]["requested"] == 1 and info["replicas"]["ready"] == 1, info

    snapshots: list[str] = []
    seen: list[tuple] = []

    def snap(label: str):
        proc = cli(g, "get", name)
        snapshots.append(f"--- t={label} ---\n$ gyrus get {name}\n{proc.stdout}{proc.stderr}")

    snap("0.0 (before load)")
    with Load(g, f"/{name}", clients=4, timeout=30) as load:
        peak: dict = {}

        def scaled_up():
            i = cli_json(g, "get", name)
            key = (i["replicas"]["requested"], i["replicas"]["ready"])
            if not seen or seen[-1][1:] != key:
                seen.append((round(load.now(), 1), *key))
                snap(f"{load.now():.1f} (load on)")
            peak.update(i)
            return i["replicas"]["requested"] == 4 and i["replicas"]["ready"] == 4 and i

        up = wait_until(
            scaled_up,
            40,
            interval=0.5,
            what=lambda: f"4 requested and 4 ready under load\nseen (t, requested, ready): {seen}\n"
            f"last: {json.dumps(peak, indent=1)[:3000]}\n{summary(load.snapshot())}\n{g.diag(name)}",
        )
        t_up = load.now()
        # Keep the load a little longer: the count holds at 4 while 4 clients keep 4 in flight.
        time.sleep(2)
        held = cli_json(g, "get", name)
        snap(f"{load.now():.1f} (load on, after reaching 4)")
    results = load.results
    t_stop = load.now()

    assert held["replicas"]["requested"] == 4, held
    change = up["autoscaling"]["last_change"]
    assert change is not None and change["to"] > change["from"], up["autoscaling"]
    assert change["avg_in_flight"] is not None and change["avg_in_flight"] > 1, change
    assert "avg" in change["reason"] or "average" in change["reason"], change
    assert up["autoscaling"]["window_secs"] == 3, up["autoscaling"]
    assert up["autoscaling"]["in_flight_avg"] is not None and up["autoscaling"]["in_flight_avg"] > 1, up
    # The load's requests all succeeded (max_replica_concurrency is 1024: no 503).
    assert not failures(results), summary(results) + "\n" + g.diag(name)
    assert len(results) > 20, summary(results)

    # Load off: back to min_replicas.
    t_off = time.monotonic()

    def scaled_down():
        i = cli_json(g, "get", name)
        key = (i["replicas"]["requested"], i["replicas"]["ready"])
        if seen[-1][1:] != key:
            seen.append((round(t_stop + time.monotonic() - t_off, 1), *key))
            snap(f"{t_stop + time.monotonic() - t_off:.1f} (load off)")
        return i["replicas"]["requested"] == 1 and i["replicas"]["ready"] == 1 and i

    down = wait_until(
        scaled_down,
        25,
        interval=0.5,
        what=lambda: f"1 requested and 1 ready after the load\nseen: {seen}\n{g.diag(name)}",
    )
    took = time.monotonic() - t_off
    snap(f"{t_stop + took:.1f} (back to 1)")
    last = down["autoscaling"]["last_change"]
    assert last["to"] < last["from"], down["autoscaling"]

    # The API log explains the changes.
    scale_lines = [l for l in log_lines(g, name) if "autoscaler: " in l and "replicas (" in l]
    assert any(re.search(r"autoscaler: 1 → [234] replicas \(", l) for l in scale_lines), scale_lines
    assert any(re.search(r"autoscaler: \d → 1 replicas \(", l) for l in scale_lines), scale_lines
    # Every replica except one is gone (drained and exited).
    desc = g.describe(name)
    live = [r for r in desc["replica_details"] if r["state"] in ("ready", "starting")]
    assert len(live) == 1, desc["replica_details"]

    print(f"\n[autoscale] reached 4/4 at t={t_up:.1f}s of load; load stopped at {t_stop:.1f}s; "
          f"back to 1/1 {took:.1f}s later; {len(results)} requests, all 200")
    print("[autoscale] (t, requested, ready):", seen)
    print("[autoscale] log:\n" + "\n".join(scale_lines))
    print("\n".join(snapshots))


# ------------------------------------------------------------------------------------------
# 2. rolling update without failed requests


@pytest.mark.parametrize(
    "surge, unavailable, label",
    [(1, 0, "surge1"), ("25%", 0, "surge25pct"), (0, 1, "unavail1")],
)
def test_rolling_update_serves_every_request(g, project, apis, surge, unavailable, label):
    """2 replicas roll from v1 to v2 under a load of 4 clients: no request fails, and the
    rollout stays within the strategy (surge "25%" of 2 rounds up to 1)."""
    name = f"roller-{label}"
    desired = 2
    max_surge = 1 if surge == "25%" else surge
    spec = {
        "autoscaling": {"min_replicas": desired, "max_replicas": desired, "init_replicas": desired},
        "update_strategy": {"max_surge": surge, "max_unavailable": unavailable},
    }
    deploy_api(g, project, apis, name, VERSIONED, api={**spec, "predictor": {"config": {"version": "v1"}}})
    info = g.describe(name)
    assert len(ready_replicas(info)) == desired, info["replica_details"]
    old_ids = {r["id"] for r in info["replica_details"]}
    log_offset = len(log_lines(g, name))

    v2 = project(name, VERSIONED, api={**spec, "predictor": {"config": {"version": "v2"}}})
    snapshots: list[tuple[float, list[tuple[str, str]]]] = []
    stop_watch = threading.Event()

    def watch():
        while not stop_watch.is_set():
            try:
                d = cli_json(g, "describe", name)
                snapshots.append((time.monotonic(), [(r["id"], r["state"]) for r in d["replica_details"]]))
            except Exception:  # noqa: BLE001 - a missed snapshot is fine
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    with Load(g, f"/{name}", clients=4, timeout=30) as load:
        time.sleep(1.5)
        watcher.start()
        t_deploy = load.now()
        proc = g.deploy(v2, timeout=40)
        t_deployed = load.now()
        time.sleep(1.5)
    stop_watch.set()
    watcher.join(10)
    results = load.results

    assert proc.returncode == 0, g.diag(name, proc=proc)
    assert not failures(results), summary(results) + "\n" + g.diag(name)
    versions = [r.body["version"] for r in sorted(results, key=lambda r: r.start)]
    assert "v1" in versions and "v2" in versions, summary(results)
    first_v2 = versions.index("v2")
    # Once the deploy returned, only v2 answers.
    late = [r for r in results if r.start > t_deployed + 0.5]
    assert late and all(r.body["version"] == "v2" for r in late), [r for r in late if r.body["version"] != "v2"]
    with session() as s:
        answers = [s.post(g.url(f"/{name}"), json={}, timeout=10) for _ in range(50)]
    assert all(a.status_code == 200 and a.json()["version"] == "v2" for a in answers), [
        (a.status_code, a.text[:200]) for a in answers if a.status_code != 200 or a.json().get("version") != "v2"
    ]

    # Never fewer than desired - max_unavailable ready replicas during the rollout, never
    # more than desired + max_surge alive (starting or ready).
    assert len(snapshots) >= 3, snapshots
    thin = [
        (round(t - load.t0, 2), s) for t, s in snapshots if sum(st == "ready" for _, st in s) < desired - unavailable
    ]
    assert not thin, f"fewer than {desired - unavailable} ready replicas during the rollout: {thin[:5]}"
    crowded = [s for _, s in snapshots if sum(st in ("ready", "starting") for _, st in s) > desired + max_surge]
    assert not crowded, f"more than desired + max_surge replicas: {crowded[:5]}"

    # The log: old replicas stopped only as new ones became ready (within max_unavailable).
    lines = log_lines(g, name)[log_offset:]
    text = "\n".join(lines)
    assert re.search(
        rf"rolling update to generation 2 \(max_surge {re.escape(str(surge))}, max_unavailable {unavailable}\)", text
    ), text
    assert "generation 2 is live" in text, text
    new_ready = old_stopped = 0
    for line in lines:
        m = re.search(r"replica (\S+): (ready on|stopped)", line)
        if not m:
            continue
        rid, what = m.group(1), m.group(2)
        if what == "ready on" and rid not in old_ids:
            new_ready += 1
        elif what == "stopped" and rid in old_ids:
            old_stopped += 1
            assert old_stopped <= new_ready + unavailable, f"old replicas stopped ahead of new ready ones:\n{text}"
    assert old_stopped == desired and new_ready == desired, text
    final = g.describe(name)
    assert {r["generation"] for r in ready_replicas(final)} == {final["generation"]}, final["replica_details"]
    assert len(ready_replicas(final)) == desired, final["replica_details"]
    print(f"\n[rolling {label}] deploy {t_deploy:.1f}s-{t_deployed:.1f}s, {summary(results)}, "
          f"first v2 after {first_v2} answers, {len(snapshots)} describe snapshots")


# ------------------------------------------------------------------------------------------
# 3. a failed rollout halts, the old version keeps serving


def test_failed_rollout_keeps_the_old_version(g, project, apis):
    name = "halter"
    spec = {
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "update_strategy": {"max_surge": 1, "max_unavailable": 0},
    }
    deploy_api(g, project, apis, name, VERSIONED, api={**spec, "predictor": {"config": {"version": "v1"}}})
    with session() as s:
        r = s.post(g.url(f"/{name}"), json={}, timeout=10)
    assert r.status_code == 200 and r.json()["version"] == "v1", g.diag(name, resp=r)
    before = g.get(name)

    broken = project(name, BROKEN_INIT, api={**spec, "predictor": {"config": {"version": "v2"}}})
    with Load(g, f"/{name}", clients=2, timeout=30) as load:
        time.sleep(1)
        proc = g.deploy(broken, timeout=90)
        time.sleep(1)
    results = load.results

    assert proc.returncode == 1, g.diag(name, proc=proc)
    assert "sentinel-rollout-failure" in proc.stderr, g.diag(name, proc=proc)
    info = g.get(name)
    assert info["status"] == "error", info
    assert "sentinel-rollout-failure" in (info["error"] or ""), info
    assert info["generation"] == before["generation"] + 1, info
    assert info["replicas"]["ready"] == 1, info
    # Before, during and after: v1, every time.
    assert not failures(results), summary(results) + "\n" + g.diag(name)
    assert len(results) > 5 and all(r.body["version"] == "v1" for r in results), summary(results)
    with session() as s:
        after = [s.post(g.url(f"/{name}"), json={}, timeout=10) for _ in range(10)]
    assert all(a.status_code == 200 and a.json()["version"] == "v1" for a in after), [
        (a.status_code, a.text[:200]) for a in after
    ]
    log = g.api_log(name)
    assert "halted" in log and "sentinel-rollout-failure" in log, tail(log)
    # The failed new replicas are not left running.
    desc = g.describe(name)
    new_alive = [
        r for r in desc["replica_details"] if r["generation"] == info["generation"] and r["state"] in ("ready", "starting")
    ]
    assert not new_alive, desc["replica_details"]
    # get (table) shows the error too.
    table = g.ok("get", name).stdout
    assert "error" in table and "sentinel-rollout-failure" in table, table


# ------------------------------------------------------------------------------------------
# 4. SIGKILL of a replica: the others serve, it comes back; repeated kills: crash-looping


def test_killed_replica_is_replaced_while_the_other_serves(g, project, apis):
    name = "healer"
    deploy_api(
        g,
        project,
        apis,
        name,
        VERSIONED,
        api={"predictor": {"config": {"version": "v1"}}, "autoscaling": {"min_replicas": 2, "max_replicas": 2, "init_replicas": 2}},
    )
    info = g.describe(name)
    ready = ready_replicas(info)
    assert len(ready) == 2, info["replica_details"]
    victim = ready[0]
    survivor = ready[1]

    with Load(g, f"/{name}", clients=2, timeout=30) as load:
        time.sleep(1)
        t_kill = load.now()
        os.kill(victim["pid"], signal.SIGKILL)  # a replica this module's daemon started

        def back():
            d = cli_json(g, "describe", name)
            rs = ready_replicas(d)
            return len(rs) == 2 and victim["pid"] not in [r["pid"] for r in rs] and d

        seen_states: set[str] = set()
        counts: list[dict] = []

        def back_watch():
            d = cli_json(g, "describe", name)
            seen_states.update(r["state"] for r in d["replica_details"])
            counts.append(d["replicas"])
            return back()

        d = wait_until(back_watch, 30, interval=0.2, what=lambda: "the killed replica to be replaced\n" + g.diag(name))
        t_back = load.now()
        time.sleep(1)
    results = load.results

    # Requests kept succeeding; a request in flight on the killed replica may get a 503 that
    # says so, nothing else.
    bad = failures(results)
    for r in bad:
        assert r.status == 503 and isinstance(r.body, dict) and "stopped before answering" in r.body.get("error", ""), (
            summary(results) + "\n" + g.diag(name)
        )
    assert len(bad) <= 2, summary(results)  # at most one per client
    during = [r for r in results if t_kill < r.start < t_back]
    assert sum(r.status == 200 for r in during) > 3, summary(results)

    new = [r for r in ready_replicas(d) if r["pid"] != survivor["pid"]]
    assert len(new) == 1 and new[0]["restarts"] >= 1, d["replica_details"]
    assert any(r["pid"] == survivor["pid"] for r in ready_replicas(d)), "the survivor was restarted too"
    # While it waited for its restart, it was counted as failed, and 2 stayed requested.
    assert any(c["failed"] >= 1 for c in counts), counts
    assert all(c["requested"] == 2 for c in counts), counts
    info = g.get(name)
    assert info["status"] == "live" and info["replicas"]["ready"] == 2, info
    assert re.search(rf"replica {re.escape(victim['id'])} exited unexpectedly .*restarting in \d+s", g.api_log(name)), tail(
        g.api_log(name)
    )
    print(f"\n[heal] replaced in {t_back - t_kill:.1f}s; states seen: {sorted(seen_states)}; {summary(results)}")


def test_repeated_kills_make_it_crash_looping_with_growing_backoff(g, project, apis):
    name = "looper"
    deploy_api(g, project, apis, name, VERSIONED, api={"predictor": {"config": {"version": "v1"}}})
    statuses: list[str] = []
    delays: list[float] = []  # from each kill to the replacement's process appearing
    t_start = time.monotonic()
    kills = 3  # crash-looping from the third restart on; backoffs 1 + 2 + 4 s
    for n in range(kills):
        d = wait_until(
            lambda: (lambda d: ready_replicas(d) and d)(cli_json(g, "describe", name)),
            40,
            interval=0.1,
            what=lambda: f"a ready replica before kill {n + 1}\n{g.diag(name)}",
        )
        victim = ready_replicas(d)[0]
        os.kill(victim["pid"], signal.SIGKILL)  # a replica this module's daemon started
        t_kill = time.monotonic()

        def replaced():
            i = cli_json(g, "get", name)
            statuses.append(i["status"])
            d = cli_json(g, "describe", name)
            pids = [r["pid"] for r in d["replica_details"] if r["pid"] and r["state"] in ("starting", "ready")]
            return any(p != victim["pid"] for p in pids)

        wait_until(replaced, 40, interval=0.1, what=lambda: f"a replacement after kill {n + 1}\n{g.diag(name)}")
        delays.append(time.monotonic() - t_kill)
        assert time.monotonic() - t_start < 60, f"too slow: delays {delays}"
    # The last replacement is up (restarts == kills) and crashed soon after each start.
    d = wait_until(
        lambda: (lambda d: ready_replicas(d) and d)(cli_json(g, "describe", name)),
        40,
        interval=0.2,
        what=lambda: "the last replacement to be ready\n" + g.diag(name),
    )
    statuses.append(g.get(name)["status"])
    assert ready_replicas(d)[0]["restarts"] == kills, d["replica_details"]
    assert "crash-looping" in statuses, f"statuses seen: {sorted(set(statuses))}\n{g.diag(name)}"
    assert g.get(name)["status"] == "crash-looping", g.get(name)

    # The backoff grows: 1s, 2s, 4s (the log says so, and the delays show it).
    backoffs = [int(x) for x in re.findall(r"exited unexpectedly .*; restarting in (\d+)s", g.api_log(name))]
    assert backoffs == [1, 2, 4], f"backoffs logged: {backoffs}\ndelays measured: {delays}\n{tail(g.api_log(name))}"
    for a, b in zip(delays, delays[1:]):
        assert b > a + 0.5, f"the delay between a kill and its restart did not grow: {delays}"
    for logged, measured in zip(backoffs, delays):
        assert logged - 0.3 < measured < logged + 5, f"backoffs {backoffs}, delays {delays}"
    # Requests are served again.
    with session() as s:
        r = s.post(g.url(f"/{name}"), json={}, timeout=10)
    assert r.status_code == 200, g.diag(name, resp=r)
    print(f"\n[crash loop] delays kill→restart {[round(x, 1) for x in delays]}, logged backoffs {backoffs}, "
          f"statuses seen {sorted(set(statuses))}")


# ------------------------------------------------------------------------------------------
# 5. a request in flight on a replica that dies: 503, at once


def test_request_in_flight_on_a_killed_replica_gets_503(g, project, apis):
    name = "dying"
    deploy_api(g, project, apis, name, SLEEPER, api={"predictor": {"config": {"seconds": 3}}})
    d = g.describe(name)
    replica = ready_replicas(d)[0]
    workers = worker_pids_of(replica["pid"])
    assert workers, f"no worker process under replica {replica['pid']}"

    out: dict = {}

    def call():
        t = time.monotonic()
        try:
            with session() as s:
                out["resp"] = s.post(g.url(f"/{name}"), json={}, timeout=20)
        except requests.RequestException as e:
            out["exc"] = e
        out["end"] = time.monotonic()
        out["start"] = t

    th = threading.Thread(target=call)
    th.start()
    wait_until(
        lambda: any(r["in_flight"] >= 1 for r in cli_json(g, "describe", name)["replica_details"]),
        2.5,
        interval=0.1,
        what="the request to be in flight on the replica",
    )
    os.kill(replica["pid"], signal.SIGKILL)  # the replica this module's daemon started
    t_kill = time.monotonic()
    th.join(25)
    assert not th.is_alive(), "the request hangs after its replica was killed"
    assert "exc" not in out, f"no HTTP answer: {out.get('exc')!r}\n{g.diag(name)}"
    r = out["resp"]
    waited = out["end"] - t_kill
    assert r.status_code == 503, g.diag(name, resp=r)
    assert r.headers["content-type"].startswith("application/json"), g.diag(name, resp=r)
    assert "stopped before answering" in r.json()["error"], r.text
    assert waited < 1.5, f"the 503 came {waited:.2f}s after the kill"

    def served():
        with session() as s:
            resp = s.post(g.url(f"/{name}"), json={"sleep": 0}, timeout=10)
        return resp.status_code == 200 and resp

    wait_until(served, 30, interval=0.3, what=lambda: "the replica to come back\n" + g.diag(name))
    # The killed replica's worker did not outlive it.
    wait_until(
        lambda: not any(pid_alive(p) for p in workers),
        15,
        what=lambda: f"the workers {workers} of the killed replica to exit",
    )
    print(f"\n[in flight] 503 {waited:.2f}s after the kill: {r.json()['error']}")


# ------------------------------------------------------------------------------------------
# 6. a worker killed inside a replica: the replica restarts it


def test_killed_worker_is_restarted_by_its_replica(g, project, apis):
    name = "worker-heal"
    deploy_api(g, project, apis, name, VERSIONED, api={"predictor": {"config": {"version": "v1"}}})
    before = ready_replicas(g.describe(name))[0]
    with session() as s:
        r = s.post(g.url(f"/{name}"), json={}, timeout=10)
    assert r.status_code == 200, g.diag(name, resp=r)
    worker = r.json()["worker_pid"]
    assert worker in worker_pids_of(before["pid"]), (worker, worker_pids_of(before["pid"]))
    os.kill(worker, signal.SIGKILL)  # the Python worker of a replica this module started

    def served():
        with session() as s:
            resp = s.post(g.url(f"/{name}"), json={}, timeout=10)
        return resp.status_code == 200 and resp.json()

    t0 = time.monotonic()
    got = wait_until(served, 30, interval=0.2, what=lambda: "a new worker to serve\n" + g.diag(name))
    took = time.monotonic() - t0
    assert got["worker_pid"] != worker, got
    after = g.describe(name)
    reps = ready_replicas(after)
    assert len(reps) == 1 and reps[0]["pid"] == before["pid"], (before, after["replica_details"])
    assert reps[0]["restarts"] == before["restarts"], (before, reps)
    assert g.get(name)["status"] == "live"
    print(f"\n[worker] served by a new worker {took:.1f}s after the kill; replica pid unchanged")


# ------------------------------------------------------------------------------------------
# 7. delete drains in-flight requests


def test_delete_lets_the_request_in_flight_finish(g, project, apis):
    name = "drainer"
    deploy_api(g, project, apis, name, SLEEPER, api={"predictor": {"config": {"seconds": 2}}})
    replica = ready_replicas(g.describe(name))[0]
    out: dict = {}

    def call():
        try:
            with session() as s:
                out["resp"] = s.post(g.url(f"/{name}"), json={}, timeout=30)
        except requests.RequestException as e:
            out["exc"] = e

    th = threading.Thread(target=call)
    th.start()
    wait_until(
        lambda: any(r["in_flight"] >= 1 for r in cli_json(g, "describe", name)["replica_details"]),
        1.5,
        interval=0.1,
        what="the request to be in flight",
    )
    proc = g.run("delete", name, timeout=60)
    assert proc.returncode == 0, g.diag(name, proc=proc)
    th.join(30)
    assert not th.is_alive(), "the request hangs after delete"
    assert "exc" not in out, f"no HTTP answer: {out.get('exc')!r}\n{g.diag(name)}"
    r = out["resp"]
    assert r.status_code == 200 and r.json()["version"] == "v1", g.diag(name, resp=r)
    # Then the replica is gone and the endpoint with it.
    wait_until(lambda: not pid_alive(replica["pid"]), 30, what=lambda: "the replica to exit\n" + g.diag(name))
    with session() as s:
        after = s.post(g.url(f"/{name}"), json={}, timeout=10)
    assert after.status_code == 404, g.diag(name, resp=after)


def test_scale_down_lets_the_requests_in_flight_finish(g, project, apis):
    """Redeploying with a lower max_replicas stops replicas; their requests still finish."""
    name = "shrinker"
    spec = {
        "predictor": {"config": {"seconds": 2}},
        "autoscaling": {"min_replicas": 2, "max_replicas": 2, "init_replicas": 2},
    }
    proj = deploy_api(g, project, apis, name, SLEEPER, api=spec)
    assert len(ready_replicas(g.describe(name))) == 2
    results: list = [None, None]

    def call(i):
        try:
            with session() as s:
                results[i] = s.post(g.url(f"/{name}"), json={}, timeout=30)
        except requests.RequestException as e:
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    wait_until(
        lambda: sum(r["in_flight"] for r in cli_json(g, "describe", name)["replica_details"]) >= 2,
        1.5,
        interval=0.1,
        what="two requests in flight",
    )
    # Same code, one replica: the autoscaler's bounds shrink, a replica stops.
    proj2 = project(name, SLEEPER, api={**spec, "autoscaling": {"min_replicas": 1, "max_replicas": 1, "init_replicas": 1}})
    assert proj2 == proj
    proc = g.deploy(proj2, timeout=90)
    for t in threads:
        t.join(30)
    assert proc.returncode == 0, g.diag(name, proc=proc)
    bad = [r for r in results if isinstance(r, Exception) or r.status_code != 200]
    assert not bad, [(r if isinstance(r, Exception) else (r.status_code, r.text)) for r in results]
    wait_until(
        lambda: len([r for r in cli_json(g, "describe", name)["replica_details"] if r["state"] in ("ready", "starting")]) == 1,
        30,
        what=lambda: "one replica left\n" + g.diag(name),
    )


def test_daemon_stop_lets_the_request_in_flight_finish(tmp_path, project):
    """`gyrus daemon stop` (its own home and port here) drains the replicas first."""
    other = Gyrus(tmp_path / "home")
    other.env["GYRUS_AUTOSCALE_INTERVAL"] = "1s"
    name = "stopper"
    try:
        other.deploy_ok(project(name, SLEEPER, api={"predictor": {"config": {"seconds": 2}}}), name)
        replica = ready_replicas(other.describe(name))[0]
        out: dict = {}

        def call():
            try:
                with session() as s:
                    out["resp"] = s.post(other.url(f"/{name}"), json={}, timeout=30)
            except requests.RequestException as e:
                out["exc"] = e

        th = threading.Thread(target=call)
        th.start()
        wait_until(
            lambda: any(r["in_flight"] >= 1 for r in cli_json(other, "describe", name)["replica_details"]),
            1.5,
            interval=0.1,
            what="the request to be in flight",
        )
        proc = other.run("daemon", "stop", timeout=60)
        assert proc.returncode == 0, other.diag(name, proc=proc)
        th.join(30)
        assert not th.is_alive(), "the request hangs after `gyrus daemon stop`"
        assert "exc" not in out, f"no HTTP answer: {out.get('exc')!r}\n{other.diag(name)}"
        r = out["resp"]
        assert r.status_code == 200 and r.json()["version"] == "v1", other.diag(name, resp=r)
        assert not pid_alive(replica["pid"]), "the replica outlived `gyrus daemon stop`"
    finally:
        other.teardown()


# ------------------------------------------------------------------------------------------
# 8. memory limit (last: the newest feature)


def test_memory_limit_kills_and_restarts_the_replica(g, project, apis):
    name = "hog"
    deploy_api(g, project, apis, name, HOG, api={"compute": {"mem": "200Mi"}})
    with session() as s:
        r = s.post(g.url(f"/{name}"), json={}, timeout=10)
    assert r.status_code == 200, g.diag(name, resp=r)
    replica = ready_replicas(g.describe(name))[0]

    t0 = time.monotonic()
    with session() as s:
        try:
            big = s.post(g.url(f"/{name}"), json={"alloc_mb": 400, "hold": 8}, timeout=30)
        except requests.RequestException as e:
            pytest.fail(f"no HTTP answer to the request over the memory limit: {e!r}\n{g.diag(name)}")
    took = time.monotonic() - t0
    assert big.status_code == 503, g.diag(name, resp=big)
    assert "error" in big.json(), big.text
    assert took < 7, f"the replica over its limit was stopped only after {took:.1f}s (the request held 8s)"

    def oom_reported():
        d = cli_json(g, "describe", name)
        errs = [r.get("error") or "" for r in d["replica_details"]]
        return any("out of memory" in e for e in errs) and d

    d = wait_until(oom_reported, 15, interval=0.3, what=lambda: "'out of memory' in describe\n" + g.diag(name))
    assert not pid_alive(replica["pid"]), "the replica over its memory limit is still alive"

    def served():
        with session() as s:
            resp = s.post(g.url(f"/{name}"), json={}, timeout=10)
        return resp.status_code == 200 and resp

    wait_until(served, 30, interval=0.3, what=lambda: "the replica to be restarted\n" + g.diag(name))
    after = g.describe(name)
    reps = ready_replicas(after)
    assert len(reps) == 1 and reps[0]["pid"] != replica["pid"] and reps[0]["restarts"] >= 1, after["replica_details"]
    oom_lines = [l for l in g.api_log(name).splitlines() if "out of memory" in l]
    print(f"\n[memory] 503 after {took:.1f}s: {big.json()['error']}\n[memory] describe errors: "
          f"{[r.get('error') for r in d['replica_details'] if r.get('error')]}\n[memory] log: {oom_lines}")
