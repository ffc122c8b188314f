"""Cortex's TrafficSplitter: one endpoint whose requests the gateway shares among realtime APIs
by weight, with a shadow API that gets copies. Shares are counted over 2,000 requests."""

import json
import time
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_helpers import to_yaml, wait_until, write_files

PREDICTOR = """
class PythonPredictor:
    def __init__(self, config):
        self.name = config["name"]
        self.copies = config.get("copies")

    def predict(self, payload):
        if "blob" in payload:
            return {"api": self.name, "blob": len(payload["blob"]), "tail": payload["blob"][-8:]}
        if self.copies:
            with open(self.copies, "a") as f:
                f.write(str(payload.get("n")) + "\\n")
        return {"api": self.name}
"""

REQUESTS = 2000


def api(name, **config):
    return {
        "name": name,
        "predictor": {"type": "python", "path": "predictor.py", "config": {"name": name, **config}},
        "autoscaling": {"init_replicas": 1},
    }


def splitter(weights, shadow=None, name="split"):
    apis = [{"name": n, "weight": w} for n, w in weights.items()]
    if shadow:
        apis.append({"name": shadow[0], "weight": shadow[1], "shadow": True})
    return {"name": name, "kind": "TrafficSplitter", "apis": apis}


@pytest.fixture(scope="module")
def split(gyrus, projects_dir):
    d = projects_dir / "split"
    d.mkdir()
    copies = projects_dir / "shadow-copies.txt"
    write_files(d, {"predictor.py": PREDICTOR})
    items = [api("api-a"), api("api-b"), api("api-c", copies=str(copies))]
    items.append(splitter({"api-a": 70, "api-b": 30}, shadow=("api-c", 50)))
    (d / "cortex.yaml").write_text(to_yaml(items))
    proc = gyrus.deploy(d)
    assert proc.returncode == 0, gyrus.diag("api-a", "api-b", "api-c", proc=proc)
    assert "split is live at" in proc.stdout, gyrus.diag(proc=proc)
    assert "split: created" in proc.stderr, gyrus.diag(proc=proc)
    return {"dir": d, "copies": copies, "items": items}


