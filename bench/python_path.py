#!/usr/bin/env python3
"""Benchmark of gyrus's Python request path, all in one run.

Serves examples/hello from an isolated daemon (its own GYRUS_HOME and port on 127.0.0.1) and
measures with wrk, server and load generator pinned to different cores:

  predictor   the predictor's own time: json.loads + predict() + json.dumps, in-process (timeit)
  replica GET the replica's Rust health handler, straight to its port: the loopback HTTP floor
  gateway GET the same through the gateway: floor + one gateway hop
  replica     POST to the replica's port: HTTP + worker protocol + Python
  gateway     POST to the API endpoint, as users call it: everything
  FastAPI     POST to bench/onnx/fastapi_hello.py (uvicorn, one worker, pinned like gyrus): a
              FastAPI app returning the same value, the app a user would write instead

The overhead gyrus adds is `gateway p50 - predictor` at concurrency 1 (it includes the client's
own loopback round trip, so it overstates gyrus's share). Target: under 100 us. And the
gateway POST's requests/s against FastAPI's at each concurrency (issue 13: at least 2x).

Usage: python3 bench/python_path.py [--duration 10] [--out bench/out/python_path.md] [--no-fastapi]
Needs: wrk (apt-get install wrk), a release build (cargo build --release -p gyrus-cli), and
for the FastAPI row .venv's uv (it creates bench/.venvs/fastapi as bench/onnx_bench.py does).
bench/onnx_bench.py measures the same pair, (f) and (g), beside the ONNX paths.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "gyrus"
PAYLOAD = '{"name": "bench"}'
GATEWAY_POST = "gateway POST (end to end)"
FASTAPI = "FastAPI POST (same value)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def predictor_time_us():
    """The predictor's own time per request, as the worker runs it (decode, predict, encode)."""
    sys.path.insert(0, str(ROOT / "examples" / "hello"))
    from predictor import PythonPredictor  # noqa: E402

    p = PythonPredictor({"greeting": "hello"})
    n = 200_000
    t = timeit.timeit(lambda: json.dumps(p.predict(json.loads(PAYLOAD))), number=n)
    return t / n * 1e6


def wrk(url, conns, duration, post, server_cores, client_core):
    script = None
    if post:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = '{PAYLOAD}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        script.close()
    threads = 1 if conns == 1 else 2
    cmd = ["taskset", "-c", client_core, "wrk", "-t", str(threads), "-c", str(conns),
           "-d", f"{duration}s", "--latency"]
    if script:
        cmd += ["-s", script.name]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    if script:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
        v, unit = float(m.group(1)), m.group(2)
        lat[pct] = v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"],
            "errors": int(non2xx.group(1)) if non2xx else 0}


