"""The control API's defences, live: the token, browser-style requests, hostile deploy
archives, upload limits, and a flood of half-open connections.

Each module test talks to the real daemon over HTTP on 127.0.0.1, the way an attacker's
program or a web page in the user's browser would (requests and raw sockets), and checks that
the CLI keeps working throughout.
"""

from __future__ import annotations

import gzip
import io
import resource
import socket
import tarfile
import time
from pathlib import Path

import pytest

from e2e_helpers import EXAMPLES, Gyrus, wait_until

HELLO = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return "hello"
"""


def project_archive(files: dict[str, bytes]) -> bytes:
    """A deploy archive as `gyrus deploy` sends it: a gzipped tar of the project."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def valid_archive(name: str) -> bytes:
    config = f"- name: {name}\n  predictor:\n    type: python\n    path: predictor.py\n".encode()
    return project_archive({"cortex.yaml": config, "predictor.py": HELLO.encode()})


def pax_size_archive(claimed: int, actual: int) -> bytes:
    """A tar whose PAX header says one file is `claimed` bytes while its ustar header says 0:
    the tar reader yields the PAX size. `actual` zero bytes follow (they compress to little)."""

    def block(data: bytes) -> bytes:
        return data + b"\0" * (-len(data) % 512)

    body = "size=%d\n" % claimed
    length = len(body) + 3
    length = len(f"{length} {body}")  # the length counts its own digits
    record = f"{length} {body}".encode()
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = len(record)
    big = tarfile.TarInfo("big.bin")
    big.size = 0
    raw = (
        pax.tobuf(format=tarfile.USTAR_FORMAT)
        + block(record)
        + big.tobuf(format=tarfile.USTAR_FORMAT)
        + b"\0" * actual
    )
    return gzip.compress(raw, compresslevel=1)


@pytest.fixture(scope="module")
def g(gyrus: Gyrus, project) -> Gyrus:
    """The module's gyrus with one API deployed (so the daemon and its token exist)."""
    gyrus.deploy_ok(project("hello", HELLO), "hello")
    return gyrus


def snapshots(g: Gyrus) -> list[str]:
    return sorted(p.name for p in (g.home / "projects").iterdir())


# ------------------------------------------------------------------------------------------
# the token


def test_token_file_is_private(g):
    token = g.home / "token"
    assert token.stat().st_mode & 0o777 == 0o600, oct(token.stat().st_mode)
    assert len(g.token() or "") >= 40


def test_unauthenticated_deploy_is_refused_and_runs_nothing(g):
    before = g.json("get", "-o", "json")
    r = g.http.post(
        g.url("/_gyrus/v1/deploy"),
        data=valid_archive("intruder"),
        headers={"Content-Type": "application/gzip"},
        timeout=30,
    )
    assert r.status_code == 401, g.diag(resp=r)
    assert "token" in r.json()["error"], r.text
    assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers
    # A wrong token is no better.
    r = g.http.post(
        g.url("/_gyrus/v1/deploy"),
        data=valid_archive("intruder"),
        headers={"Content-Type": "application/gzip", "Authorization": "Bearer " + "x" * 43},
        timeout=30,
    )
    assert r.status_code == 401, g.diag(resp=r)
    assert g.json("get", "-o", "json") == before
    assert not (g.home / "logs" / "intruder.log").exists()


def test_token_bearing_deploy_is_accepted(g):
    r = g.control(
        "POST",
        "/deploy",
        data=valid_archive("insider"),
        headers={"Content-Type": "application/gzip"},
    )
    assert r.status_code == 200, g.diag(resp=r)
    assert [a["name"] for a in r.json()["apis"]] == ["insider"]
    wait_until(lambda: g.get("insider")["status"] == "live", 90, what=lambda: g.diag("insider"))
    assert g.post("/insider", json={}).text == "hello"
    g.ok("delete", "insider")


def test_every_control_route_but_health_needs_the_token(g):
    for method, path in [
        ("GET", "/apis"),
        ("GET", "/apis/hello"),
        ("GET", "/apis/hello/logs"),
        ("POST", "/apis/hello/refresh"),
        ("DELETE", "/apis/hello"),
        ("GET", "/models"),
        ("POST", "/shutdown"),
    ]:
        r = g.http.request(
            method, g.url("/_gyrus/v1" + path), headers={"Content-Type": "application/json"}, timeout=10
        )
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json"), r.headers
    # Health answers without it, but tells nothing about the machine.
    bare = g.http.get(g.url("/_gyrus/v1/health"), timeout=5).json()
    assert bare["status"] == "ok" and "home" not in bare and "pid" not in bare, bare
    full = g.health()
    assert full and full["home"] == str(g.home), full
    # Still up and still serving after all that.
    assert g.get("hello")["status"] == "live"


