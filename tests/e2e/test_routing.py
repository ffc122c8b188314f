"""Routing and API management beyond the basic life cycle: custom endpoints, several APIs in
one config, HTTP methods, `refresh`, `deploy --no-wait`, `logs --tail`."""

import json
import subprocess

import pytest

from e2e_helpers import GYRUS_BIN, pid_alive, to_yaml, wait_until, write_files

PREDICTOR = """
import os


class PythonPredictor:
    def __init__(self, config):
        self.name = config["name"]
        print(f"constructed {self.name} in pid {os.getpid()}", flush=True)

    def predict(self, payload):
        return {"api": self.name, "pid": os.getpid()}
"""


def spec(name, **extra):
    s = {
        "name": name,
        "predictor": {"type": "python", "path": "predictor.py", "config": {"name": name}},
        "autoscaling": {"init_replicas": 1},
    }
    s.update(extra)
    return s


@pytest.fixture(scope="module")
def pair(gyrus, projects_dir):
    """One project, one cortex.yaml, two APIs (one at a custom endpoint)."""
    d = projects_dir / "pair"
    d.mkdir()
    write_files(d, {"predictor.py": PREDICTOR})
    (d / "cortex.yaml").write_text(to_yaml([spec("alpha"), spec("beta", endpoint="/custom/beta-path")]))
    proc = gyrus.deploy(d)
    assert proc.returncode == 0, gyrus.diag("alpha", "beta", proc=proc)
    assert "alpha is live at" in proc.stdout and "beta is live at" in proc.stdout, gyrus.diag(proc=proc)
    return {"dir": d, "gyrus": gyrus}


def test_two_apis_from_one_config(pair):
    g = pair["gyrus"]
    r = g.post("/alpha", json={})
    assert r.status_code == 200 and r.json()["api"] == "alpha", g.diag("alpha", resp=r)
    names = sorted(i["name"] for i in g.json("get", "-o", "json"))
    assert names == ["alpha", "beta"], names


def test_custom_endpoint(pair):
    g = pair["gyrus"]
    r = g.post("/custom/beta-path", json={})
    assert r.status_code == 200 and r.json()["api"] == "beta", g.diag("beta", resp=r)
    assert g.get("beta")["url"] == f"{g.base_url}/custom/beta-path"
    r = g.post("/beta", json={})
    assert r.status_code == 404, g.diag("beta", resp=r)
    endpoints = {a["name"]: a.get("endpoint") for a in r.json()["apis"]}
    assert endpoints.get("beta") == "/custom/beta-path", r.text


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_rejected(pair, method):
    g = pair["gyrus"]
    r = g.http.request(method, g.url("/alpha"), timeout=10)
    assert r.status_code == 405, g.diag("alpha", resp=r)
    assert "error" in r.json(), r.text


def test_unknown_endpoint_get_is_404(pair):
    g = pair["gyrus"]
    r = g.get_http("/nothing/here")
    assert r.status_code == 404, g.diag(resp=r)
    assert sorted(a["name"] for a in r.json()["apis"]) == ["alpha", "beta"], r.text


def test_predictor_output_is_in_the_logs(pair):
    g = pair["gyrus"]
    text = g.cli_logs("alpha")
    assert "constructed alpha in pid" in text, text
    assert "constructed beta" not in text, "the logs of one API hold another's output"


def test_logs_tail(pair):
    g = pair["gyrus"]
    full = g.cli_logs("alpha").splitlines()
    assert len(full) >= 2, full
    proc = g.ok("logs", "alpha", "--tail", "1", apis=("alpha",))
    assert proc.stdout.splitlines() == full[-1:], (proc.stdout, full[-3:])


def test_refresh_restarts_the_replicas(pair):
    g = pair["gyrus"]
    before = g.describe("alpha")
    old_pids = [r["pid"] for r in before["replica_details"] if r["state"] == "ready"]
    old_worker = g.post("/alpha", json={}).json()["pid"]
    proc = g.run("refresh", "alpha", timeout=120)
    assert proc.returncode == 0, g.diag("alpha", proc=proc)
    after = g.get("alpha")
    assert after["status"] == "live" and after["generation"] == before["generation"] + 1, after
    r = g.post("/alpha", json={})
    assert r.status_code == 200 and r.json()["pid"] != old_worker, g.diag("alpha", resp=r)
    wait_until(
        lambda: not any(pid_alive(p) for p in old_pids),
        45,
        what=lambda: f"the old replicas {old_pids} to stop\n{g.diag('alpha')}",
    )
    # beta is untouched
    assert g.get("beta")["generation"] == 1


def test_deploy_no_wait(pair):
    g = pair["gyrus"]
    predictor = pair["dir"] / "predictor.py"
    predictor.write_text(predictor.read_text().replace('"api": self.name', '"api": self.name, "v": 2'))
    proc = g.run("deploy", str(pair["dir"]), "--no-wait", "-o", "json", timeout=60)
    assert proc.returncode == 0, g.diag(proc=proc)
    resp = json.loads(proc.stdout)
    assert {a["name"]: a["result"] for a in resp["apis"]} == {"alpha": "updated", "beta": "updated"}, resp
    assert resp["warnings"] == [], resp

    def both_v2():
        return all(g.post(e, json={}).json().get("v") == 2 for e in ["/alpha", "/custom/beta-path"])

    wait_until(both_v2, 60, interval=0.2, what=lambda: "both APIs to serve v2\n" + g.diag("alpha", "beta"))
    assert all(i["status"] == "live" for i in g.json("get", "-o", "json"))


def test_config_named_with_f_and_gyrus_yaml(pair, projects_dir):
    g = pair["gyrus"]
    d = projects_dir / "alt-config"
    d.mkdir()
    write_files(d, {"predictor.py": PREDICTOR})
    (d / "alt.yaml").write_text(to_yaml([spec("gamma")]))
    g.deploy_ok(d, "gamma", "-f", "alt.yaml")
    r = g.post("/gamma", json={})
    assert r.status_code == 200 and r.json()["api"] == "gamma", g.diag("gamma", resp=r)

    (d / "alt.yaml").rename(d / "gyrus.yaml")
    (d / "gyrus.yaml").write_text(to_yaml([spec("delta")]))
    g.deploy_ok(d, "delta")
    r = g.post("/delta", json={})
    assert r.status_code == 200 and r.json()["api"] == "delta", g.diag("delta", resp=r)


def test_logs_follow_prints_new_lines(pair):
    g = pair["gyrus"]
    out = g.home.parent / "logs-follow.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [GYRUS_BIN, "logs", "alpha", "-f"], env=g.env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        wait_until(lambda: out.stat().st_size > 0, 10, what="the existing log lines")
        r = g.post("/alpha", json={"follow_marker": "heron-3141"}, params={"debug": "true"})
        assert r.status_code == 200, g.diag("alpha", resp=r)
        wait_until(
            lambda: b"heron-3141" in out.read_bytes(),
            10,
            what=lambda: f"the new line in `gyrus logs -f`\n{out.read_text(errors='replace')}\n{g.diag('alpha')}",
        )
        assert proc.poll() is None, "gyrus logs -f exited on its own"
    finally:
        proc.terminate()
        proc.wait(10)
