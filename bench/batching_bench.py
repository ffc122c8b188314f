#!/usr/bin/env python3
"""Issue 15's benchmark: adaptive batching of a 784-512-512-10 MLP (ONNX), in one run.

  (off)  gyrus model API, batching off
  (on)   gyrus model API, `batching: {max_batch_size: 32, max_latency: <--max-latency>}`
  (bento) BentoML 1.4 with its adaptive batching on the same model (batchable API,
          max_batch_size 32), one worker
  (raw)  onnxruntime's own session.run at batch 1 and at batch 32, in-process (rows/s)

Each server runs on core 0 with one intra-op thread, wrk on core 1, each request one row, at
concurrency 1, 8, 64 and 256 (10 s cells). Every server's answer is checked against
onnxruntime's before it is measured. Targets (issue 15), as ratios from this one run: at c=64,
(on) >= 3x the rows/s of (off) and >= 80% of (raw) at batch 32; at c=1, (on)'s p50 no worse
than (off)'s; (on)'s p99 within max_latency at every level.

examples:
  .venv/bin/python bench/batching_bench.py                 # the table, about 4 minutes
  .venv/bin/python bench/batching_bench.py --quick         # 2 s cells, about 1.5 minutes
  .venv/bin/python bench/batching_bench.py --no-bentoml --no-build

The Markdown goes to bench/out/batching.md and is printed; a full run (not --quick) also adds it
at the top of bench/RESULTS.md. Needs what bench/onnx_bench.py needs (it reuses its helpers):
.venv, wrk, taskset, cargo unless --no-build, and bench/.venvs/bentoml (created on first use).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx_bench as ob  # noqa: E402 - the shared machinery: processes, wrk, venvs, reports

ROOT = ob.ROOT
CONCURRENCY = (1, 8, 64, 256)
ROW = [((i * 7919) % 1000) / 1000.0 - 0.5 for i in range(784)]
BODY = json.dumps({"x": [ROW]})
BATCH = 32


def make_model(work):
    out = work / "models"
    subprocess.run([sys.executable, str(ob.HERE / "models.py"), str(out), "mlp-large"], check=True,
                   capture_output=True)
    return out / "mlp-large.onnx"


def session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def raw_rows_per_second(model, core, seconds):
    """onnxruntime's session.run at batch 1 and 32 on `core`, in a child process pinned there:
    rows/s and the median time of one run."""
    code = f"""