def test_a_daemon_with_another_token_is_named_in_the_error(g, tmp_path):
    other = Gyrus(tmp_path / "other-home", port=g.port)
    (other.home).mkdir(parents=True)
    (other.home / "token").write_text("not-the-daemons-token\n")
    proc = other.run("get")
    assert proc.returncode == 1, other.diag(proc=proc)
    assert "does not accept the token" in proc.stderr, proc.stderr
    other.env["GYRUS_TOKEN"] = g.token()
    proc = other.run("get", "hello")
    assert proc.returncode == 0 and "hello" in proc.stdout, other.diag(proc=proc)


# ------------------------------------------------------------------------------------------
# browsers


@pytest.mark.parametrize(
    "headers,status",
    [
        # A no-cors POST from any web page: a "simple" content type and a foreign Origin.
        ({"Content-Type": "text/plain", "Origin": "http://evil.example"}, 403),
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
        ({}, 415),
        # DNS rebinding: the page's own name resolves to 127.0.0.1.
        ({"Content-Type": "application/gzip", "Host": "evil.example"}, 403),
        ({"Content-Type": "application/gzip", "Origin": "null"}, 403),
        ({"Content-Type": "application/gzip", "Sec-Fetch-Site": "cross-site"}, 403),
    ],
)
def test_browser_style_deploys_are_refused_even_with_the_token(g, headers, status):
    headers = dict(headers)
    if "Host" in headers:
        headers["Host"] = f"{headers['Host']}:{g.port}"
    r = g.control("POST", "/deploy", data=valid_archive("browser"), headers=headers)
    assert r.status_code == status, g.diag(resp=r)
    assert "error" in r.json(), r.text
    # Without the token the browser checks still come first (nothing reveals the token's use).
    r = g.http.post(g.url("/_gyrus/v1/deploy"), data=b"x", headers=headers, timeout=10)
    assert r.status_code == status, g.diag(resp=r)
    assert "browser" not in [a["name"] for a in g.json("get", "-o", "json")]


def test_shutdown_from_a_page_does_nothing(g):
    r = g.http.post(
        g.url("/_gyrus/v1/shutdown"),
        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
        timeout=10,
    )
    assert r.status_code == 403, g.diag(resp=r)
    r = g.http.post(g.url("/_gyrus/v1/shutdown"), timeout=10)
    assert r.status_code == 415, g.diag(resp=r)
    time.sleep(0.5)
    assert g.health() is not None
    assert g.post("/hello", json={}).text == "hello"


# ------------------------------------------------------------------------------------------
# archives and uploads


def test_pax_size_archive_is_refused_with_nothing_written(g):
    before = snapshots(g)
    usage_before = sum(f.stat().st_size for f in (g.home / "projects").rglob("*") if f.is_file())
    archive = pax_size_archive(4_800_000_000, 8 << 20)
    assert len(archive) < 1 << 20
    started = time.monotonic()
    r = g.control("POST", "/deploy", data=archive, headers={"Content-Type": "application/gzip"})
    assert r.status_code == 400, g.diag(resp=r)
    assert "larger than 4 GiB once extracted" in r.json()["error"], r.text
    assert "big.bin" in r.json()["error"], r.text
    assert time.monotonic() - started < 10
    assert snapshots(g) == before
    usage_after = sum(f.stat().st_size for f in (g.home / "projects").rglob("*") if f.is_file())
    assert usage_after == usage_before


def test_failed_deploy_leaves_no_snapshot(g, project):
    before = snapshots(g)
    bad = project("badcfg", HELLO, api={"autoscaling": {"min_replicas": "many"}})
    proc = g.deploy(bad)
    assert proc.returncode == 1, g.diag(proc=proc)
    assert "min_replicas" in proc.stderr, proc.stderr
    # A config that parses but names a file the project lacks fails on the daemon's side.
    missing = project("nofile", HELLO, api={"predictor": {"path": "missing.py"}})
    r = g.control(
        "POST",
        "/deploy",
        data=project_archive(
            {
                "cortex.yaml": (missing / "cortex.yaml").read_bytes(),
                "predictor.py": HELLO.encode(),
            }
        ),
        headers={"Content-Type": "application/gzip"},
    )
    assert r.status_code == 400 and "missing.py" in r.json()["error"], g.diag(resp=r)
    assert snapshots(g) == before
    r = g.control("POST", "/deploy", data=b"not gzip at all", headers={"Content-Type": "application/gzip"})
    assert r.status_code == 400, g.diag(resp=r)
    assert snapshots(g) == before