def fastapi_rows(venv, home, duration, server_cores, client_core):
    """FastAPI returning what examples/hello returns, started alone on the server core."""
    port = free_port()
    out = open(Path(home) / "fastapi.out", "w")
    app = subprocess.Popen(
        ["taskset", "-c", server_cores, str(venv / "bin" / "python"), "-m", "uvicorn",
         "fastapi_hello:app", "--app-dir", str(ROOT / "bench" / "onnx"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"],
        stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}/hello"
    rows = []
    try:
        deadline = time.time() + 60
        while True:
            try:
                req = urllib.request.Request(url, data=PAYLOAD.encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    got = json.loads(r.read())
                if got != {"message": "hello, bench!"}:
                    sys.exit(f"FastAPI hello answered {got}")
                break
            except OSError:
                if time.time() > deadline or app.poll() is not None:
                    sys.exit(f"FastAPI hello did not start; see {home}/fastapi.out")
                time.sleep(0.2)
        wrk(url, 8, 2, True, server_cores, client_core)
        for conns in (1, 8, 64):
            r = wrk(url, conns, duration, True, server_cores, client_core)
            rows.append((conns, FASTAPI, r))
            print(f"c={conns:<3} {FASTAPI:<28} {r['rps']:>9.0f} req/s  p50 {r['p50']:>8.1f} us"
                  f"  p99 {r['p99']:>8.1f} us  non-2xx {r['errors']}", flush=True)
    finally:
        app.terminate()
        try:
            app.wait(timeout=15)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait(timeout=10)
    return rows


def main():
    global BIN
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "python_path.md"))
    ap.add_argument("--bin", default=str(BIN), help="the gyrus binary (default: the release build)")
    ap.add_argument("--no-fastapi", action="store_true",
                    help="leave out the FastAPI app returning the same value")
    args = ap.parse_args()
    BIN = Path(args.bin)
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: run cargo build --release -p gyrus-cli")
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk")
    ncpu = os.cpu_count() or 1
    server_cores = "0" if ncpu >= 2 else "0"
    client_core = "1" if ncpu >= 2 else "0"

    fastapi_venv = None
    if not args.no_fastapi:
        sys.path.insert(0, str(ROOT / "bench"))
        import onnx_bench  # stdlib-only at import

        if not onnx_bench.UV.exists():
            sys.exit(f"{onnx_bench.UV} is missing (scripts/setup-python.sh); or --no-fastapi")
        try:
            fastapi_venv = onnx_bench.ensure_venv("fastapi")
        except onnx_bench.BenchError as e:
            sys.exit(f"python_path: {e}\n(--no-fastapi leaves the FastAPI row out)")

    home = tempfile.mkdtemp(prefix="gyrus-bench-")
    addr = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, GYRUS_HOME=home, GYRUS_ADDR=addr)
    log = open(Path(home) / "daemon.out", "w")
    daemon = subprocess.Popen(["taskset", "-c", server_cores, str(BIN), "daemon"], env=env,
                              stdout=log, stderr=log)
    try:
        subprocess.run([str(BIN), "deploy", str(ROOT / "examples" / "hello")], env=env,
                       check=True, capture_output=True, timeout=120)
        info = json.loads(subprocess.run([str(BIN), "describe", "hello", "-o", "json"], env=env,
                                         check=True, capture_output=True, text=True).stdout)
        port = info["replica_details"][0]["port"]
        targets = {
            "replica GET (HTTP floor)": (f"http://127.0.0.1:{port}/", False),
            "gateway GET": (f"http://{addr}/hello", False),
            "replica POST (Python)": (f"http://127.0.0.1:{port}/predict", True),
            GATEWAY_POST: (f"http://{addr}/hello", True),
        }
        # Warm up every path (connections, caches, Python).
        for url, post in targets.values():
            wrk(url, 8, 2, post, server_cores, client_core)
        pred_us = predictor_time_us()
        rows = []
        for conns in (1, 8, 64):
            for name, (url, post) in targets.items():
                r = wrk(url, conns, args.duration, post, server_cores, client_core)
                rows.append((conns, name, r))
                print(f"c={conns:<3} {name:<28} {r['rps']:>9.0f} req/s  p50 {r['p50']:>8.1f} us"
                      f"  p99 {r['p99']:>8.1f} us  non-2xx {r['errors']}", flush=True)
    finally:
        subprocess.run([str(BIN), "daemon", "stop"], env=env, capture_output=True, timeout=60)
        daemon.wait(timeout=30)
    if fastapi_venv:
        rows += fastapi_rows(fastapi_venv, home, args.duration, server_cores, client_core)
    shutil.rmtree(home, ignore_errors=True)

    rows.sort(key=lambda row: row[0])  # by concurrency, each path in measured order
    by = {(c, n): r for c, n, r in rows}
    e2e = by[(1, GATEWAY_POST)]["p50"]
    direct = by[(1, "replica POST (Python)")]["p50"]
    floor = by[(1, "replica GET (HTTP floor)")]["p50"]
    gw_get = by[(1, "gateway GET")]["p50"]
    lines = [
        f"Machine: {os.cpu_count()} cores, {platform_line()}; server on core {server_cores}, "
        f"wrk on core {client_core}; {args.duration}s per cell.",
        "",
        "| concurrency | path | requests/s | p50 (us) | p99 (us) | non-2xx |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for c, n, r in rows:
        lines.append(f"| {c} | {n} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")
    lines += [
        "",
        f"Predictor's own time (decode + predict + encode, in-process): {pred_us:.1f} us.",
        "",
        "At concurrency 1, p50:",
        f"- overhead gyrus adds on top of the predictor: gateway POST - predictor = "
        f"{e2e:.1f} - {pred_us:.1f} = **{e2e - pred_us:.1f} us** (target < 100 us; includes the "
        f"client's own loopback round trip of about {floor:.1f} us)",
        f"- gateway hop: gateway GET - replica GET = {gw_get - floor:.1f} us",
        f"- replica + worker protocol + Python: replica POST - replica GET = {direct - floor:.1f} us",
    ]
    if fastapi_venv:
        parts, oks = [], []
        for c in (1, 8, 64):
            r = by[(c, GATEWAY_POST)]["rps"] / by[(c, FASTAPI)]["rps"]
            parts.append(f"c={c} **{r:.2f}x**")
            oks.append(r >= 2)
        lines += ["", f"Requests/s, gateway POST / FastAPI (same value): {', '.join(parts)} "
                  f"(target >= 2x at every concurrency): "
                  f"{'met' if all(oks) else '**missed**'}"]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print("\n" + text)


def platform_line():
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                     if l.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return model


if __name__ == "__main__":
    main()
