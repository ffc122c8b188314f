"""Helpers of the end-to-end tests (the fixtures are in conftest.py).

Every test drives the real `gyrus` binary (GYRUS_BIN), the real daemon, replicas and Python
workers, over real HTTP on 127.0.0.1. Each test module gets its own GYRUS_HOME (a tmp dir)
and its own free port in GYRUS_ADDR, so nothing touches ~/.gyrus or port 8888, and modules
could run side by side. Teardown runs `gyrus daemon stop` with that environment and then makes
sure the daemons this suite started are gone.

Helpers:
  Gyrus          one isolated gyrus environment: run the CLI, deploy, talk to the gateway
  wait_until     poll a condition with a deadline instead of sleeping
  make_project   write a predictor project (cortex.yaml + files) into a fresh tmp dir
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import requests

REPO = Path(__file__).resolve().parents[2]
GYRUS_BIN = os.environ.get("GYRUS_BIN") or str(REPO / "target" / "debug" / "gyrus")
GYRUS_UV = os.environ.get("GYRUS_UV") or str(REPO / ".venv" / "bin" / "uv")
EXAMPLES = REPO / "examples"
INVALID_CONFIGS = REPO / "tests" / "invalid-configs"

# Time allowed for a deploy of a dependency-free predictor (daemon start, replica, worker).
DEPLOY_TIMEOUT = 90
# Time allowed for a deploy that installs requirements.txt from the package index.
INSTALL_TIMEOUT = 480


# ------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state follows the parenthesised command name, which may itself hold ')'.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def wait_until(
    fn: Callable[[], Any],
    timeout: float,
    interval: float = 0.1,
    what: str | Callable[[], str] = "the condition",
) -> Any:
    """Calls fn until it returns something truthy (returned) or the deadline passes.

    Exceptions from fn count as "not yet"; the last one is shown if the deadline passes.
    `what` (text, or a function producing text, e.g. logs) is added to the failure message.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    last_exc: BaseException | None = None
    while True:
        try:
            last = fn()
            last_exc = None
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - "not yet"
            last_exc = e
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise AssertionError(
                f"timed out after {timeout}s waiting for {text}\n"
                f"last value: {last!r}\nlast exception: {last_exc!r}"
            )
        time.sleep(interval)


def tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else f"...({len(text) - n} chars cut)...\n" + text[-n:]


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return f"<{path} does not exist>"


def _yaml_scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return json.dumps(str(v))  # a double-quoted YAML string


