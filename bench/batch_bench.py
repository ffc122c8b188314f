#!/usr/bin/env python3
"""Benchmark of batch jobs (issue 12): batches per second through the daemon's queue with a
no-op predictor, at 1, 4 and 16 workers, against the same predictor in a plain Python loop.

It starts an isolated daemon from a release binary (temporary GYRUS_HOME, free port on
127.0.0.1), deploys a BatchAPI whose predict() returns None, and submits one job per worker
count: ITEMS items with batch_size 1, so each item is one batch. For each job it polls the
job's status (20 times a second) and reports:

  all up      batches/s while every worker is running (between the first status that shows
              all WORKERS running and the first that shows every batch succeeded): the queue's
              steady rate, without the workers' start-up
  wall        ITEMS / (submit -> final status seen): what a user waits for, start-up included
  start->end  ITEMS / (the job's end_time - start_time): the status API's own times, which
              are whole seconds (coarse for short jobs)

and, over the same "all up" window, the CPU time per batch of the daemon, of the job workers'
Rust replicas and of their Python processes (from /proc), which says where the time goes.

The floor is the same predictor class called in a plain Python loop over the same batches in
this process (predict only); "floor + JSON" also decodes each batch's JSON and encodes the
result, as the worker does. The overhead per batch is gyrus's us per batch (1e6 / batches/s)
minus the floor's.

Usage: python3 bench/batch_bench.py [--gyrus target/release/gyrus] [--items 2000]
       [--workers 1 4 16] [--rounds 3] [--out bench/out/batch.md]
Needs: a release build (cargo build --release -p gyrus-cli) and python3 on PATH for the
workers; GYRUS_UV (default .venv/bin/uv) makes the daemon's Python environment quick to build.
About 30 seconds with the defaults. It stops the daemon it started, and only that one.
"""
import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GYRUS = ROOT / "target" / "release" / "gyrus"
API = "noop"
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.05

PREDICTOR = '''\
class PythonPredictor:
    """A batch predictor that does nothing: what is left is gyrus's own cost per batch."""

    def __init__(self, config, job_spec):
        pass

    def predict(self, payload, batch_id):
        return None
'''


class BenchError(Exception):
    pass