def test_concurrent_uploads_are_capped_and_answered_503(g):
    """Two uploads that stall hold the daemon's two upload slots; a third is told to retry."""
    token = g.token()
    held: list[socket.socket] = []

    def stalled_upload() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        s.sendall(
            (
                f"POST /_gyrus/v1/deploy HTTP/1.1\r\nHost: 127.0.0.1:{g.port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/gzip\r\n"
                "Content-Length: 100000000\r\n\r\n"
            ).encode()
            + b"\x1f\x8b" + b"\0" * 65536
        )
        return s

    def answered(s: socket.socket) -> bool:
        s.settimeout(0.3)
        try:
            return bool(s.recv(1))
        except socket.timeout:
            return False

    try:
        # Both in progress (no answer yet) before the third is sent: the daemon takes
        # requests in any order, so an upload refused because the other slot was briefly
        # busy is sent again.
        held = [stalled_upload(), stalled_upload()]
        for _ in range(20):
            busy = [answered(s) for s in held]
            if not any(busy):
                break
            for s, b in zip(held, busy):
                if b:
                    s.close()
            held = [stalled_upload() if b else s for s, b in zip(held, busy)]
        else:
            raise AssertionError("the two stalled uploads were never both in progress")

        r = g.control("POST", "/deploy", data=valid_archive("third"), headers={"Content-Type": "application/gzip"})
        assert r.status_code == 503, g.diag(resp=r)
        assert r.headers.get("retry-after") == "5", r.headers
        assert "uploads are already being received" in r.json()["error"], r.text
        # Reads never stopped: the CLI still answers.
        assert g.ok("get").returncode == 0
    finally:
        for s in held:
            s.close()
    # The slots come back when those clients go away.
    wait_until(
        lambda: g.control(
            "POST", "/deploy", data=valid_archive("fourth"), headers={"Content-Type": "application/gzip"}
        ).status_code
        == 200,
        10,
        what="an upload slot to be free again",
    )
    g.ok("delete", "fourth")


# ------------------------------------------------------------------------------------------
# slow and half-open connections


def test_half_open_connections_are_closed_and_the_cli_keeps_answering(tmp_path):
    """1,000 connections that each sent half a request head, against a daemon allowed 200
    connections and 2 s to read a head: the CLI and the gateway still answer at once, and
    every half-open connection is closed within the header timeout."""
    flood = Gyrus(tmp_path / "home")
    flood.env.update(GYRUS_HEADER_TIMEOUT="2s", GYRUS_MAX_CONNECTIONS="200")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    socks: list[socket.socket] = []
    try:
        flood.start_daemon()
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", flood.port), timeout=10)
            s.sendall(b"POST /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Len")
            socks.append(s)
        started = time.monotonic()
        proc = flood.run("get", timeout=20)
        assert proc.returncode == 0, flood.diag(proc=proc)
        assert time.monotonic() - started < 5
        r = flood.http.get(flood.url("/nothing-here"), timeout=5)
        assert r.status_code == 404, flood.diag(resp=r)

        deadline = time.monotonic() + 2 + 5
        open_left = list(socks)
        while open_left and time.monotonic() < deadline:
            still = []
            for s in open_left:
                s.settimeout(0.01)
                try:
                    data = s.recv(4096)
                    # Closed (b""), or answered 408 and closed.
                    if data and not data.startswith(b"HTTP/1.1 408"):
                        still.append(s)
                except socket.timeout:
                    still.append(s)
                except OSError:
                    pass
            open_left = still
            time.sleep(0.2)
        assert not open_left, f"{len(open_left)} half-open connections still open after the header timeout"
        assert flood.health() is not None
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        flood.teardown()



def test_slow_requests_do_not_lock_out_the_cli(tmp_path):
    """Every connection busy with a request whose body never completes (a daemon allowed 20
    connections): the CLI still gets in through the control reserve, a data-plane request on
    a reserved connection is told to retry, and all is well once the slow clients go."""
    slow = Gyrus(tmp_path / "home")
    slow.env.update(GYRUS_MAX_CONNECTIONS="20")
    socks: list[socket.socket] = []
    try:
        slow.deploy_ok(EXAMPLES / "hello", "hello")
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", slow.port), timeout=10)
            s.sendall(
                f"POST /hello HTTP/1.1\r\nHost: 127.0.0.1:{slow.port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode()
            )
            socks.append(s)
        time.sleep(1)
        started = time.monotonic()
        proc = slow.run("get", "hello", timeout=20)
        assert proc.returncode == 0 and "hello" in proc.stdout, slow.diag(proc=proc)
        assert time.monotonic() - started < 5
        r = slow.http.post(slow.url("/hello"), json={}, timeout=10)
        assert r.status_code == 503, slow.diag(resp=r)
        assert r.headers.get("retry-after") == "1" and "connection limit" in r.json()["error"], r.text
    finally:
        for s in socks:
            s.close()
    try:
        wait_until(
            lambda: slow.http.post(slow.url("/hello"), json={}, timeout=10).status_code == 200,
            15,
            what="the data plane to serve again",
        )
    finally:
        slow.teardown()


def test_home_and_state_are_the_owners_only(g):
    """The state database holds `.env` values, the home the token and logs: 0700 and 0600."""
    assert (g.home.stat().st_mode & 0o777) == 0o700, oct(g.home.stat().st_mode)
    for f in g.home.glob("state.db*"):
        assert (f.stat().st_mode & 0o777) == 0o600, (f, oct(f.stat().st_mode))