def to_yaml(v: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars (strings always quoted)."""
    pad = "  " * indent
    if isinstance(v, dict) and v:
        out = []
        for k, x in v.items():
            if isinstance(x, (dict, list)) and x:
                out.append(f"{pad}{k}:\n" + to_yaml(x, indent + 1))
            else:
                out.append(f"{pad}{k}: {_yaml_scalar(x)}\n")
        return "".join(out)
    if isinstance(v, list) and v:
        out = []
        inner = "  " * (indent + 1)
        for x in v:
            if isinstance(x, (dict, list)) and x:
                body = to_yaml(x, indent + 1)
                out.append(pad + "- " + body[len(inner) :])
            else:
                out.append(f"{pad}- {_yaml_scalar(x)}\n")
        return "".join(out)
    return pad + _yaml_scalar(v) + "\n"


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(textwrap.dedent(content))


def make_project(
    base: Path,
    name: str,
    predictor: str,
    api: dict | None = None,
    files: dict[str, str | bytes] | None = None,
) -> Path:
    """A project folder under `base` with predictor.py and a cortex.yaml for one API `name`.

    `api` is merged into the minimal spec (python predictor, init_replicas: 1).
    """
    d = base / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    spec = {
        "name": name,
        "predictor": {"type": "python", "path": "predictor.py"},
        "autoscaling": {"init_replicas": 1},
    }
    if api:
        spec = deep_merge(spec, api)
    write_files(d, {"predictor.py": predictor, **(files or {})})
    (d / "cortex.yaml").write_text(to_yaml([spec]))
    return d


def copy_example(name: str, dest: Path) -> Path:
    """A copy of examples/<name> (without bytecode caches) under dest."""
    target = dest / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(EXAMPLES / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


# ------------------------------------------------------------------------------------------
# one isolated gyrus environment


def stop_process(proc: subprocess.Popen) -> None:
    """Ends a process this suite started: terminate, then kill."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Gyrus:
    """An isolated gyrus: its own GYRUS_HOME and GYRUS_ADDR for every command it runs."""

    def __init__(self, home: Path, port: int | None = None):
        self.home = home
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.base_url = f"http://{self.addr}"
        env = dict(os.environ)
        for k in ("GYRUS_HOME", "GYRUS_ADDR", "GYRUS_LOG"):
            env.pop(k, None)
        env.update(GYRUS_HOME=str(home), GYRUS_ADDR=self.addr, GYRUS_UV=GYRUS_UV, NO_COLOR="1")
        self.env = env
        self.http = requests.Session()
        self.http.trust_env = False  # never send 127.0.0.1 through a proxy
        self._foreground: list[subprocess.Popen] = []
        self._daemon_pids: set[int] = set()

    # --- the CLI ---------------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 60, input: str | bytes | None = None) -> subprocess.CompletedProcess:
        """Runs `gyrus ARGS` with this environment; never raises on a non-zero exit."""
        cmd = [GYRUS_BIN, *map(str, args)]
        try:
            proc = subprocess.run(
                cmd,
                env=self.env,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            raise AssertionError(
                f"`gyrus {' '.join(map(str, args))}` did not finish within {timeout}s\n"
                f"--- stdout ---\n{tail(out)}\n--- stderr ---\n{tail(err)}\n{self.diag()}"
            ) from None
        self._remember_daemon()
        return proc

    def ok(self, *args: str, apis: tuple[str, ...] = (), **kw) -> subprocess.CompletedProcess:
        """Runs a command that must succeed."""
        proc = self.run(*args, **kw)
        assert proc.returncode == 0, self.diag(*apis, proc=proc)
        return proc

    def json(self, *args: str, **kw) -> Any:
        proc = self.ok(*args, **kw)
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"not JSON:\n{self.diag(proc=proc)}") from None

    def deploy(self, project: Path, *extra: str, timeout: float = DEPLOY_TIMEOUT, apis: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """`gyrus deploy PROJECT` (waits until live or failed); the exit code is not checked."""
        return self.run("deploy", str(project), "--timeout", f"{int(timeout)}s", *extra, timeout=timeout + 30)

    def deploy_ok(self, project: Path, api: str, *extra: str, timeout: float = DEPLOY_TIMEOUT) -> subprocess.CompletedProcess:
        proc = self.deploy(project, *extra, timeout=timeout)
        assert proc.returncode == 0, self.diag(api, proc=proc)
        assert f"{api} is live at " in proc.stdout, self.diag(api, proc=proc)
        return proc

    def get(self, api: str) -> dict:
        return self.json("get", api, "-o", "json", apis=(api,))

    def describe(self, api: str) -> dict:
        return self.json("describe", api, "-o", "json", apis=(api,))

    def replica_pids(self, api: str) -> list[int]:
        return [r["pid"] for r in self.describe(api)["replica_details"] if r.get("pid")]

    def cli_logs(self, api: str) -> str:
        return self.ok("logs", api, apis=(api,)).stdout

    def api_log(self, api: str) -> str:
        """The API's log file, read directly (for diagnostics and log assertions)."""
        return read_text(self.home / "logs" / f"{api}.log")

    # --- daemon ----------------------------------------------------------------------------

    def token(self) -> str | None:
        """The daemon's control-API token (GYRUS_HOME/token), once a daemon has made it."""
        try:
            return (self.home / "token").read_text().strip() or None
        except FileNotFoundError:
            return None

    def control(self, method: str, path: str, timeout: float = 30, **kw) -> requests.Response:
        """A request to the control API (`/_gyrus/v1` + path) with the token, as the CLI sends it."""
        headers = dict(kw.pop("headers", None) or {})
        token = self.token()
        if token:
            headers.setdefault("Authorization", f"Bearer {token}")
        return self.http.request(method, f"{self.base_url}/_gyrus/v1{path}", headers=headers, timeout=timeout, **kw)

    def health(self) -> dict | None:
        try:
            r = self.control("GET", "/health", timeout=2)
            return r.json() if r.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def _remember_daemon(self) -> None:
        h = self.health()
        if h and h.get("home") == str(self.home) and isinstance(h.get("pid"), int):
            self._daemon_pids.add(h["pid"])

    def start_daemon(self) -> subprocess.Popen:
        """Runs `gyrus daemon` in the background (as a user would in a terminal)."""
        log = open(self.home.parent / f"daemon-fg-{len(self._foreground)}.log", "ab")
        proc = subprocess.Popen(
            [GYRUS_BIN, "daemon"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._foreground.append(proc)
        # Reap it as soon as it exits: `gyrus daemon stop` waits until the pid is gone, and an
        # unreaped child of this process would stay a zombie that still "exists".
        threading.Thread(target=proc.wait, daemon=True).start()
        wait_until(
            lambda: proc.poll() is not None or self.health(),
            30,
            what=lambda: "the daemon to answer\n" + self.diag(),
        )
        assert proc.poll() is None, f"`gyrus daemon` exited with {proc.returncode}\n{self.diag()}"
        self._daemon_pids.add(proc.pid)
        return proc

    def stop_daemon(self) -> subprocess.CompletedProcess:
        return self.ok("daemon", "stop", timeout=60)

    def teardown(self) -> None:
        try:
            self.run("daemon", "stop", timeout=60)
        except AssertionError:
            pass
        # Whatever is still alive of what this suite started: terminate, then kill.
        for proc in self._foreground:
            stop_process(proc)
        for pid in self._daemon_pids:
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                deadline = time.monotonic() + 10
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if pid_alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.http.close()
        # Python environments are large (scikit-learn); logs and state stay for post-mortems.
        shutil.rmtree(self.home / "envs", ignore_errors=True)

    # --- the gateway -----------------------------------------------------------------------

    def url(self, endpoint: str) -> str:
        return self.base_url + (endpoint if endpoint.startswith("/") else "/" + endpoint)

    def post(self, endpoint: str, timeout: float = 30, **kw) -> requests.Response:
        return self.http.post(self.url(endpoint), timeout=timeout, **kw)

    def get_http(self, endpoint: str, timeout: float = 30, **kw) -> requests.Response:
        return self.http.get(self.url(endpoint), timeout=timeout, **kw)

    # --- diagnostics -----------------------------------------------------------------------

    def diag(self, *apis: str, proc: subprocess.CompletedProcess | None = None, resp: requests.Response | None = None) -> str:
        """Everything useful when an assertion fails: the command, its output, API logs."""
        parts = []
        if proc is not None:
            args = proc.args if isinstance(proc.args, list) else [proc.args]
            parts.append(
                f"$ {' '.join(map(str, args))}\nexit code: {proc.returncode}\n"
                f"--- stdout ---\n{tail(proc.stdout or '')}\n--- stderr ---\n{tail(proc.stderr or '')}"
            )
        if resp is not None:
            parts.append(
                f"HTTP {resp.request.method} {resp.url} -> {resp.status_code}\n"
                f"content-type: {resp.headers.get('content-type')}\nbody: {tail(resp.text, 2000)}"
            )
        logs_dir = self.home / "logs"
        names = list(apis)
        if not names and logs_dir.is_dir():
            names = sorted(p.stem for p in logs_dir.glob("*.log"))
        for api in names:
            parts.append(f"--- {logs_dir / (api + '.log')} ---\n{tail(self.api_log(api), 3000)}")
        daemon_log = self.home / "daemon.log"
        if daemon_log.exists():
            parts.append(f"--- {daemon_log} ---\n{tail(read_text(daemon_log), 1500)}")
        return "\n".join(parts)