def log(msg):
    print(msg, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------
# processes: CPU time by kind, and stopping what this script started


def proc_table():
    """{pid: (ppid, comm, utime + stime in ticks)} for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), comm, int(fields[11]) + int(fields[12]))
    return table


def descendants(pid, table=None):
    table = table if table is not None else proc_table()
    children = {}
    for p, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(p)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kind(pid, comm, daemon_pid):
    """The daemon itself, a job worker's replica (`gyrus replica`, the same binary), or its
    Python worker process."""
    if pid == daemon_pid:
        return "daemon"
    if comm.startswith("python"):
        return "python"
    # `gyrus replica`, started as /proc/self/exe.
    if comm.startswith("gyrus") or comm == "exe":
        return "replica"
    return "other"


def cpu_snapshot(daemon_pid):
    """CPU seconds used so far by the daemon and its descendants, by kind, per live pid (so
    that a window counts only processes alive at both ends)."""
    table = proc_table()
    snap = {}
    for pid in [daemon_pid, *descendants(daemon_pid, table)]:
        if pid in table:
            _, comm, ticks = table[pid]
            snap[pid] = (kind(pid, comm, daemon_pid), ticks / CLK_TCK)
    return snap


def cpu_update(snap):
    """`snap` with each process's CPU time read again; a process that has exited keeps its
    last reading (a worker may be stopped as soon as the queue is drained)."""
    out = dict(snap)
    for pid, (k, _) in snap.items():
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        out[pid] = (k, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def cpu_between(a, b):
    """CPU seconds by kind between two snapshots (processes present in both)."""
    out = {}
    for pid, (k, t1) in b.items():
        if pid in a and a[pid][0] == k:
            out[k] = out.get(k, 0.0) + t1 - a[pid][1]
    return out


def stop_daemon(gyrus, env, daemon):
    """`gyrus daemon stop`, then whatever is left of the daemon this script started."""
    kids = descendants(daemon.pid) if daemon.poll() is None else []
    try:
        subprocess.run([str(gyrus), "daemon", "stop"], env=env, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.terminate()
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ------------------------------------------------------------------------------------------
# the daemon's HTTP API


class Client:
    """One keep-alive connection to the daemon, with its token."""

    def __init__(self, addr, token):
        host, port = addr.rsplit(":", 1)
        self.host, self.port, self.token = host, int(port), token
        self.conn = None

    def request(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                return r.status, (json.loads(data) if data else None)
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def status(self, job_id):
        code, s = self.request("GET", f"/_gyrus/v1/apis/{API}/jobs/{job_id}")
        if code != 200:
            raise BenchError(f"job status answered {code}: {s}")
        return s


def rfc3339(s):
    """Seconds since the epoch of `2026-12-04T10:11:12Z` (the status API's times)."""
    import calendar

    return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ"))


def run_job(client, daemon_pid, workers, items):
    body = {"workers": workers, "item_list": {"items": list(range(items)), "batch_size": 1}}
    t0 = time.perf_counter()
    code, job = client.request("POST", f"/{API}", body)
    if code != 200:
        raise BenchError(f"submitting a job of {items} items answered {code}: {job}")
    job_id = job["job_id"]
    samples = []  # (t, succeeded, running, initializing)
    snap_start = snap_end = cpu_now = None
    rusage_start = rusage_end = None
    while True:
        s = client.status(job_id)
        t = time.perf_counter() - t0
        m = s["batch_metrics"]
        wc = s.get("worker_counts") or {}
        samples.append((t, m["succeeded"], wc.get("running", 0), wc.get("initializing", 0)))
        all_up = wc.get("running") == workers and wc.get("initializing") == 0
        if snap_start is None and all_up and m["succeeded"] < items:
            snap_start = (t, m["succeeded"], cpu_snapshot(daemon_pid))
            rusage_start = resource.getrusage(resource.RUSAGE_SELF)
            cpu_now = snap_start[2]
        elif snap_start is not None and snap_end is None:
            cpu_now = cpu_update(cpu_now)
            if m["succeeded"] + m["failed"] >= items:
                snap_end = (t, m["succeeded"], cpu_now)
                rusage_end = resource.getrusage(resource.RUSAGE_SELF)
        if s["status"] not in ("enqueuing", "running"):
            break
        if t > 600:
            raise BenchError(f"job {job_id} did not end in 600 s: {json.dumps(s)[:500]}")
        time.sleep(POLL_S)
    wall = time.perf_counter() - t0
    if s["status"] != "succeeded" or m["succeeded"] != items:
        raise BenchError(f"job {job_id} ended {s['status']}: {json.dumps(s)[:800]}")
    first_done = next((t for t, ok, _, _ in samples if ok > 0), None)
    all_done = next((t for t, ok, _, _ in samples if ok >= items), None)
    up = next((t for t, _, r, i in samples if r == workers and i == 0), None)
    out = {
        "job_id": job_id,
        "wall_s": wall,
        "first_batch_s": first_done,
        "all_up_s": up,
        "start_end_s": rfc3339(s["end_time"]) - rfc3339(s["start_time"]),
        # From the first status showing every batch done to the final status: the workers
        # finding the queue drained, on_job_complete(), stopping them.
        "tail_s": wall - all_done if all_done is not None else None,
    }
    if snap_start and snap_end and snap_end[0] > snap_start[0]:
        dt = snap_end[0] - snap_start[0]
        done = snap_end[1] - snap_start[1]
        cpu = cpu_between(snap_start[2], snap_end[2])
        poller = (rusage_end.ru_utime + rusage_end.ru_stime
                  - rusage_start.ru_utime - rusage_start.ru_stime)
        out.update(window_s=dt, window_batches=done, steady_bps=done / dt if done else None,
                   cpu_us={k: v * 1e6 / done for k, v in cpu.items()} if done else {},
                   poller_us=poller * 1e6 / done if done else None)
    return out


# ------------------------------------------------------------------------------------------
# the floor


def floor(project, items, repeat=5):
    """us per batch of the same predictor in a plain loop (predict only, and with JSON)."""
    sys.path.insert(0, str(project))
    try:
        from predictor import PythonPredictor  # noqa: E402
    finally:
        sys.path.pop(0)
    p = PythonPredictor({}, {"job_id": "floor"})
    batches = [(f"floor-{i}", [i]) for i in range(items)]
    bodies = [(bid, json.dumps(payload)) for bid, payload in batches]
    plain, with_json = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        for bid, payload in batches:
            p.predict(payload, bid)
        plain.append((time.perf_counter() - t) / items * 1e6)
        t = time.perf_counter()
        for bid, body in bodies:
            json.dumps(p.predict(json.loads(body), bid))
        with_json.append((time.perf_counter() - t) / items * 1e6)
    return min(plain), min(with_json)


# ------------------------------------------------------------------------------------------


def machine_load(seconds=1.0):
    """(busy %, steal %) of all cores over `seconds`, from /proc/stat. Taken while nothing of
    the benchmark runs: busy is other work on this machine, steal is time the hypervisor gave
    to other machines; either skews the numbers measured around it."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4], fields[7] if len(fields) > 7 else 0

    try:
        t0, idle0, steal0 = sample()
        time.sleep(seconds)
        t1, idle1, steal1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = max(1, t1 - t0)
    return 100.0 * (1 - (idle1 - idle0) / total), 100.0 * (steal1 - steal0) / total


def cpu_model():
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                    if l.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def fmt(x, spec=".0f"):
    return "-" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gyrus", default=str(GYRUS), help="the gyrus binary (default: %(default)s)")
    ap.add_argument("--items", type=int, default=2000, help="items per job, one per batch")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=3, help="jobs per worker count (median)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "batch.md"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary GYRUS_HOME")
    args = ap.parse_args()
    gyrus = Path(args.gyrus).resolve()
    if not gyrus.is_file():
        sys.exit(f"{gyrus} is missing: run cargo build --release -p gyrus-cli")

    work = Path(tempfile.mkdtemp(prefix="gyrus-batch-bench-"))
    home = work / "home"
    project = work / API
    project.mkdir(parents=True)
    (project / "predictor.py").write_text(PREDICTOR)
    (project / "cortex.yaml").write_text(
        f"- name: {API}\n  kind: BatchAPI\n  predictor:\n    type: python\n    path: predictor.py\n")
    addr = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GYRUS_")}
    env.update(GYRUS_HOME=str(home), GYRUS_ADDR=addr, NO_COLOR="1")
    uv = os.environ.get("GYRUS_UV") or str(ROOT / ".venv" / "bin" / "uv")
    if Path(uv).exists():
        env["GYRUS_UV"] = uv

    started = time.time()
    load_before = machine_load()
    home.mkdir()
    daemon_log = open(work / "daemon.log", "wb")
    daemon = subprocess.Popen([str(gyrus), "daemon"], env=env, stdin=subprocess.DEVNULL,
                              stdout=daemon_log, stderr=subprocess.STDOUT, start_new_session=True)
    daemon_log.close()
    results = {}
    try:
        deadline = time.time() + 30
        while not (home / "token").exists() or not ok_health(addr):
            if daemon.poll() is not None or time.time() > deadline:
                raise BenchError("the daemon did not start:\n" + tail(work / "daemon.log"))
            time.sleep(0.1)
        log(f"==> daemon {gyrus} on {addr} (GYRUS_HOME {home})")
        t = time.time()
        r = subprocess.run([str(gyrus), "deploy", str(project), "--timeout", "300s"], env=env,
                           capture_output=True, text=True, timeout=330)
        if r.returncode != 0:
            raise BenchError(f"gyrus deploy failed:\n{r.stdout}\n{r.stderr}\n"
                             + tail(home / "logs" / f"{API}.log"))
        log(f"==> deployed {API} in {time.time() - t:.1f} s")
        client = Client(addr, (home / "token").read_text().strip())
        # Warm-up: a small job (the first worker start also warms the OS's caches).
        run_job(client, daemon.pid, 1, 20)
        for w in args.workers:
            for rnd in range(args.rounds):
                r = run_job(client, daemon.pid, w, args.items)
                results.setdefault(w, []).append(r)
                log(f"workers {w:>2} round {rnd + 1}: all up {fmt(r.get('steady_bps'))} batches/s "
                    f"over {r.get('window_batches', 0)} batches in {r.get('window_s', 0):.2f} s; "
                    f"wall {r['wall_s']:.2f} s (first batch at {fmt(r['first_batch_s'], '.2f')} s,"
                    f" all {w} up at {fmt(r['all_up_s'], '.2f')} s); cpu us/batch "
                    + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.get("cpu_us", {}).items())))
    finally:
        stop_daemon(gyrus, env, daemon)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")

    load_after = machine_load()
    floor_us, floor_json_us = floor_in_subdir(args.items)
    text = report(args, results, floor_us, floor_json_us, time.time() - started,
                  (load_before, load_after))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print("\n" + text)


def floor_in_subdir(items):
    d = Path(tempfile.mkdtemp(prefix="gyrus-batch-floor-"))
    try:
        (d / "predictor.py").write_text(PREDICTOR)
        return floor(d, items)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def ok_health(addr):
    try:
        c = http.client.HTTPConnection(*addr.rsplit(":", 1), timeout=2)
        c.request("GET", "/_gyrus/v1/health")
        return c.getresponse().status == 200
    except OSError:
        return False


def tail(path, n=30):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def report(args, results, floor_us, floor_json_us, took, loads):
    floor_bps = 1e6 / floor_us
    load = "; ".join(
        f"{when} {l[0]:.0f}% busy, {l[1]:.0f}% stolen" if l else f"{when} unknown"
        for when, l in zip(("before", "after"), loads))
    lines = [
        f"Machine: {os.cpu_count()} cores, {cpu_model()}, Linux {platform.release()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Python {platform.python_version()}. "
        f"{args.items} items per job, batch_size 1 (one item per batch), no-op predict(); "
        f"{args.rounds} job(s) per worker count (median); nothing pinned; run took {took:.0f} s.",
        "",
        f"Other work on the machine, 1 s while the benchmark ran nothing: {load}.",
        "",
        "| workers | batches/s (all up) | us per batch (all up) | x floor | overhead per batch (us) "
        "| batches/s (wall) | batches/s (start->end) | first batch (s) | all workers up (s) "
        "| last batch to end (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| floor (plain loop) | {floor_bps:,.0f} | {floor_us:.3f} | 1 | 0 | | | | | |",
        f"| floor + JSON | {1e6 / floor_json_us:,.0f} | {floor_json_us:.3f} | "
        f"{floor_json_us / floor_us:.1f} | {floor_json_us - floor_us:.2f} | | | | | |",
    ]
    for w in args.workers:
        rs = results.get(w, [])
        steady = med(rs, "steady_bps")
        us = 1e6 / steady if steady else None
        wall = med(rs, "wall_s")
        se = med(rs, "start_end_s")
        lines.append(
            f"| {w} | {fmt(steady, ',.0f')} | {fmt(us, '.1f')} | "
            f"{fmt(us / floor_us if us else None, ',.0f')} | "
            f"{fmt(us - floor_us if us else None, '.1f')} | "
            f"{fmt(args.items / wall if wall else None, ',.0f')} | "
            f"{fmt(args.items / se if se else None, ',.0f')} | "
            f"{fmt(med(rs, 'first_batch_s'), '.2f')} | {fmt(med(rs, 'all_up_s'), '.2f')} | "
            f"{fmt(med(rs, 'tail_s'), '.2f')} |")
    kinds = ["daemon", "replica", "python"]
    lines += [
        "",
        "CPU time per batch while every worker is up (from /proc; us of CPU per batch, all "
        "processes of a kind together):",
        "",
        "| workers | batches in window | window (s) | daemon | job workers' replicas (Rust) "
        "| job workers' Python | total | cores busy | this poller |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w in args.workers:
        rs = [r for r in results.get(w, []) if r.get("cpu_us")]
        if not rs:
            lines.append(f"| {w} | - | - | - | - | - | - | - | - |")
            continue
        cpu = {k: statistics.median(r["cpu_us"].get(k, 0.0) for r in rs) for k in kinds}
        total = sum(cpu.values())
        steady = med(rs, "steady_bps")
        lines.append(
            f"| {w} | {med(rs, 'window_batches'):.0f} | {med(rs, 'window_s'):.2f} | "
            + " | ".join(f"{cpu[k]:.0f}" for k in kinds)
            + f" | {total:.0f} | {total * steady / 1e6:.2f} | {med(rs, 'poller_us'):.1f} |")
    lines += [
        "",
        "all up: batches/s between the first status showing every worker running and the first "
        "showing every batch done; us per batch = 1e6 / that; x floor and overhead compare it "
        "with the floor (predict() alone in a Python loop). wall: items / (submit -> final "
        "status), worker start-up and on_job_complete included. start->end: the status API's "
        "times (whole seconds). last batch to end: from the first status showing every batch "
        "done to the final status. cores busy: total CPU per batch x batches/s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"error: {e}")
