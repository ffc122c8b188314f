"""Helpers of the model store and remote model tests (test_model_store.py, test_remote_models.py).

Helpers:
  S3Server       a real S3-compatible server (s3s-fs, GYRUS_TEST_S3S_FS) on 127.0.0.1, with boto3
  Proxy          an HTTP reverse proxy in this process that counts requests and can throttle,
                 cut or corrupt response bodies (between gyrus and s3s-fs, or any HTTP server)
  StaticServer   a threaded http.server serving one folder on 127.0.0.1
  with_env       a copy of a Gyrus whose commands run with given AWS_* (etc.) variables
  cache_entries  the complete downloads under GYRUS_HOME/cache/remote (and what .tmp holds)
  store_dirs     the model store's versions and what .staging holds
  big_model      an ONNX model of a given size (y = x + 1.5, with a large initializer)
"""

from __future__ import annotations

import copy
import http.client
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from e2e_helpers import REPO, Gyrus, free_port, stop_process, wait_until

S3S_FS = os.environ.get("GYRUS_TEST_S3S_FS") or str(REPO / ".tools" / "bin" / "s3s-fs")
ACCESS_KEY = "gyrustestak"
SECRET_KEY = "gyrustestsecretkey"
REGION = "us-east-1"

# Variables that decide where a fetch gets credentials; none of the machine's may leak in.
CREDENTIAL_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")


# ------------------------------------------------------------------------------------------
# environment


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """`env` without any AWS_*, GOOGLE_* or AZURE_* variable."""
    return {k: v for k, v in env.items() if not k.startswith(CREDENTIAL_PREFIXES)}


def scrub(g: Gyrus, home: Path) -> Gyrus:
    """Makes g's commands (and so the daemon they start) run without credential variables and
    with HOME=`home` (an empty folder: no ~/.aws)."""
    home.mkdir(parents=True, exist_ok=True)
    g.env = {**clean_env(g.env), "HOME": str(home)}
    return g


def with_env(g: Gyrus, **variables: str) -> Gyrus:
    """A copy of `g` whose commands run with these extra variables (its daemon pids stay
    shared, so teardown still finds every daemon)."""
    c = copy.copy(g)
    c.env = {**clean_env(g.env), **variables}
    return c


def s3_env(endpoint: str | None, key: str = ACCESS_KEY, secret: str = SECRET_KEY, **extra: str) -> dict[str, str]:
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": REGION, **extra}
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


# ------------------------------------------------------------------------------------------
# s3s-fs


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class S3Server:
    """s3s-fs serving `root` on a free port of 127.0.0.1, with one access key."""

    def __init__(self, root: Path):
        if not Path(S3S_FS).is_file():
            raise RuntimeError(
                f"the S3-compatible test server is missing: GYRUS_TEST_S3S_FS={S3S_FS} does not "
                "exist; run scripts/setup-s3s.sh"
            )
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = root.parent / "s3s-fs.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                S3S_FS,
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--access-key", ACCESS_KEY,
                "--secret-key", SECRET_KEY,
                str(root),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            wait_until(
                lambda: self.proc.poll() is not None or port_open(self.port),
                20,
                what=lambda: f"s3s-fs to listen on {self.port}\n{self.log_path.read_text(errors='replace')}",
            )
            assert self.proc.poll() is None, f"s3s-fs exited with {self.proc.returncode}\n{self.log_path.read_text(errors='replace')}"
        except BaseException:
            self.stop()
            raise
        self.client = self.make_client()

    def make_client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes | Path) -> str:
        """A single-part upload (so the ETag is the MD5); returns the ETag."""
        if isinstance(data, Path):
            with open(data, "rb") as f:
                return self.client.put_object(Bucket=bucket, Key=key, Body=f)["ETag"]
        return self.client.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]

    def stop(self) -> None:
        stop_process(self.proc)


