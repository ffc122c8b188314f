#!/usr/bin/env python3
"""Benchmark of gyrus's TensorFlow serving against FastAPI + TensorFlow, all in one run
(issue 14).

Serves the same SavedModels (scripts/make_tf_models.py: iris, Cortex's example with four named
float32 inputs; mlp, 784-512-512-10) and measures with wrk, each server pinned to core 0 and
wrk to core 1, at concurrency 1, 8 and 64:

  (a) gyrus model API       predictor.type tensorflow with no Python, through the gateway:
                            POST /iris-model {"sepal_length": 5.2, ...} ->
                            {"class_ids": [0], "probabilities": [[...]]};
                            POST /mlp-model {"x": [[784 floats]]} -> {"logits": [[...]]}
  (b) gyrus TensorFlowPredictor  Cortex's iris predictor (examples/tensorflow-iris/predictor.py):
                            the same body -> setosa; for the mlp a predictor returning
                            {"logits": [self.client.predict({"x": payload["x"]})["logits"]]}
  (c) FastAPI + TensorFlow  bench/tf/fastapi_app.py: uvicorn, one worker, tf.saved_model.load
                            and signatures["serving_default"] per request, same JSON as (a)
  (d) raw model time        no HTTP, batch 1, on core 0: TensorFlow's own Python call
                            signatures["serving_default"](**inputs) (tensors made beforehand;
                            and with tf.constant + .numpy() in the call), and gyrus's engine
                            (TensorFlow's C API through gyrus_tensorflow::Model::infer,
                            crates/gyrus-tensorflow/examples/tf_raw.rs)

Every TensorFlow session runs with one intra-op and one inter-op thread. Each server's answer is
checked before it is measured (iris: class_ids [0] / setosa, probabilities as TensorFlow's own;
mlp: logits within 1e-4 of TensorFlow's own). The machinery (isolated daemon, wrk, process
tracking, the Markdown helpers) is bench/onnx_bench.py's. The Markdown goes to bench/out/tf.md
and, for full runs, as a new section at the top of bench/RESULTS.md.
"""
import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx_bench as ob  # noqa: E402

ROOT = ob.ROOT
HERE = ROOT / "bench" / "tf"
TF_RAW = ROOT / "target" / "release" / "examples" / "tf_raw"
VENV_NAME = "fastapi-tf"
CONCURRENCY = ob.CONCURRENCY

IRIS_SAMPLE = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}
IRIS_BODY = json.dumps(IRIS_SAMPLE)  # examples/tensorflow-iris/sample.json
MLP_ROW = [round((i % 97) * 0.01, 2) for i in range(784)]
MLP_BODY = json.dumps({"x": [MLP_ROW]})
BODIES = {"iris": IRIS_BODY, "mlp": MLP_BODY}

A = "(a) gyrus model API"
B = "(b) gyrus TensorFlowPredictor"
C = "(c) FastAPI + TensorFlow"
ORDER = [A, B, C]
# (d), the raw model times
PY_CALL = "TF Python: signature call"
PY_FULL = "TF Python: tf.constant + call + .numpy()"
C_API = "gyrus engine: C API (Model::infer)"

MLP_PREDICTOR = """\
class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload):
        return {"logits": [self.client.predict({"x": payload["x"]})["logits"]]}
"""


# ------------------------------------------------------------------------------------------
# setup


def tf_library():
    lib = os.environ.get("GYRUS_TF_LIBRARY")
    if lib:
        return lib
    libs = sorted(glob.glob(str(ROOT / ".venv" / "lib" / "python3*" / "site-packages" /
                                "tensorflow" / "libtensorflow_cc.so.2")))
    if not libs:
        raise ob.BenchError("no tensorflow/libtensorflow_cc.so.2 in .venv: run "
                            "scripts/setup-python.sh (tensorflow-cpu), or set GYRUS_TF_LIBRARY")
    return libs[-1]


