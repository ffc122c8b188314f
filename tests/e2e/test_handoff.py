"""Connection hand-off (one hop to the model): the daemon reads a connection's first request
head and hands the socket to the replica serving that API, which answers every later request
on it itself. What must hold, seen from a client holding one keep-alive connection:

- the replica's process holds the connection (the daemon no longer parses its requests);
- any path still works on it: another API's, the server-wide `/v2`, the control API, errors;
- a replica killed while the connection is idle costs the client nothing: the daemon, which
  kept a copy of the socket, carries on and hands it to another replica;
- a rolling update moves the connection to the new version without closing it;
- connections spread over the replicas of an API.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time

import pytest

from e2e_helpers import to_yaml, wait_until, write_files

PREDICTOR = """
import os


class PythonPredictor:
    def __init__(self, config):
        self.name = config["name"]
        self.version = config.get("version", "v1")

    def predict(self, payload):
        return {"api": self.name, "version": self.version, "worker_pid": os.getpid()}
"""


def api(name, replicas=1, version="v1", **extra):
    spec = {
        "name": name,
        "predictor": {"type": "python", "path": "predictor.py", "config": {"name": name, "version": version}},
        "autoscaling": {"min_replicas": replicas, "max_replicas": replicas, "init_replicas": replicas},
    }
    spec.update(extra)
    return spec


def deploy(g, d, specs):
    write_files(d, {"predictor.py": PREDICTOR})
    (d / "cortex.yaml").write_text(to_yaml(specs))
    proc = g.deploy(d)
    assert proc.returncode == 0, g.diag(*[s["name"] for s in specs], proc=proc)


@pytest.fixture(scope="module")
def apis(gyrus, projects_dir):
    deploy(gyrus, projects_dir / "pair", [api("alpha", replicas=2), api("beta", endpoint="/custom/beta")])
    return gyrus


def socket_holders(server_port: int, client_port: int) -> set[int]:
    """The pids that hold the server side of the TCP connection from client_port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if int(f[1].rsplit(":", 1)[1], 16) == server_port and int(f[2].rsplit(":", 1)[1], 16) == client_port:
                inodes.add(f"socket:[{f[9]}]")
    holders = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    holders.add(int(pid))
            except OSError:
                pass
    return holders


class Conn:
    """One keep-alive connection, never silently reopened (http.client raises if it closed)."""

    def __init__(self, g):
        self.g = g
        self.c = http.client.HTTPConnection("127.0.0.1", g.port, timeout=20)
        self.c.connect()
        self.sock = self.c.sock
        self.client_port = self.sock.getsockname()[1]

    def call(self, method, path, body=None, headers=None):
        h = {"Content-Type": "application/json", **(headers or {})}
        self.c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = self.c.getresponse()
        data = r.read()
        assert self.c.sock is self.sock, "the connection was reopened"
        try:
            payload = json.loads(data) if data else None
        except ValueError:
            payload = data.decode(errors="replace")
        return r.status, payload, r

    def holders(self):
        return socket_holders(self.g.port, self.client_port)

    def close(self):
        self.c.close()


def replica_pids(g, name):
    return {r["pid"] for r in g.describe(name)["replica_details"] if r["state"] == "ready"}


def test_the_replica_holds_the_connection(apis):
    g = apis
    c = Conn(g)
    status, body, _ = c.call("POST", "/alpha", {})
    assert status == 200 and body["api"] == "alpha", body
    holders = c.holders()
    pids = replica_pids(g, "alpha")
    assert holders & pids, f"no replica of alpha ({pids}) holds the connection; holders: {holders}"
    c.close()


def test_one_connection_reaches_every_kind_of_path(apis):
    g = apis
    c = Conn(g)
    assert c.call("POST", "/alpha", {})[1]["api"] == "alpha"
    status, body, _ = c.call("GET", "/v2")
    assert status == 200 and body["name"] == "gyrus", body
    status, body, _ = c.call("POST", "/custom/beta", {})
    assert status == 200 and body["api"] == "beta", body
    status, body, _ = c.call("GET", "/_gyrus/v1/health")
    assert status == 200 and body["status"] == "ok", body
    status, body, _ = c.call("GET", "/nowhere")
    assert status == 404 and {a["name"] for a in body["apis"]} == {"alpha", "beta"}, body
    status, body, r = c.call("PUT", "/alpha", {})
    assert status == 405 and r.getheader("allow") == "GET, HEAD, POST", body
    status, body, _ = c.call("GET", "/alpha/")
    assert status == 200 and body["status"] == "ready", body
    status, body, _ = c.call("POST", "/alpha?debug=true", {})
    assert status == 200 and body["api"] == "alpha", body
    c.close()


def test_connections_spread_over_the_replicas(apis):
    g = apis
    pids = replica_pids(g, "alpha")
    assert len(pids) == 2, g.describe("alpha")["replica_details"]
    conns = [Conn(g) for _ in range(4)]
    for c in conns:
        assert c.call("POST", "/alpha", {})[0] == 200
    held = [c.holders() & pids for c in conns]
    assert all(len(h) == 1 for h in held), held
    assert set().union(*held) == pids, f"4 connections, 2 replicas, held by {held}"
    for c in conns:
        c.close()


def test_an_idle_connection_outlives_its_killed_replica(apis):
    g = apis
    c = Conn(g)
    assert c.call("POST", "/alpha", {})[0] == 200
    pids = replica_pids(g, "alpha")
    (victim,) = c.holders() & pids
    os.kill(victim, signal.SIGKILL)  # a replica this module's daemon started
    wait_until(lambda: victim not in c.holders(), 5, what="the killed replica to let go of the socket")
    # The same connection, not reopened: the daemon carried it on to the other replica.
    status, body, _ = c.call("POST", "/alpha", {})
    assert status == 200 and body["api"] == "alpha", (status, body, g.diag("alpha"))
    assert c.holders() & (pids - {victim}), c.holders()
    c.close()
    wait_until(lambda: len(replica_pids(g, "alpha")) == 2, 30, what=lambda: "alpha back to 2\n" + g.diag("alpha"))


def test_a_rolling_update_moves_the_connection_to_the_new_version(gyrus, projects_dir):
    g = gyrus
    d = projects_dir / "roller"
    deploy(g, d, [api("roller", version="v1")])
    c = Conn(g)
    assert c.call("POST", "/roller", {})[1]["version"] == "v1"
    old = replica_pids(g, "roller")
    deploy(g, d, [api("roller", version="v2")])
    wait_until(lambda: not (replica_pids(g, "roller") & old), 30, what=lambda: g.diag("roller"))
    status, body, _ = c.call("POST", "/roller", {})
    assert status == 200 and body["version"] == "v2", (status, body)
    assert c.holders() & replica_pids(g, "roller"), c.holders()
    c.close()
    g.ok("delete", "roller")


def test_an_idle_connection_goes_back_to_the_daemon_and_on(apis):
    """After a while a replica gives an idle connection back (so that connections spread over
    replicas added later); the client does not notice."""
    g = apis
    c = Conn(g)
    assert c.call("POST", "/alpha", {})[0] == 200
    pids = replica_pids(g, "alpha")
    wait_until(lambda: not (c.holders() & pids), 10, what="the replica to give the connection back")
    status, body, _ = c.call("POST", "/alpha", {})
    assert status == 200 and body["api"] == "alpha", body
    assert c.holders() & pids
    c.close()
