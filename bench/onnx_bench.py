#!/usr/bin/env python3
"""Benchmark of gyrus's ONNX and Python serving against FastAPI, all in one run (issue 13).

Serves the same ONNX models (iris: LogisticRegression via skl2onnx; mlp: 64-128-128-10) and the
same Python value, and measures with wrk, each server pinned to core 0 and wrk to core 1:

  (a) gyrus model API   predictor.type onnx with no Python: POST {"input": [[...]]} ->
                        {"label": [0], "probabilities": [[...]]}  (iris-model, and mlp)
  (b) gyrus ONNXPredictor  examples/iris-onnx (Cortex's ONNXPredictor in Python):
                        POST {"sepal_length": 5.1, ...} -> setosa
  (c) FastAPI           uvicorn (1 worker, uvloop, httptools) + onnxruntime, same JSON as (a)
  (d) BentoML 1.4       @bentoml.service (1 worker) + onnxruntime, same JSON as (a)  (iris only;
                        full runs, or --bentoml)
  (e) raw floor         ONNX Runtime's session.run from Rust, single thread, no HTTP
                        (crates/gyrus-engine/examples/raw_floor.rs)
  (f) gyrus Python predictor  examples/hello through the gateway:
                        POST {"name": "bench"} -> {"message": "hello, bench!"}
  (g) FastAPI hello     bench/onnx/fastapi_hello.py (uvicorn, 1 worker): the same value
  HTTP floor            raw_floor --serve: a minimal keep-alive responder; its p50 is the
                        loopback HTTP round trip no server can go below

then prints the issue's targets as computed lines (met / missed), all from this run.
--whole-machine adds a second part: no CPU pinning, wrk on the same cores, and gyrus's model
API and Python path with 1 replica against 2 replicas (requests/s and the 2/1 ratio).

Every ONNX Runtime session runs with one intra-op thread. Each server's answer is checked
before it is measured. The script creates the peers' virtualenvs under bench/.venvs/ (pinned,
from bench/onnx/requirements-*.txt, with uv), builds gyrus and the raw floor in release mode,
listens on 127.0.0.1 only, stops every process it started (and only those), and writes the
Markdown to bench/out/onnx.md and, for full runs, as a new section at the top of
bench/RESULTS.md.
"""
import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "bench" / "onnx"
VENV_PY = ROOT / ".venv" / "bin" / "python"
UV = ROOT / ".venv" / "bin" / "uv"
VENVS = ROOT / "bench" / ".venvs"
GYRUS = ROOT / "target" / "release" / "gyrus"
RAW_FLOOR = ROOT / "target" / "release" / "examples" / "raw_floor"
CONCURRENCY = (1, 8, 64)

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
IRIS_BODY = json.dumps({"input": [IRIS_ROW]})
IRIS_FIELDS_BODY = json.dumps(
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2})
MLP_ROW = [round(i * 0.01, 2) for i in range(64)]
MLP_BODY = json.dumps({"x": [MLP_ROW]})
HELLO_BODY = json.dumps({"name": "bench"})
HELLO_ANSWER = {"message": "hello, bench!"}  # examples/hello with greeting "hello"

# System labels, in table order.
HTTP_FLOOR = "HTTP floor (static responder)"
GYRUS_GET = "gyrus replica GET (health)"
A = "(a) gyrus model API"
B = "(b) gyrus ONNXPredictor"
C = "(c) FastAPI + onnxruntime"
D = "(d) BentoML + onnxruntime"
F = "(f) gyrus Python predictor"
G = "(g) FastAPI, same value"
ORDER = [HTTP_FLOOR, GYRUS_GET, A, B, C, D, F, G]
# --whole-machine rows
WM_MODEL = "model API (iris)"
WM_PYTHON = "Python predictor (hello)"
# The same two paths with work that dominates each request, so that the load generator's own
# CPU is a small share: what a second replica can add shows.
WM_HEAVY_MODEL = "model API (MLP 784-512-512-10)"
WM_HEAVY_PYTHON = "Python predictor (~0.3 ms of Python)"
WM_PATHS = (WM_MODEL, WM_PYTHON, WM_HEAVY_MODEL, WM_HEAVY_PYTHON)
MLP_LARGE_BODY = json.dumps({"x": [[round((i % 97) * 0.01, 2) for i in range(784)]]})
BUSY_PREDICTOR = """\
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        total = 0
        for i in range(6000):
            total += i * i % 7
        return {"total": total}
"""
BUSY_ANSWER = {"total": sum(i * i % 7 for i in range(6000))}


class BenchError(Exception):
    pass


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------
# processes: everything started here is tracked and stopped by its pid

STARTED = []  # (name, Popen)


def start(name, cmd, env=None, cwd=None, logdir=None):
    out = open(Path(logdir) / f"{name}.log", "wb") if logdir else subprocess.DEVNULL
    try:
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
    finally:
        if logdir:
            out.close()  # the child has its own copy
    STARTED.append((name, p))
    return p


def descendants(pid):
    """Pids of every live descendant of pid (from /proc), so children that left the process
    group (BentoML's workers start their own sessions) are stopped too."""
    children = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(p, timeout=15):
    if p.poll() is not None:
        return
    kids = descendants(p.pid)
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)
    deadline = time.time() + 5
    for pid in kids:
        while time.time() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def stop_all():
    for _, p in reversed(STARTED):
        try:
            stop(p)
        except Exception as e:  # noqa: BLE001 - keep stopping the others
            log(f"warning: could not stop pid {p.pid}: {e}")
    STARTED.clear()