def ensure_venv():
    """bench/.venvs/fastapi-tf from bench/tf/requirements-fastapi.txt, rebuilt when the file
    changes (onnx_bench.ensure_venv's scheme, with this folder's requirements)."""
    req = HERE / "requirements-fastapi.txt"
    venv = ob.VENVS / VENV_NAME
    base = subprocess.run([str(ob.VENV_PY), "-c", "import sys; print(getattr(sys, "
                           "'_base_executable', None) or sys.executable)"], check=True,
                          capture_output=True, text=True).stdout.strip()
    want = hashlib.sha256(req.read_bytes() + base.encode()).hexdigest()
    stamp = venv / ".requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == want and (venv / "bin" / "python").exists():
        return venv
    ob.log(f"==> creating bench/.venvs/{VENV_NAME} from {req.relative_to(ROOT)}")
    shutil.rmtree(venv, ignore_errors=True)
    for cmd in ([str(ob.UV), "venv", "-q", "--python", base, str(venv)],
                [str(ob.UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                 "-r", str(req)]):
        r = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if r.returncode:
            shutil.rmtree(venv, ignore_errors=True)
            raise ob.BenchError(f"could not create bench/.venvs/{VENV_NAME}:\n$ "
                                f"{' '.join(cmd)}\n{(r.stdout + r.stderr).strip()[-2000:]}")
    stamp.write_text(want + "\n")
    return venv


def build():
    for args in (["-p", "gyrus-cli"], ["-p", "gyrus-tensorflow", "--example", "tf_raw"]):
        ob.log(f"==> cargo build --release {' '.join(args)}")
        if subprocess.run(["cargo", "build", "--release", *args], cwd=ROOT).returncode:
            raise ob.BenchError(f"cargo build --release {' '.join(args)} failed")


def make_models(work):
    """iris/ (with 1/) and mlp/ (with 1/) from scripts/make_tf_models.py."""
    out = work / "models"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tf_models.py"), str(out),
                    "iris", "mlp"], check=True, capture_output=True)
    return {"iris": out / "iris", "mlp": out / "mlp"}


# ------------------------------------------------------------------------------------------
# (d) TensorFlow's own Python call, in a child process pinned to the servers' core; it also
# gives the reference answers every server is checked against.