import json, os, sys, time
import numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from batching_bench import session
s = session({str(model)!r})
out = {{}}
for n in (1, {BATCH}):
    x = np.tile(np.asarray({ROW!r}, dtype=np.float32), (n, 1))
    for _ in range(50):
        s.run(None, {{"x": x}})
    times = []
    end = time.perf_counter() + {seconds}
    while time.perf_counter() < end:
        t = time.perf_counter(); s.run(None, {{"x": x}}); times.append(time.perf_counter() - t)
    times.sort()
    out[n] = {{"rows_per_s": n * len(times) / sum(times), "p50_us": times[len(times) // 2] * 1e6}}
print(json.dumps(out))
"""
    r = subprocess.run(["taskset", "-c", core, sys.executable, "-c", code], check=True,
                       capture_output=True, text=True, cwd=ROOT)
    return {int(k): v for k, v in json.loads(r.stdout).items()}


def project(work, name, model, batching):
    d = work / "projects" / name
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(Path(model).read_bytes())
    text = (f"- name: {name}\n  predictor:\n    type: onnx\n    model: model.onnx\n"
            "    session_options:\n      intra_op_num_threads: 1\n")
    if batching:
        text += "    batching:\n" + "".join(f"      {k}: {v}\n" for k, v in batching.items())
    # One replica: the autoscaler would add replicas on the pinned core under load.
    text += ob.autoscaling_yaml(1)
    (d / "cortex.yaml").write_text(text)
    return d


def check_logits(system, url, want):
    status, text = ob.post(url, BODY)
    try:
        got = json.loads(text)
        got = got["logits"] if isinstance(got, dict) else got
    except (ValueError, KeyError, TypeError):
        got = None
    if status != 200 or not ob.close(got, want, 1e-4):
        raise ob.BenchError(f"{system} at {url} answered {status} {text[:200]!r}")


def run_gyrus(run, model, want, core, work, max_latency):
    g = ob.Gyrus(work, core, ob.ort_dylib())
    try:
        for name, batching in (("mlp-off", None),
                               ("mlp-on", {"max_batch_size": BATCH, "max_latency": max_latency})):
            g.deploy(name, project(work, name, model, batching))
            g.check(name, lambda n=name: check_logits(n, f"{g.base}/{n}", want))
        for name, label in (("mlp-off", "gyrus, batching off"), ("mlp-on", "gyrus, batching on")):
            ob.log(f"==> {label}")
            run.measure("mlp", label, f"{g.base}/{name}", BODY, concurrency=CONCURRENCY)
        stats = json.loads(g("describe", "mlp-on", "-o", "json")).get("models", [])
        run.notes.append(f"gyrus describe mlp-on after the run: {json.dumps(stats)}")
    finally:
        g.stop()


def run_bentoml(run, model, want, core, work):
    venv = ob.ensure_venv("bentoml")
    port = ob.free_port()
    env = dict(os.environ, BENTOML_HOME=str(work / "bentoml-home"), BENTOML_DO_NOT_TRACK="true",
               BENCH_MLP_MODEL=str(model), BENCH_MAX_BATCH=str(BATCH))
    here = ROOT / "bench" / "batching"
    p = ob.start("bentoml", ["taskset", "-c", core, str(venv / "bin" / "bentoml"), "serve",
                             "bento_mlp:Mlp", "--working-dir", str(here), "--host", "127.0.0.1",
                             "--port", str(port)], env=env, cwd=here, logdir=work)
    base = f"http://127.0.0.1:{port}"
    try:
        ob.wait_until(lambda: ob.http_ok(f"{base}/readyz"), "BentoML", 120, p, work / "bentoml.log")
        check_logits("BentoML", f"{base}/mlp", want)
        ob.log("==> BentoML, adaptive batching on")
        run.measure("mlp", "BentoML, batching on", f"{base}/mlp", BODY, concurrency=CONCURRENCY)
    finally:
        ob.stop(p)


def report(run, raw, args, versions):
    now = datetime.datetime.now(datetime.timezone.utc)
    off = {c: run.get("mlp", "gyrus, batching off", c) for c in CONCURRENCY}
    on = {c: run.get("mlp", "gyrus, batching on", c) for c in CONCURRENCY}
    bento = {c: run.get("mlp", "BentoML, batching on", c) for c in CONCURRENCY}
    lines = [
        f"## Adaptive batching (issue 15, `bench/batching_bench.py`), {now:%Y-%m-%d}",
        "",
        f"Command: `.venv/bin/python bench/batching_bench.py {' '.join(sys.argv[1:])}`".rstrip()
        + f", run at {now:%H:%M} UTC. Machine: {ob.machine()}. Commit: {ob.git_commit()}. "
        f"Model: MLP 784-512-512-10 (`bench/onnx/models.py mlp-large`), one row per request, "
        f"one intra-op thread. Server on core 0, wrk on core 1, {args.duration}s cells. "
        f"gyrus batching: max_batch_size {BATCH}, max_latency {args.max_latency}. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        f"Raw onnxruntime (in-process, core 0): batch 1: {raw[1]['rows_per_s']:.0f} rows/s "
        f"({raw[1]['p50_us']:.0f} us a run); batch {BATCH}: {raw[BATCH]['rows_per_s']:.0f} rows/s "
        f"({raw[BATCH]['p50_us']:.0f} us a run).",
        "",
        "| server | c | rows/s | p50 (us) | p99 (us) | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, cells in (("gyrus, batching off", off), ("gyrus, batching on", on),
                         ("BentoML, batching on", bento)):
        for c in CONCURRENCY:
            r = cells.get(c)
            if r:
                lines.append(f"| {label} | {c} | {r['rps']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} "
                             f"| {r['errors']} |")
    ms = float(args.max_latency.rstrip("ms"))
    t = []
    if on.get(64) and off.get(64):
        x = on[64]["rps"] / off[64]["rps"]
        t.append(("c=64: batching on >= 3x off", f"{x:.2f}x", x >= 3))
        y = on[64]["rps"] / raw[BATCH]["rows_per_s"]
        t.append((f"c=64: batching on >= 80% of raw batch {BATCH}", f"{y:.0%}", y >= 0.8))
    if on.get(1) and off.get(1):
        t.append(("c=1: p50 with batching no worse than without",
                  f"{on[1]['p50']:.0f} vs {off[1]['p50']:.0f} us", on[1]["p50"] <= off[1]["p50"] * 1.05))
    worst = max((on[c]["p99"] for c in CONCURRENCY if on.get(c)), default=None)
    if worst is not None:
        t.append((f"p99 within max_latency ({args.max_latency}) at every level",
                  f"worst {worst / 1000:.1f} ms", worst <= ms * 1000))
    for c in CONCURRENCY:
        if on.get(c) and bento.get(c):
            t.append((f"c={c}: gyrus batching vs BentoML batching (rows/s)",
                      f"{on[c]['rps'] / bento[c]['rps']:.2f}x", None))
    lines += ["", "| target | result | verdict |", "| --- | --- | --- |"]
    for what, value, ok in t:
        lines.append(f"| {what} | {value} | {'-' if ok is None else ob.verdict(ok)} |")
    for note in run.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("examples:")[1].join(["examples:", ""]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per cell (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server")
    ap.add_argument("--quick", action="store_true", help="2 s cells; RESULTS.md untouched")
    ap.add_argument("--max-latency", default="100ms", help="gyrus's batching.max_latency")
    ap.add_argument("--no-bentoml", action="store_true", help="leave BentoML out")
    ap.add_argument("--no-build", action="store_true", help="use target/release/gyrus as it is")
    ap.add_argument("--server-core", default="0")
    ap.add_argument("--client-core", default="1")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup = 2, 1
    args.max_requests = None
    ob.ensure_wrk()
    if not args.no_build:
        ob.log("==> cargo build --release -p gyrus-cli")
        subprocess.run(["cargo", "build", "--release", "-p", "gyrus-cli"], check=True, cwd=ROOT)
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    work = Path(tempfile.mkdtemp(prefix="gyrus-batching-bench-"))
    run = ob.Run(args, ob.Wrk(args.client_core, work))
    try:
        model = make_model(work)
        import numpy as np

        want = session(model).run(None, {"x": np.asarray([ROW], dtype=np.float32)})[0].tolist()
        ob.log("==> raw onnxruntime, batch 1 and 32")
        raw = raw_rows_per_second(model, args.server_core, max(2, args.duration // 2))
        run_gyrus(run, model, want, args.server_core, work, args.max_latency)
        if not args.no_bentoml:
            try:
                run_bentoml(run, model, want, args.server_core, work)
                versions.update(ob.venv_versions(ob.VENVS / "bentoml", ["bentoml"]))
            except ob.BenchError as e:
                run.notes.append(f"BentoML not measured: {e}")
    finally:
        ob.stop_all()
    text = report(run, raw, args, versions)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "batching.md").write_text(text)
    print(text)
    if not args.quick:
        ob.write_results(text, ROOT / "bench" / "RESULTS.md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ob.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