# ------------------------------------------------------------------------------------------
# setup: tools, virtualenvs, models, builds


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_wrk():
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("==> installing wrk (apt-get install -y wrk)")
        if subprocess.run(["apt-get", "install", "-y", "wrk"], check=False,
                          capture_output=True).returncode:
            subprocess.run(["apt-get", "update"], check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    if not shutil.which("wrk"):
        raise BenchError("wrk is missing: apt-get install -y wrk")


def ort_dylib():
    libs = sorted(glob.glob(str(ROOT / ".venv" / "lib" / "python3*" / "site-packages" /
                                "onnxruntime" / "capi" / "libonnxruntime.so.*")))
    if not libs:
        raise BenchError("no libonnxruntime.so.* in .venv's onnxruntime wheel: run "
                         "scripts/setup-python.sh")
    return libs[-1]


def ensure_venv(name):
    """bench/.venvs/NAME with bench/onnx/requirements-NAME.txt, rebuilt when the file changes."""
    req = HERE / f"requirements-{name}.txt"
    venv = VENVS / name
    # .venv's own base interpreter, whichever Python runs this (python_path.py runs under any
    # python3), so that both scripts agree on the stamp and share the virtualenv.
    base = subprocess.run([str(VENV_PY), "-c", "import sys; print(getattr(sys, "
                           "'_base_executable', None) or sys.executable)"], check=True,
                          capture_output=True, text=True).stdout.strip()
    want = hashlib.sha256(req.read_bytes() + base.encode()).hexdigest()
    stamp = venv / ".requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == want and (venv / "bin" / "python").exists():
        return venv
    log(f"==> creating bench/.venvs/{name} from {req.relative_to(ROOT)}")
    shutil.rmtree(venv, ignore_errors=True)
    for cmd in ([str(UV), "venv", "-q", "--python", base, str(venv)],
                [str(UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                 "-r", str(req)]):
        r = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if r.returncode:
            shutil.rmtree(venv, ignore_errors=True)
            raise BenchError(
                f"could not create bench/.venvs/{name} with {req.name}'s pinned packages "
                f"(.venv has no {name}; the first run installs it from the package index):\n"
                f"$ {' '.join(cmd)}\n{(r.stdout + r.stderr).strip()[-2000:]}")
    stamp.write_text(want + "\n")
    return venv


def venv_versions(venv, packages):
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code, *packages],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def make_models(work):
    """iris.onnx and mlp.onnx, from scripts/make_models.py (the models of the examples and the
    tests) or, where it is missing, from bench/onnx/models.py. Returns {name: path}."""
    out = work / "models"
    script = ROOT / "scripts" / "make_models.py"
    if script.exists():
        subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True)
    else:
        subprocess.run([sys.executable, str(HERE / "models.py"), str(out)], check=True,
                       capture_output=True)
    models = {"iris": out / "iris.onnx", "mlp": out / "mlp.onnx"}
    import onnxruntime as ort

    sigs = {"iris": (["input"], ["label", "probabilities"]), "mlp": (["x"], ["logits"])}
    for name, path in models.items():
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = ([i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()])
        if got != sigs[name]:
            raise BenchError(f"{path}: inputs/outputs {got}, expected {sigs[name]}")
    return models


def reference(models):
    """onnxruntime's own answers for the benchmark's requests, to check every server."""
    import numpy as np
    import onnxruntime as ort

    iris = ort.InferenceSession(str(models["iris"]), providers=["CPUExecutionProvider"])
    label, proba = iris.run(None, {"input": np.array([IRIS_ROW], dtype=np.float32)})
    mlp = ort.InferenceSession(str(models["mlp"]), providers=["CPUExecutionProvider"])
    (logits,) = mlp.run(None, {"x": np.array([MLP_ROW], dtype=np.float32)})
    return {"iris": {"label": label.tolist(), "probabilities": proba.tolist()},
            "mlp": {"logits": logits.tolist()}}


def build(skip_gyrus):
    packages = [["-p", "gyrus-engine", "--example", "raw_floor"]]
    if not skip_gyrus:
        packages.insert(0, ["-p", "gyrus-cli"])
    for args in packages:
        log(f"==> cargo build --release {' '.join(args)}")
        r = subprocess.run(["cargo", "build", "--release", *args], cwd=ROOT, check=False)
        if r.returncode:
            raise BenchError(f"cargo build --release {' '.join(args)} failed")


# ------------------------------------------------------------------------------------------
# checks and measurements


def post(url, body, timeout=10):
    req = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def close(a, b, tol=1e-4):
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol * max(1.0, abs(b))
    return False


def check_json(system, url, body, want):
    status, text = post(url, body)
    try:
        got = json.loads(text)
    except ValueError:
        got = None
    ok = status == 200 and isinstance(got, dict) and set(got) == set(want) and all(
        close(got[k], want[k]) for k in want)
    if not ok:
        raise BenchError(f"{system} at {url} answered {status} {text[:300]!r}; expected "
                         f"{json.dumps(want)[:300]}")


def check_setosa(system, url):
    status, text = post(url, IRIS_FIELDS_BODY)
    if status != 200 or text.strip().strip('"') != "setosa":
        raise BenchError(f"{system} at {url} answered {status} {text[:300]!r}; expected setosa")


def wait_until(ready, what, timeout, proc=None, logfile=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.2)
    tail = ""
    if logfile and Path(logfile).exists():
        tail = "\n" + "\n".join(Path(logfile).read_text(errors="replace").splitlines()[-20:])
    state = "exited" if proc is not None and proc.poll() is not None else "not ready"
    raise BenchError(f"{what} {state} after {timeout}s{tail}")


def http_ok(url, body=None):
    try:
        if body is None:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        return post(url, body, timeout=5)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


# The --max-requests hook: each wrk thread stops after its share of the requests and records
# when (LuaJIT's ffi for a monotonic clock), since wrk's own requests/s divides by the whole -d.
CAP_LUA = """\
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } gyrus_bench_timespec;
int clock_gettime(int clk, gyrus_bench_timespec *tp);
]]
local function now()
  local t = ffi.new("gyrus_bench_timespec")
  ffi.C.clock_gettime(1, t)
  return tonumber(t.tv_sec) + tonumber(t.tv_nsec) * 1e-9
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) started = now(); capped_at = -1; count = 0 end
function response(status, headers, body)
  count = count + 1
  if count >= PER_THREAD then capped_at = now() - started; wrk.thread:stop() end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("gyrus-bench-thread %s\\n", tostring(t:get("capped_at"))))
  end
end
"""