def python_raw_child(models_dir, iterations):
    """Runs in the child (`--python-raw`): prints JSON with each model's answers and times."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    result = {"tensorflow": tf.__version__}
    raw = {"iris": IRIS_SAMPLE, "mlp": {"x": [MLP_ROW]}}
    for name in ("iris", "mlp"):
        fn = tf.saved_model.load(str(Path(models_dir) / name / "1")).signatures["serving_default"]

        def tensors(name=name):
            if name == "iris":
                return {k: tf.constant([v], tf.float32) for k, v in IRIS_SAMPLE.items()}
            return {"x": tf.constant(np.asarray(raw["mlp"]["x"], dtype=np.float32))}

        prepared = tensors()

        def call(fn=fn, prepared=prepared):
            return fn(**prepared)

        def full(fn=fn, tensors=tensors):
            return {k: v.numpy().tolist() for k, v in fn(**tensors()).items()}

        answer = full()
        times = {}
        for label, f in ((PY_CALL, call), (PY_FULL, full)):
            for _ in range(min(200, iterations)):
                f()
            t = []
            for _ in range(iterations):
                t0 = time.perf_counter_ns()
                f()
                t.append((time.perf_counter_ns() - t0) / 1e3)
            t.sort()
            times[label] = {"iterations": iterations, "p50_us": statistics.median(t),
                            "p99_us": t[min(len(t) - 1, int(0.99 * len(t)))],
                            "mean_us": statistics.fmean(t)}
        result[name] = {"answer": answer, "times": times}
    print(json.dumps(result))


def run_python_raw(run, models, core):
    cmd = ["taskset", "-c", core, str(ob.VENV_PY), str(Path(__file__).resolve()),
           "--python-raw", str(models["iris"].parent), "--iterations", str(run.args.iterations)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    if r.returncode:
        raise ob.BenchError(f"TensorFlow's Python call failed:\n{r.stderr.strip()[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    refs = {}
    for name in ("iris", "mlp"):
        refs[name] = out[name]["answer"]
        for label, t in out[name]["times"].items():
            run.raw[(name, label)] = t
            ob.log(f"  {name:<5} (d) {label}: p50 {t['p50_us']:.1f} us, mean "
                   f"{t['mean_us']:.1f} us ({t['iterations']} calls)")
    if refs["iris"]["class_ids"] != [0]:
        raise ob.BenchError(f"TensorFlow's own iris answer is {refs['iris']}, not class 0")
    return refs, out["tensorflow"]


def run_c_api_raw(run, models, refs, core, lib):
    args = {"iris": [f"{k}={v}" for k, v in IRIS_SAMPLE.items()],
            "mlp": ["x=" + ",".join(map(str, MLP_ROW))]}
    for name in ("iris", "mlp"):
        cmd = ["taskset", "-c", core, str(TF_RAW), str(models[name]), str(run.args.iterations),
               *args[name]]
        r = subprocess.run(cmd, env=dict(os.environ, GYRUS_TF_LIBRARY=lib,
                                         TF_CPP_MIN_LOG_LEVEL="2"),
                           check=False, capture_output=True, text=True, timeout=900)
        if r.returncode:
            raise ob.BenchError(f"tf_raw {name} failed: {r.stderr.strip()[-2000:]}")
        t = json.loads(r.stdout.strip().splitlines()[-1])
        want = {k: [x for row in v for x in (row if isinstance(row, list) else [row])]
                for k, v in refs[name].items()}
        if not all(ob.close(t["outputs"].get(k), v) for k, v in want.items()):
            raise ob.BenchError(f"tf_raw's outputs for {name} {t['outputs']} differ from "
                                f"TensorFlow's {want}")
        run.raw[(name, C_API)] = t
        ob.log(f"  {name:<5} (d) {C_API}: p50 {t['p50_us']:.1f} us, mean {t['mean_us']:.1f} us")


# ------------------------------------------------------------------------------------------
# the servers


def tf_project(work, name, model_dir, predictor):
    """One project, two APIs on the same SavedModel: NAME-tf (a TensorFlowPredictor) and
    NAME-model (the model API, no Python), each with exactly one replica: left to the
    autoscaler (target_replica_concurrency 1), wrk's concurrency makes it start dozens of
    replicas on the one pinned core, each with its own TensorFlow session, and the numbers
    measure that crowd rather than one server against one uvicorn worker."""
    d = work / "projects" / name
    d.mkdir(parents=True)
    shutil.copytree(model_dir, d / "model")
    (d / "predictor.py").write_text(predictor)
    (d / "cortex.yaml").write_text(
        f"- name: {name}-tf\n  predictor:\n    type: tensorflow\n    path: predictor.py\n"
        f"    model: model/\n" + ob.autoscaling_yaml(1) +
        f"- name: {name}-model\n  predictor:\n    type: tensorflow\n    model: model/\n" +
        ob.autoscaling_yaml(1))
    return d


def check_text(system, url, body, want):
    status, text = ob.post(url, body)
    if status != 200 or text.strip().strip('"') != want:
        raise ob.BenchError(f"{system} at {url} answered {status} {text[:300]!r}; expected "
                            f"{want}")


def run_gyrus(run, models, refs, core, work, dylib):
    iris_predictor = (ROOT / "examples" / "tensorflow-iris" / "predictor.py").read_text()
    projects = [("iris", tf_project(work, "iris", models["iris"], iris_predictor)),
                ("mlp", tf_project(work, "mlp", models["mlp"], MLP_PREDICTOR))]
    g = ob.Gyrus(work, core, dylib)
    try:
        for name, d in projects:
            g.deploy(f"{name}-model and {name}-tf", d)
        base = g.base
        g.check("iris-model", lambda: ob.check_json(A, f"{base}/iris-model", IRIS_BODY,
                                                    refs["iris"]))
        g.check("iris-tf", lambda: check_text(B, f"{base}/iris-tf", IRIS_BODY, "setosa"))
        for api, system in (("mlp-model", A), ("mlp-tf", B)):
            g.check(api, lambda api=api, system=system: ob.check_json(
                system, f"{base}/{api}", MLP_BODY, refs["mlp"]))
        ob.log("==> gyrus")
        for name in ("iris", "mlp"):
            run.measure(name, A, f"{base}/{name}-model", BODIES[name])
            run.measure(name, B, f"{base}/{name}-tf", BODIES[name])
    finally:
        g.stop()


def run_fastapi(run, models, refs, core, work, venv):
    port = ob.free_port()
    env = dict(os.environ, BENCH_IRIS_MODEL=str(models["iris"] / "1"),
               BENCH_MLP_MODEL=str(models["mlp"] / "1"), TF_CPP_MIN_LOG_LEVEL="2")
    cmd = ["taskset", "-c", core, str(venv / "bin" / "python"), "-m", "uvicorn",
           "fastapi_app:app", "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--no-access-log", "--log-level", "warning"]
    p = ob.start("fastapi-tf", cmd, env=env, logdir=work)
    base = f"http://127.0.0.1:{port}"
    try:
        ob.wait_until(lambda: ob.http_ok(f"{base}/iris-model", IRIS_BODY), "FastAPI + TensorFlow",
                      180, p, work / "fastapi-tf.log")
        ob.check_json(C, f"{base}/iris-model", IRIS_BODY, refs["iris"])
        ob.check_json(C, f"{base}/mlp-model", MLP_BODY, refs["mlp"])
        ob.log("==> FastAPI + TensorFlow")
        for name in ("iris", "mlp"):
            run.measure(name, C, f"{base}/{name}-model", BODIES[name])
    finally:
        ob.stop(p)


# ------------------------------------------------------------------------------------------
# report


def command_line():
    return "`.venv/bin/python bench/tf_bench.py" + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "") + "`"


def report(run, versions, server_core, client_core):
    a, g = run.args, run.get
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        f"## TensorFlow serving against FastAPI (issue 14, `bench/tf_bench.py`), {now:%Y-%m-%d}",
        "",
        f"Command: {command_line()}, run at {now:%H:%M} UTC (`date -u`). Machine: "
        f"{ob.machine()}. Commit: {ob.git_commit()}. {a.duration}s per cell after a "
        f"{a.warmup}s warm-up per server and path. Every TensorFlow session has one intra-op "
        "and one inter-op thread; each server's answer is checked before it is measured.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "Other work on the machine, sampled for 1 s while no benchmark server runs (share of "
        "all cores busy): " + ", ".join(f"{when} {busy:.0f}%" for when, busy in run.busy
                                        if busy is not None)
        + ". Anything well above 0% makes the numbers measured around it noisy.",
        "",
        f"Servers on core {server_core}, wrk (`-t 1`) on core {client_core}, one at a time. "
        "Every gyrus API has one replica (`autoscaling` min = max = init = 1). "
        "(a): gyrus model API (`predictor.type: tensorflow`, no Python, through the gateway); "
        "(b): gyrus TensorFlowPredictor (iris: `examples/tensorflow-iris/predictor.py`, "
        "answering `setosa`; mlp: a predictor returning the client's logits); (c): FastAPI + "
        "TensorFlow (`bench/tf/fastapi_app.py`, uvicorn, one worker). iris requests are "
        "Cortex's sample `" + IRIS_BODY + "`; mlp requests one 784-float row.",
        "",
        "| model | server | concurrency | requests/s | p50 (us) | p99 (us) | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model in ("iris", "mlp"):
        for conns in CONCURRENCY:
            for system in ORDER:
                r = g(model, system, conns)
                if r:
                    lines.append(f"| {model} | {system} | {conns} | {r['rps']:.0f} | "
                                 f"{r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")
    lines += [
        "",
        "(d) raw model time at batch 1, no HTTP, on the servers' core:",
        "",
        "| model | call | calls | p50 (us) | p99 (us) | mean (us) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (model, label), t in run.raw.items():
        lines.append(f"| {model} | {label} | {t['iterations']} | {t['p50_us']:.1f} | "
                     f"{t['p99_us']:.1f} | {t['mean_us']:.1f} |")

    def rps(model, system, conns):
        r = g(model, system, conns)
        return r and r["rps"]

    def cell(x):
        return "" if x is None else f"**{x:.2f}x**"

    lines += [
        "",
        "Ratios of requests/s, from this run:",
        "",
        "| concurrency | iris (a)/(c) | iris (b)/(c) | mlp (a)/(c) | mlp (b)/(c) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for conns in CONCURRENCY:
        lines.append("| " + " | ".join([str(conns)] + [cell(ob.ratio(
            rps(model, s, conns), rps(model, C, conns))) for model in ("iris", "mlp")
            for s in (A, B)]) + " |")
    lines += ["", "What gyrus adds at concurrency 1 (p50 of the server minus the raw model p50; "
              "it includes the loopback HTTP round trip and wrk's own time):"]
    for model in ("iris", "mlp"):
        for system, raw_label in ((A, PY_CALL), (A, C_API), (C, PY_CALL)):
            r, t = g(model, system, 1), run.raw.get((model, raw_label))
            if r and t:
                lines.append(f"- {model}, {system} p50 - {raw_label} p50: {r['p50']:.1f} - "
                             f"{t['p50_us']:.1f} = **{r['p50'] - t['p50_us']:+.1f} us**")
    for note in run.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------


EPILOG = """\
examples:
  .venv/bin/python bench/tf_bench.py                  # the full table, about 5 minutes (10 s cells)
  .venv/bin/python bench/tf_bench.py --quick          # smoke run, 2 s cells, about 2 minutes
  .venv/bin/python bench/tf_bench.py --duration 5     # shorter cells
  .venv/bin/python bench/tf_bench.py --no-build --bin /tmp/before/target/release/gyrus