# ------------------------------------------------------------------------------------------
# an HTTP proxy that counts, throttles, cuts and corrupts

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _forward(self) -> None:
        proxy: Proxy = self.server.proxy  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        proxy.record(self.command, self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            declared = resp.getheader("Content-Length")
            if self.command == "HEAD" or resp.status in (204, 304):
                self.send_response_only(resp.status, resp.reason)
                for k, v in out_headers:
                    self.send_header(k, v)
                self.end_headers()
                return
            if declared is None:  # chunked upstream: buffer it
                data = resp.read()
                out_headers.append(("Content-Length", str(len(data))))
                chunks = iter([data])
            else:
                chunks = iter(lambda: resp.read(64 * 1024), b"")
            self.send_response_only(resp.status, resp.reason)
            for k, v in out_headers:
                self.send_header(k, v)
            self.end_headers()
            mutate = self.command == "GET" and resp.status in (200, 206) and path == proxy.target_path
            cut_at = None
            if mutate and proxy.cut_fraction is not None and declared is not None:
                cut_at = int(int(declared) * proxy.cut_fraction)
            sent = 0
            for chunk in chunks:
                if mutate and proxy.flip_at is not None and sent <= proxy.flip_at < sent + len(chunk):
                    b = bytearray(chunk)
                    b[proxy.flip_at - sent] ^= 0xFF
                    chunk = bytes(b)
                if mutate and cut_at is not None and sent + len(chunk) >= cut_at:
                    self.wfile.write(chunk[: cut_at - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
                if mutate:
                    proxy.add_sent(sent)
                    if proxy.rate:
                        time.sleep(len(chunk) / proxy.rate)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


class Proxy:
    """A reverse proxy on a free port of 127.0.0.1 to 127.0.0.1:`upstream_port`.

    It records every request (method, path with query) in `requests`. For GETs of
    `target_path` it can throttle the body to `rate` bytes/s, flip the byte at offset `flip_at`
    of every response body, or close the connection after `cut_fraction` of every response
    body (so resuming with Range requests never gets all of it); `sent` is how many body bytes
    of the target it has passed on so far (in the current response).
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.target_path: str | None = None
        self.rate: float | None = None
        self.flip_at: int | None = None
        self.cut_fraction: float | None = None
        self.sent = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self.server.daemon_threads = True
        self.server.proxy = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def record(self, method: str, path: str) -> None:
        with self.lock:
            self.requests.append((method, path))

    def add_sent(self, n: int) -> None:
        with self.lock:
            self.sent = n

    def count(self, method: str, path: str) -> int:
        """How many `method` requests for exactly `path` (no query string) came."""
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and p == path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------
# a static HTTP server


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class StaticServer:
    """http.server serving `root` on a free port of 127.0.0.1 (threaded)."""

    def __init__(self, root: Path):
        handler = lambda *a, **kw: _QuietFiles(*a, directory=str(root), **kw)  # noqa: E731
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------
# what is on disk


def cache_entries(home: Path) -> list[Path]:
    """Complete downloads: GYRUS_HOME/cache/remote/<url key>/<validator>/ folders."""
    root = home / "cache" / "remote"
    if not root.is_dir():
        return []
    return sorted(v for k in root.iterdir() if k.is_dir() and k.name != ".tmp" for v in k.iterdir() if v.is_dir())


def tmp_contents(home: Path) -> list[Path]:
    tmp = home / "cache" / "remote" / ".tmp"
    return sorted(tmp.rglob("*")) if tmp.is_dir() else []


def store_names(home: Path) -> list[str]:
    """The model names in GYRUS_HOME/models (not .staging)."""
    root = home / "models"
    return sorted(p.name for p in root.iterdir() if p.name != ".staging") if root.is_dir() else []


def store_versions(home: Path) -> list[str]:
    """Every name/version folder in GYRUS_HOME/models."""
    root = home / "models"
    if not root.is_dir():
        return []
    return sorted(
        f"{n.name}/{v.name}" for n in root.iterdir() if n.is_dir() and n.name != ".staging" for v in n.iterdir() if v.is_dir()
    )


def staging(home: Path) -> list[str]:
    d = home / "models" / ".staging"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# ------------------------------------------------------------------------------------------
# models


def big_model(path: Path, n_floats: int) -> Path:
    """An ONNX model y = x + c[0] (x: float32 [N]) whose initializer c holds `n_floats` float32
    (c[0] = 1.5), so the file is about 4 * n_floats bytes and loads quickly."""
    import numpy as np
    from onnx import TensorProto, helper

    c = np.arange(n_floats, dtype=np.float32)
    c[0] = 1.5
    init = helper.make_tensor("c", TensorProto.FLOAT, [n_floats], c.tobytes(), raw=True)
    idx = helper.make_tensor("i", TensorProto.INT64, [], [0])
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["c", "i"], ["c0"]),
            helper.make_node("Add", ["x", "c0"], ["y"]),
        ],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        initializer=[init, idx],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path