class Wrk:
    """wrk with one thread pinned to `core` (a taskset list), or with `threads` threads and no
    pinning where core is None (--whole-machine). Every cell is bounded in time (wrk's -d, and
    killed 60 s past it) and, with max_requests, in requests: each thread stops after its share
    (a Lua response() hook, which costs the client some CPU, so it is off by default); a cell
    that stopped early has its requests/s computed over the time it ran."""

    def __init__(self, core, work, threads=1, max_requests=None):
        self.core = core
        self.work = work
        self.threads = threads
        self.max_requests = max_requests
        self.scripts = {}

    def script(self, body, threads):
        if body is None and not self.max_requests:
            return None
        key = (body, threads)
        if key not in self.scripts:
            path = self.work / f"wrk{len(self.scripts)}.lua"
            text = ""
            if body is not None:
                text += ('wrk.method = "POST"\n'
                         f"wrk.body = {json.dumps(body)}\n"
                         'wrk.headers["Content-Type"] = "application/json"\n')
            if self.max_requests:
                per_thread = max(1, -(-self.max_requests // threads))
                text += CAP_LUA.replace("PER_THREAD", str(per_thread))
            path.write_text(text)
            self.scripts[key] = path
        return self.scripts[key]

    def run(self, url, conns, duration, body=None):
        threads = max(1, min(self.threads, conns))
        cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "--latency"]
        if self.core is not None:
            cmd = ["taskset", "-c", self.core] + cmd
        script = self.script(body, threads)
        if script is not None:
            cmd += ["-s", str(script)]
        cmd.append(url)
        try:
            out = subprocess.run(cmd, check=False, capture_output=True, text=True,
                                 timeout=duration + 60).stdout
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk on {url} ran {duration + 60}s past its {duration}s cell; "
                             "killed") from None
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if not m:
            raise BenchError(f"could not read wrk's output for {url}:\n{out}")
        lat = {}
        for pct in ("50", "99"):
            m2 = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
            lat[pct] = float(m2.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m2.group(2)]
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                         out)
        errors = (int(non2xx.group(1)) if non2xx else 0) + (
            sum(int(g) for g in sock.groups()) if sock else 0)
        total = re.search(r"(\d+) requests in", out)
        rps, capped = float(m.group(1)), False
        stops = [float(x) for x in re.findall(r"gyrus-bench-thread (\S+)", out)]
        if total and any(t >= 0 for t in stops):
            # Some thread stopped at its cap: requests/s over the longest thread's time.
            capped = True
            rps = int(total.group(1)) / max(t if t >= 0 else duration for t in stops)
        return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "errors": errors,
                "requests": int(total.group(1)) if total else None, "capped": capped}


class Run:
    """The measurements of one benchmark run."""

    def __init__(self, args, wrk):
        self.args = args
        self.wrk = wrk
        self.rows = []  # (model, system, concurrency, result)
        self.raw = {}  # model -> raw_floor JSON
        self.notes = []
        self.wm = []  # --whole-machine: (what, replicas, concurrency, result)
        self.wm_notes = []
        self.busy = []  # (when, percent of all cores busy with other work)

    def sample_busy(self, when):
        busy = busy_percent()
        self.busy.append((when, busy))
        if busy is not None and busy > 10:
            log(f"warning: {busy:.0f}% of all cores are busy with other work {when}: "
                "the numbers will be noisy")

    def measure(self, model, system, url, body=None, concurrency=CONCURRENCY):
        self.wrk.run(url, 8, self.args.warmup, body)
        for conns in concurrency:
            r = self.wrk.run(url, conns, self.args.duration, body)
            self.rows.append((model, system, conns, r))
            log(f"  {model:<5} c={conns:<3} {system:<32} {r['rps']:>9.0f} req/s  p50 "
                f"{r['p50']:>8.1f} us  p99 {r['p99']:>9.1f} us  errors {r['errors']}")

    def get(self, model, system, conns):
        for m, s, c, r in self.rows:
            if (m, s, c) == (model, system, conns):
                return r
        return None


# ------------------------------------------------------------------------------------------
# the systems


def run_raw_floor(run, models, refs, core, dylib):
    env = dict(os.environ, ORT_DYLIB_PATH=dylib)
    for name, path in models.items():
        cmd = ["taskset", "-c", core, str(RAW_FLOOR), str(path), str(run.args.iterations)]
        out = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True,
                             timeout=600)
        if out.returncode:
            raise BenchError(f"raw_floor {path} failed: {out.stderr.strip()}")
        result = json.loads(out.stdout)
        want = {k: [x for row in v for x in (row if isinstance(row, list) else [row])]
                for k, v in refs[name].items()}
        if not all(close(result["outputs"].get(k), v) for k, v in want.items()):
            raise BenchError(f"raw_floor's outputs for {name} {result['outputs']} differ from "
                             f"onnxruntime's {want}")
        run.raw[name] = result
        log(f"  {name:<5} (e) raw floor: session.run p50 {result['p50_us']:.1f} us, p99 "
            f"{result['p99_us']:.1f} us, mean {result['mean_us']:.1f} us "
            f"({result['iterations']} calls)")


def run_http_floor(run, core, work):
    port = free_port()
    p = start("http-floor", ["taskset", "-c", core, str(RAW_FLOOR), "--serve",
                             f"127.0.0.1:{port}"], logdir=work)
    url = f"http://127.0.0.1:{port}/iris-model"
    try:
        wait_until(lambda: http_ok(url, IRIS_BODY), "the HTTP floor responder", 10, p)
        run.measure("http", HTTP_FLOOR, url, IRIS_BODY)
    finally:
        stop(p)


def autoscaling_yaml(replicas):
    if replicas is None:
        return ""
    return ("  autoscaling:\n"
            f"    min_replicas: {replicas}\n"
            f"    max_replicas: {replicas}\n"
            f"    init_replicas: {replicas}\n")


def project(work, name, api, model_path, replicas=None):
    """A model-API project: cortex.yaml with one onnx API and its model.onnx (with `replicas`,
    autoscaling pinned to that many: min = max = init)."""
    d = work / "projects" / name
    d.mkdir(parents=True)
    shutil.copy(model_path, d / "model.onnx")
    (d / "cortex.yaml").write_text(
        f"- name: {api}\n"
        "  predictor:\n"
        "    type: onnx\n"
        "    model: model.onnx\n"
        "    session_options:\n"
        "      intra_op_num_threads: 1\n" + autoscaling_yaml(replicas))
    return d