def test_shares_follow_the_weights_and_the_shadow_gets_copies(gyrus, split):
    answered = Counter()
    order = []
    for n in range(REQUESTS):
        r = gyrus.post("/split", json={"n": n})
        assert r.status_code == 200, gyrus.diag("api-a", "api-b", resp=r)
        by = r.json()["api"]
        assert r.headers["x-gyrus-api"] == by, r.headers
        answered[by] += 1
        order.append(by)
    # The shadow's answers are dropped: it never answers a client.
    assert set(answered) == {"api-a", "api-b"}, answered
    assert abs(answered["api-a"] - 0.70 * REQUESTS) <= 0.05 * REQUESTS, answered
    assert abs(answered["api-b"] - 0.30 * REQUESTS) <= 0.05 * REQUESTS, answered
    # Not by chance: these are the first requests of the route, and every 100 consecutive ones
    # follow the weights exactly, interleaved (no more than 3 of api-a in a row at 70/30).
    for start in range(0, REQUESTS, 100):
        window = Counter(order[start : start + 100])
        assert window == {"api-a": 70, "api-b": 30}, (start, window)
    longest = max(len(run) for run in "".join("a" if o == "api-a" else "b" for o in order).split("b"))
    assert longest <= 3, longest

    # About half the requests were copied to api-c, each with the request's own body.
    def copies():
        return split["copies"].read_text().split() if split["copies"].exists() else []

    last = [-1]

    def settled():
        n = len(copies())
        done = n == last[0]
        last[0] = n
        return done

    wait_until(settled, 30, interval=1.0, what=lambda: f"the copies to settle ({len(copies())})")
    got = copies()
    assert abs(len(got) - 0.5 * REQUESTS) <= 0.05 * REQUESTS, (len(got), gyrus.diag("api-c"))
    assert len(set(got)) == len(got) and all(0 <= int(n) < REQUESTS for n in got), got[:20]

    # /metrics counts what the splitter did: each API's requests, the copies sent and skipped.
    def counted():
        text = gyrus.http.get(f"{gyrus.base_url}/metrics", timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for m in family.samples:
                if m.name == "gyrus_splitter_requests_total" and m.labels["splitter"] == "split":
                    out[(m.labels["api"], m.labels["role"])] = m.value
        return out

    def all_counted():
        c = counted()
        return c.get(("api-a", "sent"), 0) + c.get(("api-b", "sent"), 0) == REQUESTS

    wait_until(all_counted, 15, what=lambda: f"the splitter's metrics: {counted()}")
    c = counted()
    assert c[("api-a", "sent")] == answered["api-a"] and c[("api-b", "sent")] == answered["api-b"], c
    assert c[("api-c", "copied")] == len(got) and c.get(("api-c", "copy_skipped"), 0) == 0, c


def test_get_shows_the_splitter_and_its_shares(gyrus, split):
    info = gyrus.get("split")
    assert info["kind"] == "TrafficSplitter" and info["status"] == "live", info
    assert info["url"] == f"{gyrus.base_url}/split", info
    shares = {(s["api"], s["weight"], s["shadow"], s["status"]) for s in info["splits"]}
    assert shares == {("api-a", 70, False, "live"), ("api-b", 30, False, "live"), ("api-c", 50, True, "live")}, info
    table = gyrus.ok("get", "split").stdout
    assert "splits 3 API(s)" in table and "70%" in table and "50% copied (shadow)" in table, table
    listed = {i["name"]: i["kind"] for i in gyrus.json("get", "-o", "json")}
    assert listed == {"api-a": "RealtimeAPI", "api-b": "RealtimeAPI", "api-c": "RealtimeAPI", "split": "TrafficSplitter"}
    described = gyrus.ok("describe", "split").stdout
    assert "kind:        TrafficSplitter" in described and "api-b" in described, described
    # validate shows it as an item of the same list.
    items = json.loads(gyrus.ok("validate", str(split["dir"]), "-o", "json").stdout)
    assert items[-1] == {
        "name": "split",
        "kind": "TrafficSplitter",
        "endpoint": "/split",
        "apis": [
            {"name": "api-a", "weight": 70, "shadow": False},
            {"name": "api-b", "weight": 30, "shadow": False},
            {"name": "api-c", "weight": 50, "shadow": True},
        ],
    }, items[-1]


def test_an_api_in_use_is_not_deleted(gyrus, split):
    proc = gyrus.run("delete", "api-b")
    assert proc.returncode != 0, gyrus.diag(proc=proc)
    assert 'api "api-b" is used by traffic splitter split' in proc.stderr, proc.stderr
    assert gyrus.post("/api-b", json={}).json() == {"api": "api-b"}
    proc = gyrus.run("logs", "split")
    assert proc.returncode != 0 and "traffic splitter" in proc.stderr, proc.stderr
    proc = gyrus.run("refresh", "split")
    assert proc.returncode != 0 and "no replicas to restart" in proc.stderr, proc.stderr


def test_a_splitter_must_name_deployed_realtime_apis(gyrus, projects_dir):
    d = projects_dir / "bad-split"
    d.mkdir()
    (d / "cortex.yaml").write_text(to_yaml([splitter({"api-a": 50, "api-bb": 50}, name="bad")]))
    proc = gyrus.deploy(d)
    assert proc.returncode != 0, gyrus.diag(proc=proc)
    assert 'api "api-bb" is not deployed and not in the config file' in proc.stderr, proc.stderr
    assert 'did you mean "api-b"' in proc.stderr, proc.stderr
    assert "bad" not in {i["name"] for i in gyrus.json("get", "-o", "json")}
    # The endpoint of a deployed API is not free either.
    (d / "cortex.yaml").write_text(to_yaml([{**splitter({"api-a": 100}, name="bad"), "endpoint": "/api-b"}]))
    proc = gyrus.deploy(d)
    assert proc.returncode != 0 and 'endpoint /api-b is already used by api "api-b"' in proc.stderr, proc.stderr


def test_new_weights_apply_at_once_and_survive_a_restart(gyrus, split):
    items = split["items"][:3] + [splitter({"api-a": 0, "api-b": 100})]
    (split["dir"] / "cortex.yaml").write_text(to_yaml(items))
    proc = gyrus.deploy(split["dir"])
    assert proc.returncode == 0 and "split: updated" in proc.stderr, gyrus.diag(proc=proc)
    assert {gyrus.post("/split", json={}).json()["api"] for _ in range(20)} == {"api-b"}

    gyrus.stop_daemon()
    gyrus.start_daemon()
    wait_until(lambda: gyrus.get("split")["status"] == "live", 90, what=lambda: gyrus.diag("api-a", "api-b"))
    assert {gyrus.post("/split", json={}).json()["api"] for _ in range(20)} == {"api-b"}
    proc = gyrus.deploy(split["dir"])
    assert proc.returncode == 0 and "split: up to date" in proc.stderr, gyrus.diag(proc=proc)


def test_a_large_body_reaches_the_api_whole_without_a_copy(gyrus, split):
    """Over 4 MiB the body is streamed on to the answering API (not held for a copy)."""
    items = split["items"][:3] + [splitter({"api-a": 100}, shadow=("api-c", 100), name="big")]
    (split["dir"] / "cortex.yaml").write_text(to_yaml(items))
    proc = gyrus.deploy(split["dir"])
    assert proc.returncode == 0, gyrus.diag(proc=proc)
    blob = "x" * (5 * 1024 * 1024) + "the-end!"
    r = gyrus.post("/big", json={"blob": blob}, timeout=60)
    assert r.status_code == 200, gyrus.diag("api-a", resp=r)
    assert r.json() == {"api": "api-a", "blob": len(blob), "tail": "the-end!"}, r.text[:200]
    # A small one is copied; the copy carries the client's request id with .shadow.
    r = gyrus.post("/big", json={"n": -1}, headers={"X-Request-ID": "probe-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "probe-123", r.headers
    wait_until(
        lambda: "probe-123.shadow" in gyrus.api_log("api-c") or "-1" in split["copies"].read_text().split(),
        15,
        what=lambda: "the small request's copy",
    )
    r = gyrus.http.put(gyrus.url("/big"), json={}, timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST", r.text
    gyrus.ok("delete", "big")


def test_rules_that_keep_a_splitter_reachable(gyrus, split, projects_dir):
    d = projects_dir / "rules"
    d.mkdir()
    write_files(d, {"predictor.py": PREDICTOR})
    # Under api-a's Open Inference Protocol paths, the splitter could never be reached.
    (d / "cortex.yaml").write_text(to_yaml([{**splitter({"api-a": 100}, name="under"), "endpoint": "/api-a/v2/x"}]))
    proc = gyrus.deploy(d)
    assert proc.returncode != 0 and "under api \"api-a\"'s Open Inference Protocol paths" in proc.stderr, proc.stderr
    # An API a splitter sends requests to stays a realtime API.
    batch = {**api("api-b"), "kind": "BatchAPI"}
    del batch["autoscaling"]
    (d / "cortex.yaml").write_text(to_yaml([batch]))
    proc = gyrus.deploy(d)
    assert proc.returncode != 0 and "must stay a RealtimeAPI" in proc.stderr, proc.stderr
    assert gyrus.get("api-b")["kind"] == "RealtimeAPI"


def test_deleting_the_splitter_frees_its_apis(gyrus, split):
    # Named before the splitter that uses it: deleted once the splitter is gone.
    proc = gyrus.ok("delete", "api-b", "split")
    assert proc.stdout.splitlines() == ["deleted split", "deleted api-b"], proc.stdout
    r = gyrus.post("/split", json={})
    assert r.status_code == 404, r.text
    assert "api-b" not in {i["name"] for i in gyrus.json("get", "-o", "json")}
