"""The life of one API (examples/hello): deploy, predict, inspect, redeploy, delete.

The tests of this module run in order against one daemon and one copy of the example.
"""

import json

import pytest

from e2e_helpers import copy_example, pid_alive, wait_until

API = "hello"


@pytest.fixture(scope="module")
def hello(gyrus, projects_dir):
    """examples/hello copied to a tmp dir (so it can be edited) and deployed."""
    proj = copy_example("hello", projects_dir)
    proc = gyrus.deploy_ok(proj, API)
    return {"dir": proj, "deploy": proc}


def test_deploy_prints_live_url(gyrus, hello):
    proc = hello["deploy"]
    assert f"hello is live at {gyrus.base_url}/hello" in proc.stdout, gyrus.diag(API, proc=proc)


def test_predict_through_the_gateway(gyrus, hello):
    r = gyrus.post("/hello", json={"name": "gyrus"})
    assert r.status_code == 200, gyrus.diag(API, resp=r)
    assert r.headers["content-type"].startswith("application/json"), gyrus.diag(API, resp=r)
    assert r.json() == {"message": "hello, gyrus!"}, gyrus.diag(API, resp=r)
    # A request the way curl -d sends it (no explicit JSON helper, raw body + header).
    r = gyrus.post("/hello", data=b'{"name": "curl"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json() == {"message": "hello, curl!"}, gyrus.diag(API, resp=r)


def test_predict_with_the_cli(gyrus, hello):
    proc = gyrus.ok("predict", API, '{"name": "cli"}', apis=(API,))
    assert json.loads(proc.stdout) == {"message": "hello, cli!"}, gyrus.diag(API, proc=proc)


def test_predict_with_the_cli_from_a_file(gyrus, hello, tmp_path):
    payload = tmp_path / "payload.json"
    payload.write_text('{"name": "file"}')
    proc = gyrus.ok("predict", API, f"@{payload}", apis=(API,))
    assert json.loads(proc.stdout) == {"message": "hello, file!"}, gyrus.diag(API, proc=proc)


def test_get_json_shows_live_one_of_one(gyrus, hello):
    info = gyrus.get(API)
    assert info["name"] == API
    assert info["status"] == "live", info
    assert {k: info["replicas"][k] for k in ("requested", "ready", "starting", "failed")} == {"requested": 1, "ready": 1, "starting": 0, "failed": 0}, info
    assert info["url"] == f"{gyrus.base_url}/hello", info
    assert info["endpoint"] == "/hello", info
    assert info["error"] is None, info
    listing = gyrus.json("get", "-o", "json")
    assert [i["name"] for i in listing] == [API], listing


def test_get_table(gyrus, hello):
    proc = gyrus.ok("get", apis=(API,))
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["API", "STATUS"], proc.stdout
    row = next(line for line in lines if line.startswith("hello "))
    assert "live" in row and "1/1" in row and f"{gyrus.base_url}/hello" in row, proc.stdout


def test_describe_lists_the_ready_replica(gyrus, hello):
    info = gyrus.describe(API)
    details = info["replica_details"]
    assert len(details) == 1, info
    assert details[0]["state"] == "ready", info
    assert details[0]["pid"] and pid_alive(details[0]["pid"]), info
    assert details[0]["generation"] == info["generation"], info


def test_get_on_the_endpoint_is_health(gyrus, hello):
    r = gyrus.get_http("/hello")
    assert r.status_code == 200, gyrus.diag(API, resp=r)
    body = r.json()
    assert isinstance(body, dict), body


def test_trailing_slash_reaches_the_api(gyrus, hello):
    r = gyrus.post("/hello/", json={"name": "slash"})
    assert r.status_code == 200 and r.json() == {"message": "hello, slash!"}, gyrus.diag(API, resp=r)


def test_unknown_endpoint_is_404_listing_the_apis(gyrus, hello):
    r = gyrus.post("/no-such-endpoint", json={})
    assert r.status_code == 404, gyrus.diag(resp=r)
    body = r.json()
    assert "error" in body and "/no-such-endpoint" in body["error"], body
    names = [a["name"] if isinstance(a, dict) else a for a in body["apis"]]
    assert API in names, body


def test_logs_command_prints_the_api_log(gyrus, hello):
    text = gyrus.cli_logs(API)
    assert "generation 1 is live" in text or "ready" in text, text


def test_redeploy_after_an_edit_serves_new_code(gyrus, hello):
    before = gyrus.get(API)
    predictor = hello["dir"] / "predictor.py"
    predictor.write_text(
        predictor.read_text().replace('return {"message": f"{self.greeting}, {name}!"}',
                                      'return {"message": f"{self.greeting}, {name}!", "version": 2}')
    )
    assert '"version": 2' in predictor.read_text(), "the example changed; update this test"
    proc = gyrus.deploy_ok(hello["dir"], API)
    assert "hello: updated" in proc.stderr, gyrus.diag(API, proc=proc)
    r = gyrus.post("/hello", json={"name": "again"})
    assert r.status_code == 200, gyrus.diag(API, resp=r)
    assert r.json() == {"message": "hello, again!", "version": 2}, gyrus.diag(API, resp=r)
    after = gyrus.get(API)
    assert after["generation"] == before["generation"] + 1, (before, after)
    assert after["status"] == "live" and after["replicas"]["ready"] == 1, after


def test_old_replica_is_stopped_after_redeploy(gyrus, hello):
    info = gyrus.describe(API)
    gen = info["generation"]
    old_pids = [r["pid"] for r in info["replica_details"] if r["generation"] != gen and r.get("pid")]
    wait_until(
        lambda: not any(pid_alive(p) for p in old_pids),
        45,
        what=lambda: f"old-generation replicas {old_pids} to exit\n{gyrus.diag(API)}",
    )


def test_deploying_unchanged_is_up_to_date(gyrus, hello):
    before = gyrus.get(API)
    proc = gyrus.deploy_ok(hello["dir"], API)
    assert "hello: up to date" in proc.stderr, gyrus.diag(API, proc=proc)
    after = gyrus.get(API)
    assert after["generation"] == before["generation"], (before, after)


def test_delete_removes_endpoint_and_replicas(gyrus, hello):
    info = gyrus.describe(API)
    pids = [r["pid"] for r in info["replica_details"] if r.get("pid")]
    assert pids, info
    proc = gyrus.ok("delete", API, apis=(API,))
    assert "deleted hello" in proc.stdout, gyrus.diag(API, proc=proc)
    r = gyrus.post("/hello", json={})
    assert r.status_code == 404, gyrus.diag(API, resp=r)
    assert API not in [a["name"] for a in r.json()["apis"]], r.text
    wait_until(
        lambda: not any(pid_alive(p) for p in pids),
        45,
        what=lambda: f"replica processes {pids} to exit\n{gyrus.diag(API)}",
    )
    assert gyrus.json("get", "-o", "json") == []
    proc = gyrus.run("get", API, "-o", "json")
    assert proc.returncode == 1, gyrus.diag(proc=proc)