The Markdown goes to bench/out/tf.md (--out) and is printed; a full run (not --quick) also adds
it as a new section at the top of bench/RESULTS.md (--no-results never touches it,
--write-results always does). Needs .venv (tensorflow-cpu, numpy, scikit-learn, uv), wrk
(installed with apt-get when missing and run as root), taskset, cargo unless --no-build, and the
package index or uv's cache the first time, to create bench/.venvs/fastapi-tf. The daemon loads
TensorFlow from GYRUS_TF_LIBRARY, by default .venv's tensorflow/libtensorflow_cc.so.2.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2s cells, 1s warm-ups, 500 raw calls; never touches "
                         "RESULTS.md")
    ap.add_argument("--duration", type=int, help="seconds per measured cell (default 10, "
                                                 "--quick 2)")
    ap.add_argument("--warmup", type=int, help="seconds of warm-up per server and path "
                                               "(default 3, --quick 1)")
    ap.add_argument("--iterations", type=int,
                    help="raw model calls per model and kind (default 3000, --quick 500)")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    ap.add_argument("--bin", default=str(ob.GYRUS),
                    help="the gyrus binary to measure (default: the release build)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "tf.md"),
                    help="where the Markdown goes (default: bench/out/tf.md)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"),
                    help="the results file a full run adds its section to")
    ap.add_argument("--write-results", action="store_true",
                    help="add the section to --results even for a --quick run")
    ap.add_argument("--no-results", action="store_true", help="never touch --results")
    ap.add_argument("--python-raw", metavar="MODELS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.duration = args.duration or (2 if args.quick else 10)
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.iterations = args.iterations or (500 if args.quick else 3000)
    if args.python_raw:
        python_raw_child(args.python_raw, args.iterations)
        return
    ob.GYRUS = Path(args.bin).resolve()

    if not ob.VENV_PY.exists() or not ob.UV.exists():
        sys.exit(".venv (with uv) is missing: run scripts/setup-python.sh")
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(ob.VENV_PY), [str(ob.VENV_PY), str(Path(__file__).resolve()),
                                   *sys.argv[1:]])
    if not shutil.which("taskset"):
        sys.exit("taskset is missing (util-linux)")
    cores = sorted(os.sched_getaffinity(0))
    server_core = str(cores[0])
    client_core = str(cores[1] if len(cores) > 1 else cores[0])
    if len(cores) < 2:
        ob.log("warning: one core only: server and wrk share it")

    work = Path(tempfile.mkdtemp(prefix="gyrus-tf-bench-"))
    started = time.time()

    def interrupted(*_):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    try:
        ob.ensure_wrk()
        lib = tf_library()
        os.environ["GYRUS_TF_LIBRARY"] = lib  # the daemon uses it rather than installing TF
        try:
            dylib = ob.ort_dylib()
        except ob.BenchError:
            dylib = ""
        venv = ensure_venv()
        if not args.no_build:
            build()
        for binary in (TF_RAW, ob.GYRUS):
            if not binary.exists():
                raise ob.BenchError(f"{binary} is missing (built by this script unless "
                                    "--no-build)")
        models = make_models(work)
        run = ob.Run(args, ob.Wrk(client_core, work))
        run.raw = {}
        run.sample_busy("before measuring")
        ob.log(f"==> measuring: {args.duration}s per cell, servers on core {server_core}, wrk "
               f"on core {client_core}; logs in {work}")
        ob.log("==> (d) raw model time")
        refs, tf_version = run_python_raw(run, models, server_core)
        run_c_api_raw(run, models, refs, server_core, lib)
        versions = {"python": platform.python_version(), "tensorflow": tf_version}
        versions["gyrus"] = (subprocess.run([str(ob.GYRUS), "--version"], check=False,
                                            capture_output=True, text=True).stdout.strip()
                             .replace("gyrus ", "") or "?")
        versions.update(ob.venv_versions(venv, ["fastapi", "uvicorn", "pydantic"]))
        versions["wrk"] = subprocess.run(["wrk", "-v"], check=False, capture_output=True,
                                         text=True).stdout.split()[1]
        run.sample_busy("before gyrus")
        run_gyrus(run, models, refs, server_core, work, dylib)
        run.sample_busy("before FastAPI")
        run_fastapi(run, models, refs, server_core, work, venv)
        run.sample_busy("after")
    except ob.BenchError as e:
        ob.stop_all()
        sys.exit(f"tf_bench: {e}\n(logs in {work})")
    except subprocess.CalledProcessError as e:
        ob.stop_all()
        out = "".join(x if isinstance(x, str) else x.decode(errors="replace")
                      for x in (e.stdout, e.stderr) if x).strip()
        sys.exit(f"tf_bench: {' '.join(map(str, e.cmd))} failed ({e.returncode})\n{out}")
    except KeyboardInterrupt:
        ob.stop_all()
        sys.exit("tf_bench: interrupted; every process it started is stopped")
    finally:
        ob.stop_all()

    text = report(run, versions, server_core, client_core)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    ob.log("\n" + text)
    if not args.no_results and (args.write_results or not args.quick):
        ob.write_results(text, Path(args.results))
        ob.log(f"added the section at the top of {args.results}")
    shutil.rmtree(work, ignore_errors=True)
    ob.log(f"done in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