def hello_project(work, api, replicas=None):
    """A copy of examples/hello deployed as `api` (with `replicas`, autoscaling pinned to that
    many). Its predictor answers HELLO_ANSWER to HELLO_BODY."""
    import yaml

    src = ROOT / "examples" / "hello"
    if not (src / "cortex.yaml").exists():
        raise BenchError("examples/hello/cortex.yaml is missing: (f) needs the hello example")
    d = work / "projects" / api
    shutil.copytree(src, d)
    spec = yaml.safe_load((d / "cortex.yaml").read_text())
    spec[0]["name"] = api
    if replicas is not None:
        spec[0]["autoscaling"] = {**spec[0].get("autoscaling", {}), "min_replicas": replicas,
                                  "max_replicas": replicas, "init_replicas": replicas}
    (d / "cortex.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return d


def iris_onnx_project(work, iris_model):
    """A copy of examples/iris-onnx with the benchmark's iris model in place of its own, so
    every server runs the same model bytes."""
    src = ROOT / "examples" / "iris-onnx"
    if not (src / "cortex.yaml").exists():
        raise BenchError("examples/iris-onnx/cortex.yaml is missing: (b) needs the ONNXPredictor "
                         "example")
    d = work / "projects" / "iris-onnx"
    shutil.copytree(src, d)
    config = d / "cortex.yaml"
    m = re.search(r"^\s*model:\s*(\S+)", config.read_text(), re.MULTILINE)
    shutil.copy(iris_model, d / (m.group(1) if m else "model.onnx"))
    config.write_text(config.read_text().rstrip("\n") + "\n" + autoscaling_yaml(1))
    return d


class Gyrus:
    """An isolated gyrus daemon started by this script: its own GYRUS_HOME under the work
    folder and a free port on 127.0.0.1 (GYRUS_ADDR), pinned to `core` (a taskset list) or
    unpinned (None). Only the public surface: the `gyrus` binary and HTTP."""

    def __init__(self, work, core, dylib, name="gyrus-daemon"):
        self.work = work
        self.home = work / f"{name}-home"
        self.home.mkdir()
        self.addr = f"127.0.0.1:{free_port()}"
        self.base = f"http://{self.addr}"
        self.env = dict(os.environ, GYRUS_HOME=str(self.home), GYRUS_ADDR=self.addr,
                        ORT_DYLIB_PATH=dylib, GYRUS_UV=os.environ.get("GYRUS_UV", str(UV)))
        cmd = [str(GYRUS), "daemon"]
        if core is not None:
            cmd = ["taskset", "-c", core] + cmd
        self.log = work / f"{name}.log"
        self.proc = start(name, cmd, env=self.env, logdir=work)
        # Deploy only once this daemon answers: `gyrus deploy` would start an unpinned one.
        wait_until(lambda: http_ok(f"{self.base}/_gyrus/v1/health"), "the gyrus daemon", 30,
                   self.proc, self.log)

    def __call__(self, *argv, timeout=60, check=True):
        try:
            r = subprocess.run([str(GYRUS), *argv], env=self.env, check=False,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"gyrus {' '.join(argv)} did not finish in {timeout}s") from None
        if check and r.returncode:
            raise BenchError(f"gyrus {' '.join(argv)} failed ({r.returncode}):\n"
                             f"{(r.stdout + r.stderr).strip()}")
        return r.stdout

    def api_logs(self, api):
        try:
            r = subprocess.run([str(GYRUS), "logs", api], env=self.env, check=False,
                               capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return f"--- gyrus logs {api}: no answer in 30 s"
        return f"--- gyrus logs {api} (last lines):\n{(r.stdout + r.stderr).strip()[-3000:]}"

    def deploy(self, api, d, replicas=None):
        log(f"==> gyrus deploy {api}" + (
            f" ({replicas} replica{'s' if replicas > 1 else ''})" if replicas else ""))
        try:
            self("deploy", str(d), timeout=600)
        except BenchError as e:
            raise BenchError(
                f"gyrus deploy of {api} ({d}) failed, so gyrus cannot be measured. Is gyrus's "
                f"ONNX serving built into {GYRUS}? Run with --skip-gyrus to measure the peers "
                f"only.\n{e}\n{self.api_logs(api)}") from None
        if replicas:
            def ready():
                info = json.loads(self("get", api, "-o", "json"))
                return info.get("replicas", {}).get("ready", 0) >= replicas
            try:
                wait_until(ready, f"{api}'s {replicas} ready replicas", 120)
            except BenchError as e:
                raise BenchError(f"{e}\n{self.api_logs(api)}") from None

    def check(self, api, check):
        try:
            check()
        except BenchError as e:
            raise BenchError(f"{e}\n{self.api_logs(api)}") from None

    def stop(self):
        try:
            subprocess.run([str(GYRUS), "daemon", "stop"], env=self.env, check=False,
                           capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        stop(self.proc)


def check_hello(system, url):
    check_json_exact(system, url, HELLO_BODY, HELLO_ANSWER)


def check_json_exact(system, url, body, want):
    status, text = post(url, body)
    try:
        got = json.loads(text)
    except ValueError:
        got = None
    if status != 200 or got != want:
        raise BenchError(f"{system} at {url} answered {status} {text[:300]!r}; expected "
                         f"{json.dumps(want)}")


def run_gyrus(run, models, refs, core, work, dylib):
    projects = [
        # One replica each: the autoscaler would otherwise add replicas on the pinned core
        # under load (bench/tf_bench.py saw 28 at concurrency 64), measuring contention.
        ("iris-model", project(work, "iris-model", "iris-model", models["iris"], replicas=1)),
        ("mlp", project(work, "mlp", "mlp", models["mlp"], replicas=1)),
        ("iris-onnx", iris_onnx_project(work, models["iris"])),
        ("hello", hello_project(work, "hello", replicas=1)),
    ]
    g = Gyrus(work, core, dylib)
    try:
        for api, d in projects:
            g.deploy(api, d)
        base = g.base
        g.check("iris-model", lambda: check_json(A, f"{base}/iris-model", IRIS_BODY,
                                                 refs["iris"]))
        g.check("mlp", lambda: check_json(A, f"{base}/mlp", MLP_BODY, refs["mlp"]))
        g.check("iris-onnx", lambda: check_setosa(B, f"{base}/iris-onnx"))
        g.check("hello", lambda: check_hello(F, f"{base}/hello"))
        try:
            info = json.loads(g("describe", "iris-model", "-o", "json"))
            port = info["replica_details"][0]["port"]
            health = f"http://127.0.0.1:{port}/"
            if not http_ok(health):
                raise BenchError("no health answer")
        except (BenchError, KeyError, IndexError, ValueError) as e:
            health = None
            run.notes.append(f"gyrus replica GET not measured: {e}")
        log("==> gyrus")
        if health:
            run.measure("http", GYRUS_GET, health, None, concurrency=(1,))
        run.measure("iris", A, f"{base}/iris-model", IRIS_BODY)
        run.measure("iris", B, f"{base}/iris-onnx", IRIS_FIELDS_BODY)
        run.measure("mlp", A, f"{base}/mlp", MLP_BODY)
        run.measure("hello", F, f"{base}/hello", HELLO_BODY)
    finally:
        g.stop()


def uvicorn(name, app, core, work, venv, env=None):
    """uvicorn APP, one worker, on a free port of 127.0.0.1 (pinned to core, or not)."""
    port = free_port()
    cmd = [str(venv / "bin" / "python"), "-m", "uvicorn", app, "--app-dir", str(HERE), "--host",
           "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log",
           "--log-level", "warning"]
    if core is not None:
        cmd = ["taskset", "-c", core] + cmd
    return start(name, cmd, env=env, logdir=work), f"http://127.0.0.1:{port}"


def run_fastapi_hello(run, core, work, venv):
    p, base = uvicorn("fastapi-hello", "fastapi_hello:app", core, work, venv)
    try:
        wait_until(lambda: http_ok(f"{base}/hello", HELLO_BODY), "FastAPI hello", 60, p,
                   work / "fastapi-hello.log")
        check_hello(G, f"{base}/hello")
        log("==> FastAPI hello (the same value as examples/hello)")
        run.measure("hello", G, f"{base}/hello", HELLO_BODY)
    finally:
        stop(p)


def busy_project(work, api, replicas):
    """A Python predictor that spends about 0.3 ms of pure Python per request."""
    d = work / "projects" / api
    d.mkdir(parents=True)
    (d / "predictor.py").write_text(BUSY_PREDICTOR)
    (d / "cortex.yaml").write_text(f"- name: {api}\n  predictor:\n    type: python\n"
                                   f"    path: predictor.py\n" + autoscaling_yaml(replicas))
    return d


def check_logits(system, url):
    status, text = post(url, MLP_LARGE_BODY)
    try:
        logits = json.loads(text)["logits"]
        ok = status == 200 and len(logits) == 1 and len(logits[0]) == 10
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise BenchError(f"{system} at {url} answered {status} {text[:300]!r}; expected "
                         "{\"logits\": [[10 floats]]}")


def run_whole_machine(run, models, refs, work, dylib, concurrency):
    """Part 4: the daemon unpinned (every core), wrk on the same cores; the model API and the
    Python path with 1 replica and with 2 (autoscaling min = max = init), each also with work
    that dominates its requests (a larger MLP, a busier predictor)."""
    large = work / "models-large"
    subprocess.run([sys.executable, str(HERE / "models.py"), str(large), "mlp-large"],
                   check=True, capture_output=True)
    large = large / "mlp-large.onnx"
    cases = [
        (WM_MODEL, 1, "iris-r1", project(work, "iris-r1", "iris-r1", models["iris"], 1),
         IRIS_BODY, lambda url: check_json(A, url, IRIS_BODY, refs["iris"])),
        (WM_MODEL, 2, "iris-r2", project(work, "iris-r2", "iris-r2", models["iris"], 2),
         IRIS_BODY, lambda url: check_json(A, url, IRIS_BODY, refs["iris"])),
        (WM_PYTHON, 1, "hello-r1", hello_project(work, "hello-r1", 1), HELLO_BODY,
         lambda url: check_hello(F, url)),
        (WM_PYTHON, 2, "hello-r2", hello_project(work, "hello-r2", 2), HELLO_BODY,
         lambda url: check_hello(F, url)),
        (WM_HEAVY_MODEL, 1, "mlpl-r1", project(work, "mlpl-r1", "mlpl-r1", large, 1),
         MLP_LARGE_BODY, lambda url: check_logits(A, url)),
        (WM_HEAVY_MODEL, 2, "mlpl-r2", project(work, "mlpl-r2", "mlpl-r2", large, 2),
         MLP_LARGE_BODY, lambda url: check_logits(A, url)),
        (WM_HEAVY_PYTHON, 1, "busy-r1", busy_project(work, "busy-r1", 1), HELLO_BODY,
         lambda url: check_json_exact(F, url, HELLO_BODY, BUSY_ANSWER)),
        (WM_HEAVY_PYTHON, 2, "busy-r2", busy_project(work, "busy-r2", 2), HELLO_BODY,
         lambda url: check_json_exact(F, url, HELLO_BODY, BUSY_ANSWER)),
    ]
    g = Gyrus(work, None, dylib, name="gyrus-daemon-whole-machine")
    try:
        for _, replicas, api, d, _, _ in cases:
            g.deploy(api, d, replicas)
        for _, _, api, _, _, check in cases:
            g.check(api, lambda: check(f"{g.base}/{api}"))
        log(f"==> whole machine: gyrus unpinned, wrk -t {run.wm_wrk.threads} on the same cores")
        for what, _, api, _, body, _ in cases:
            run.wm_wrk.run(f"{g.base}/{api}", 8, run.args.warmup, body)
        # 1 and 2 replicas back to back at each concurrency, so that drift in the machine's
        # other load falls on both alike.
        for what in WM_PATHS:
            for conns in concurrency:
                for _, replicas, api, _, body, _ in (c for c in cases if c[0] == what):
                    r = run.wm_wrk.run(f"{g.base}/{api}", conns, run.args.duration, body)
                    run.wm.append((what, replicas, conns, r))
                    log(f"  {what:<25} {replicas} replica{'s' if replicas > 1 else ' '} "
                        f"c={conns:<3} {r['rps']:>9.0f} req/s  p50 {r['p50']:>8.1f} us  "
                        f"p99 {r['p99']:>9.1f} us  errors {r['errors']}")
    finally:
        g.stop()


def run_fastapi(run, models, refs, core, work, venv):
    env = dict(os.environ, BENCH_IRIS_MODEL=str(models["iris"]),
               BENCH_MLP_MODEL=str(models["mlp"]), BENCH_FASTAPI_FORM=run.args.fastapi_form)
    p, base = uvicorn("fastapi", "fastapi_app:app", core, work, venv, env=env)
    try:
        wait_until(lambda: http_ok(f"{base}/iris-model", IRIS_BODY), "FastAPI", 60, p,
                   work / "fastapi.log")
        check_json(C, f"{base}/iris-model", IRIS_BODY, refs["iris"])
        check_json(C, f"{base}/mlp-model", MLP_BODY, refs["mlp"])
        log(f"==> FastAPI ({run.args.fastapi_form})")
        run.measure("iris", C, f"{base}/iris-model", IRIS_BODY)
        run.measure("mlp", C, f"{base}/mlp-model", MLP_BODY)
    finally:
        stop(p)


def run_bentoml(run, models, refs, core, work, venv):
    port = free_port()
    home = work / "bentoml-home"
    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true",
               BENCH_IRIS_MODEL=str(models["iris"]), BENCH_BENTO_FORM=run.args.bento_form)
    p = start("bentoml", ["taskset", "-c", core, str(venv / "bin" / "bentoml"), "serve",
                          "bento_service:IrisModel", "--working-dir", str(HERE), "--host",
                          "127.0.0.1", "--port", str(port)], env=env, cwd=HERE, logdir=work)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base}/readyz"), "BentoML", 120, p, work / "bentoml.log")
        check_json(D, f"{base}/iris-model", IRIS_BODY, refs["iris"])
        log(f"==> BentoML ({run.args.bento_form})")
        run.measure("iris", D, f"{base}/iris-model", IRIS_BODY)
    finally:
        stop(p)


# ------------------------------------------------------------------------------------------
# report


def machine():
    def field(path, prefix):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            return None
        return next((x.split(":", 1)[1].strip() for x in lines if x.startswith(prefix)), None)

    model = field("/proc/cpuinfo", "model name") or "unknown CPU"
    kb = field("/proc/meminfo", "MemTotal")
    mem = f"{int(kb.split()[0]) / 1024 / 1024:.0f} GiB" if kb else "? GiB"
    return f"{os.cpu_count()} cores ({model}), {mem}, Linux {platform.release()}"


def busy_percent(seconds=1.0):
    """How busy all cores are over `seconds` (from /proc/stat): taken while none of the
    benchmark's servers runs, it is other work on the machine that skews the numbers."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0))


def ratio(x, y):
    return x / y if x is not None and y else None


def verdict(ok):
    return "met" if ok else "**missed**"


def command_line():
    return "`.venv/bin/python bench/onnx_bench.py" + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "") + "`"


def report(run, versions, server_core, client_core, skip_gyrus, pinned, whole_machine):
    a = run.args
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        f"## ONNX and Python serving against FastAPI (issue 13, `bench/onnx_bench.py`), "
        f"{now:%Y-%m-%d}",
        "",
        f"Command: {command_line()}, run at {now:%H:%M} UTC (`date -u`). Machine: {machine()}. "
        f"Commit: {git_commit()}. {a.duration}s per cell after a {a.warmup}s warm-up per "
        "server"
        + (f", at most {a.max_requests} requests per cell" if a.max_requests else "") + ". Every "
        "ONNX Runtime session has one intra-op thread; each server's answer is checked before "
        "it is measured.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "Other work on the machine, sampled for 1 s while no benchmark server runs (share of "
        "all cores busy): " + ", ".join(f"{when} {busy:.0f}%" for when, busy in run.busy
                                        if busy is not None)
        + ". Anything well above 0% makes the numbers measured around it noisy.",
    ]
    if pinned:
        lines += pinned_report(run, server_core, client_core, skip_gyrus)
    if whole_machine:
        lines += whole_machine_report(run)
    capped = sum(1 for *_, r in run.rows + run.wm if r.get("capped"))
    if capped:
        lines.append(f"- note: {capped} cells stopped at --max-requests {a.max_requests} before "
                     f"their {a.duration}s; their requests/s are over the time they ran")
    for note in run.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def pinned_report(run, server_core, client_core, skip_gyrus):
    g = run.get
    lines = [
        "",
        f"### One core for the servers (core {server_core}), wrk (`-t 1`) on core {client_core}",
        "",
        "Each server is started alone, measured at concurrency " +
        ", ".join(map(str, CONCURRENCY)) + " and stopped. (a): gyrus model API (ONNX, no "
        "Python); (b): gyrus ONNXPredictor (`examples/iris-onnx`); (c): FastAPI + onnxruntime "
        "(uvicorn, one worker); " + ("(d): BentoML; " if any(r[1] == D for r in run.rows) else
                                   "") + "(f): gyrus Python predictor (`examples/hello`, "
        "through the gateway); (g): a FastAPI app returning the same value "
        "(`bench/onnx/fastapi_hello.py`).",
        "",
        "| model | server | concurrency | requests/s | p50 (us) | p99 (us) | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model in ("http", "iris", "mlp", "hello"):
        for conns in CONCURRENCY:
            for system in ORDER:
                r = g(model, system, conns)
                if r:
                    shown = "-" if model == "http" else model
                    lines.append(f"| {shown} | {system} | {conns} | {r['rps']:.0f} | "
                                 f"{r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")
    lines += [
        "",
        "(e) raw floor, ONNX Runtime's `session.run` from Rust on one thread (input tensor, run, "
        "outputs copied out), no HTTP:",
        "",
        "| model | calls | p50 (us) | p99 (us) | mean (us) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for model, r in run.raw.items():
        lines.append(f"| {model} | {r['iterations']} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
                     f"{r['mean_us']:.1f} |")

    def rps(model, system, conns):
        r = g(model, system, conns)
        return r and r["rps"]

    def cell(x):
        return "" if x is None else f"{x:.2f}"

    lines += [] if skip_gyrus else [
        "",
        "Ratios of requests/s, from this run (floor: the static responder at the same "
        "concurrency):",
        "",
        "| concurrency | iris (a)/(c) | iris (a)/floor | mlp (a)/(c) | mlp (a)/floor "
        "| iris (b)/(c) | hello (f)/(g) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for conns in () if skip_gyrus else CONCURRENCY:
        floor = rps("http", HTTP_FLOOR, conns)
        lines.append("| " + " | ".join([str(conns)] + [cell(x) for x in (
            ratio(rps("iris", A, conns), rps("iris", C, conns)),
            ratio(rps("iris", A, conns), floor),
            ratio(rps("mlp", A, conns), rps("mlp", C, conns)),
            ratio(rps("mlp", A, conns), floor),
            ratio(rps("iris", B, conns), rps("iris", C, conns)),
            ratio(rps("hello", F, conns), rps("hello", G, conns)))]) + " |")

    lines += ["", "Targets (issue 13), from this run:"]
    floor1, floor64 = g("http", HTTP_FLOOR, 1), g("http", HTTP_FLOOR, 64)
    if skip_gyrus:
        lines.append("- (a), (b) and (f): not measured (`--skip-gyrus`).")
    else:
        for model in ("iris", "mlp"):
            a64, c64 = g(model, A, 64), g(model, C, 64)
            r = ratio(a64 and a64["rps"], c64 and c64["rps"])
            if r is not None:
                lines.append(f"- (a) {model}, concurrency 64, vs FastAPI: {a64['rps']:.0f} / "
                             f"{c64['rps']:.0f} = **{r:.1f}x** (target >= 10x): "
                             f"{verdict(r >= 10)}")
            r = ratio(a64 and a64["rps"], floor64 and floor64["rps"])
            if r is not None:
                lines.append(f"- (a) {model}, concurrency 64, vs the static responder: "
                             f"{a64['rps']:.0f} / {floor64['rps']:.0f} = **{100 * r:.0f}%** "
                             f"(target >= 50%): {verdict(r >= 0.5)}")
        for model in ("iris", "mlp"):
            a1, raw = g(model, A, 1), run.raw.get(model)
            if a1 and raw and floor1:
                over = a1["p50"] - (floor1["p50"] + raw["p50_us"])
                lines.append(f"- (a) {model}, p50 at concurrency 1 vs floor p50 + model's raw "
                             f"p50: {a1['p50']:.1f} - ({floor1['p50']:.1f} + "
                             f"{raw['p50_us']:.1f}) = **{over:+.1f} us** (target <= +10 us): "
                             f"{verdict(over <= 10)}")
        for label, model, ours, theirs, target in (
                ("(b) ONNXPredictor vs FastAPI + onnxruntime, iris", "iris", B, C, 1.5),
                ("(f) Python predictor vs a FastAPI app returning the same value", "hello", F,
                 G, 2.0)):
            parts, oks = [], []
            for conns in CONCURRENCY:
                r = ratio(rps(model, ours, conns), rps(model, theirs, conns))
                if r is not None:
                    parts.append(f"c={conns} **{r:.2f}x**")
                    oks.append(r >= target)
            if oks:
                lines.append(f"- {label}: {', '.join(parts)} (target >= {target}x at every "
                             f"concurrency): {verdict(all(oks))}" +
                             ("" if all(oks) or not any(oks) else
                              " (met at some concurrencies only)"))
        gget = g("http", GYRUS_GET, 1)
        if gget and floor1:
            lines.append(f"- for reference, gyrus's own HTTP floor (a replica's health GET, "
                         f"concurrency 1): p50 {gget['p50']:.1f} us, vs {floor1['p50']:.1f} us "
                         f"for the static responder")
    c64, d64 = g("iris", C, 64), g("iris", D, 64)
    if c64 and d64:
        lines.append(f"- peers, iris, concurrency 64: FastAPI / BentoML = "
                     f"{c64['rps']:.0f} / {d64['rps']:.0f} = {ratio(c64['rps'], d64['rps']):.1f}x")
    raw_iris = run.raw.get("iris")
    if raw_iris and floor1:
        lines.append(f"- lower bound on any server's p50 at concurrency 1 (iris): floor + raw = "
                     f"{floor1['p50']:.1f} + {raw_iris['p50_us']:.1f} = "
                     f"{raw_iris['p50_us'] + floor1['p50']:.1f} us")
    return lines


def whole_machine_report(run):
    n = os.cpu_count()
    lines = [
        "",
        f"### Whole machine (`--whole-machine`): no pinning, wrk (`-t {run.wm_wrk.threads}`) on "
        f"the same {n} cores",
        "",
        "gyrus's daemon, its replicas and their Python workers are not pinned; wrk runs on the "
        "same cores, so its own load competes with the servers' (read the ratio, not the "
        "absolute numbers, and do not compare them with the one-core table). Each path is "
        "deployed twice in one daemon: with 1 replica and with 2 (`autoscaling: "
        "{min_replicas, max_replicas, init_replicas}` all 1, or all 2), measured one at a "
        "time while the others are idle. The light paths (iris, hello) cost wrk about as "
        "much CPU per request as the server, so one replica and wrk already fill the "
        "machine; the heavy paths (a 784-512-512-10 MLP, a predictor running about 0.3 ms "
        "of Python) leave wrk a small share, and show what a second replica adds.",
        "",
        "| path | concurrency | requests/s, 1 replica | requests/s, 2 replicas | 2 / 1 "
        "| p50 (us), 1 | p50 (us), 2 | errors, 1 / 2 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cells = {(w, rep, c): r for w, rep, c, r in run.wm}
    summary = []
    for what in WM_PATHS:
        for conns in sorted({c for w, _, c, _ in run.wm if w == what}):
            one, two = cells.get((what, 1, conns)), cells.get((what, 2, conns))
            if not one or not two:
                continue
            r = ratio(two["rps"], one["rps"])
            lines.append(f"| {what} | {conns} | {one['rps']:.0f} | {two['rps']:.0f} | "
                         f"**{r:.2f}x** | {one['p50']:.1f} | {two['p50']:.1f} | "
                         f"{one['errors']} / {two['errors']} |")
            summary.append(f"- {what}, concurrency {conns}: 2 replicas / 1 = "
                           f"{two['rps']:.0f} / {one['rps']:.0f} = **{r:.2f}x**: requests/s "
                           + ("grow with replicas" if r > 1.1 else
                              "do **not** grow with replicas (less than +10%)"))
    lines += [""] + summary
    for note in run.wm_notes:
        lines.append(f"- note: {note}")
    return lines


def git_commit():
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              check=True, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--"],
                               check=False, capture_output=True).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"`{head}`" + (" with uncommitted changes" if dirty else "")


def write_results(section, path):
    """Adds the section at the top of RESULTS.md (newest first), keeping every other one."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    head, *sections = re.split(r"(?m)^(?=## )", text)
    sections = [s.rstrip("\n") + "\n" for s in sections]
    path.write_text(head.rstrip("\n") + "\n\n" + "\n".join([section] + sections))


# ------------------------------------------------------------------------------------------


EPILOG = """\
examples:
  .venv/bin/python bench/onnx_bench.py                   # the issue's table, about 6 minutes
  .venv/bin/python bench/onnx_bench.py --quick           # smoke run, 2s cells, about 2 minutes
  .venv/bin/python bench/onnx_bench.py --whole-machine   # the table, then 1 vs 2 replicas
  .venv/bin/python bench/onnx_bench.py --whole-machine-only --duration 5
  .venv/bin/python bench/onnx_bench.py --no-build --bin /tmp/before/target/release/gyrus
  .venv/bin/python bench/onnx_bench.py --skip-gyrus      # the peers and the floors only

The Markdown goes to bench/out/onnx.md (--out) and is printed; a full run (not --quick,
--skip-gyrus or --whole-machine-only) also adds it as a new section at the top of
bench/RESULTS.md (--results; --no-results never touches it, --write-results always does).
Needs .venv (scripts/setup-python.sh, with uv), wrk (apt-get install -y wrk; installed here
when missing and run as root), taskset (util-linux), cargo unless --no-build, and network
access the first time, to create bench/.venvs/fastapi (and bentoml) from
bench/onnx/requirements-*.txt.
"""


def main():
    global GYRUS
    ap = argparse.ArgumentParser(
        description=__doc__,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2s cells, 1s warm-ups, 20000 raw floor calls, no BentoML; "
                         "never touches RESULTS.md")
    ap.add_argument("--duration", type=int,
                    help="seconds per measured cell (default 10, --quick 2)")
    ap.add_argument("--warmup", type=int,
                    help="seconds of warm-up per server and path (default 3, --quick 1)")
    ap.add_argument("--max-requests", type=int, metavar="N",
                    help="also end a cell after N requests (a wrk Lua hook that costs the "
                         "client CPU, so it is off unless given); cells always end after "
                         "--duration")
    ap.add_argument("--iterations", type=int, help="raw floor calls (default 200000, quick 20000)")
    ap.add_argument("--whole-machine", action="store_true",
                    help="after the one-core table, measure on the whole machine: no pinning, "
                         "wrk on the same cores, gyrus's model API and Python path with 1 "
                         "replica vs 2")
    ap.add_argument("--whole-machine-only", action="store_true",
                    help="the whole-machine part alone (no one-core table)")
    ap.add_argument("--wm-concurrency", type=int, nargs="+", default=[8, 64], metavar="C",
                    help="concurrency levels of the whole-machine part (default: 8 64)")
    ap.add_argument("--bentoml", action=argparse.BooleanOptionalAction, default=None,
                    help="measure BentoML (d) too (default: yes, except with --quick)")
    ap.add_argument("--skip-gyrus", action="store_true",
                    help="measure the peers and the floors only, (a), (b) and (f) left out")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    ap.add_argument("--bin", default=str(GYRUS),
                    help="the gyrus binary to measure (default: the release build)")
    ap.add_argument("--fastapi-form", default="async-pydantic",
                    choices=["async-pydantic", "sync-pydantic", "async-request", "sync-request"],
                    help="FastAPI endpoint form of (c) (see bench/onnx/fastapi_app.py)")
    ap.add_argument("--bento-form", default="async", choices=["async", "sync"],
                    help="BentoML API method form (see bench/onnx/bento_service.py)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "onnx.md"),
                    help="where the Markdown goes (default: bench/out/onnx.md)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"),
                    help="the results file a full run adds its section to")
    ap.add_argument("--write-results", action="store_true",
                    help="add the section to --results even for a partial run")
    ap.add_argument("--no-results", action="store_true", help="never touch --results")
    args = ap.parse_args()
    args.duration = args.duration or (2 if args.quick else 10)
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.iterations = args.iterations or (20_000 if args.quick else 200_000)
    if args.bentoml is None:
        args.bentoml = not args.quick
    pinned = not args.whole_machine_only
    whole_machine = args.whole_machine or args.whole_machine_only
    if args.skip_gyrus and not pinned:
        ap.error("--skip-gyrus leaves nothing to measure with --whole-machine-only")
    GYRUS = Path(args.bin).resolve()

    if not VENV_PY.exists() or not UV.exists():
        sys.exit(".venv (with uv) is missing: run scripts/setup-python.sh")
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        # onnxruntime, onnx and skl2onnx live in .venv: run there.
        os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), *sys.argv[1:]])
    import importlib.util

    missing = [m for m in ("onnxruntime", "numpy", "yaml", "skl2onnx")
               if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"onnx_bench: .venv lacks {', '.join(missing)}: run scripts/setup-python.sh")
    if not shutil.which("taskset"):
        sys.exit("taskset is missing (util-linux)")

    cores = sorted(os.sched_getaffinity(0))
    server_core = str(cores[0])
    client_core = str(cores[1] if len(cores) > 1 else cores[0])
    if len(cores) < 2:
        log("warning: one core only: server and wrk share it")

    work = Path(tempfile.mkdtemp(prefix="gyrus-onnx-bench-"))
    started = time.time()
    def interrupted(*_):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    try:
        ensure_wrk()
        dylib = ort_dylib()
        fastapi_venv = ensure_venv("fastapi") if pinned else None
        bento_venv = ensure_venv("bentoml") if pinned and args.bentoml else None
        if not args.no_build:
            build(args.skip_gyrus)
        for binary in ([RAW_FLOOR] if pinned else []) + ([] if args.skip_gyrus else [GYRUS]):
            if not binary.exists():
                raise BenchError(f"{binary} is missing (built by this script unless --no-build)")
        models = make_models(work)
        refs = reference(models)
        versions = {"python": platform.python_version(),
                    "onnxruntime": Path(dylib).name.split(".so.")[-1]}
        if not args.skip_gyrus:
            versions["gyrus"] = subprocess.run(
                [str(GYRUS), "--version"], check=False, capture_output=True,
                text=True).stdout.strip().splitlines()[0:1] or ["?"]
            versions["gyrus"] = versions["gyrus"][0].replace("gyrus ", "")
        if fastapi_venv:
            versions.update(venv_versions(fastapi_venv, ["fastapi", "uvicorn", "pydantic"]))
        if bento_venv:
            versions.update(venv_versions(bento_venv, ["bentoml"]))
        versions["wrk"] = subprocess.run(["wrk", "-v"], check=False, capture_output=True,
                                         text=True).stdout.split()[1]

        run = Run(args, Wrk(client_core, work, max_requests=args.max_requests))
        run.wm_wrk = Wrk(None, work, threads=len(cores), max_requests=args.max_requests)
        run.sample_busy("before measuring")
        if pinned:
            log(f"==> measuring: {args.duration}s per cell, servers on core {server_core}, wrk "
                f"on core {client_core}; logs in {work}")
            log("==> raw floor (e)")
            run_raw_floor(run, models, refs, server_core, dylib)
            log("==> HTTP floor")
            run_http_floor(run, server_core, work)
            if not args.skip_gyrus:
                run.sample_busy("before gyrus")
                run_gyrus(run, models, refs, server_core, work, dylib)
            run.sample_busy("before FastAPI")
            run_fastapi(run, models, refs, server_core, work, fastapi_venv)
            run_fastapi_hello(run, server_core, work, fastapi_venv)
            if bento_venv:
                run.sample_busy("before BentoML")
                run_bentoml(run, models, refs, server_core, work, bento_venv)
        if whole_machine:
            run.sample_busy("before the whole-machine part")
            log(f"==> whole machine: {args.duration}s per cell, nothing pinned; logs in {work}")
            run_whole_machine(run, models, refs, work, dylib, args.wm_concurrency)
        run.sample_busy("after")
    except BenchError as e:
        stop_all()
        sys.exit(f"onnx_bench: {e}\n(logs in {work})")
    except subprocess.CalledProcessError as e:
        stop_all()
        out = "".join(x if isinstance(x, str) else x.decode(errors="replace")
                      for x in (e.stdout, e.stderr) if x).strip()
        sys.exit(f"onnx_bench: {' '.join(map(str, e.cmd))} failed ({e.returncode})\n{out}")
    except KeyboardInterrupt:
        stop_all()
        sys.exit("onnx_bench: interrupted; every process it started is stopped")
    finally:
        stop_all()

    text = report(run, versions, server_core, client_core, args.skip_gyrus, pinned,
                  whole_machine)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    log("\n" + text)
    partial = args.quick or args.skip_gyrus or not pinned
    if not args.no_results and (args.write_results or not partial):
        write_results(text, Path(args.results))
        log(f"added the section at the top of {args.results}")
    shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
