"""examples/batch-sum and batch jobs at scale, through the real binary, daemon and workers:
the example deployed as a user would and its job submitted with `gyrus job submit --wait`; a
10,000-item job in which every item is processed exactly once; a worker over its memory limit
(compute.mem) ends the job `worker_oom` with the reason."""

import collections
import json
import time
from pathlib import Path

import pytest

from e2e_helpers import EXAMPLES, copy_example

EXAMPLE_API = "batch-sum"


def job_status(g, api, job_id):
    r = g.control("GET", f"/apis/{api}/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_final(g, api, job_id, timeout):
    """The job's status once it has ended; fails (with the job and its log) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = job_status(g, api, job_id)
        if s["status"] not in ("enqueuing", "running"):
            return s
        time.sleep(0.3)
    raise AssertionError(
        f"job {job_id} did not end within {timeout}s: {json.dumps(job_status(g, api, job_id), indent=1)}\n"
        f"{job_log(g, api, job_id)[-3000:]}"
    )


def job_log(g, api, job_id) -> str:
    p = g.home / "logs" / "jobs" / f"{api}-{job_id}.log"
    return p.read_text(errors="replace") if p.exists() else f"<{p} does not exist>"


def submit(g, api, body):
    r = g.http.post(g.url(api), json=body, headers={"Authorization": f"Bearer {g.token()}"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def submitted_id(stdout: str) -> str:
    assert "submitted job " in stdout, stdout
    return stdout.split("submitted job ", 1)[1].split()[0]


# ------------------------------------------------------------------------------------------
# examples/batch-sum


@pytest.fixture(scope="module")
def batch_sum(gyrus, projects_dir):
    proj = copy_example("batch-sum", projects_dir)
    gyrus.deploy_ok(proj, EXAMPLE_API)
    return gyrus


def example_job(dest: Path) -> dict:
    job = json.loads((EXAMPLES / "batch-sum" / "job.json").read_text())
    job["config"]["dest"] = str(dest)
    return job


def test_the_example_job_sums_every_item_with_the_cli(batch_sum, tmp_path):
    dest = tmp_path / "out" / "sums"  # the predictor makes the folders
    job = example_job(dest)
    items = job["item_list"]["items"]
    expected_total = sum(sum(item) for item in items)
    assert (expected_total, len(items)) == (210, 8), "examples/batch-sum/job.json changed: update the README"
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job))

    proc = batch_sum.run("job", "submit", EXAMPLE_API, str(spec), "--wait", timeout=180)
    assert proc.returncode == 0, batch_sum.diag(EXAMPLE_API, proc=proc)
    assert "status:   succeeded" in proc.stdout, proc.stdout
    job_id = submitted_id(proc.stdout)

    total = json.loads((dest / "total.json").read_text())
    assert total == {"job_id": job_id, "total": 210, "count": 8, "batches": 3}, total
    # One file per batch, written atomically (no temporary file left behind).
    names = sorted(p.name for p in dest.iterdir())
    assert names == [f"{job_id}-{n}.json" for n in range(3)] + ["total.json"], names
    sums = [s for n in range(3) for s in json.loads((dest / f"{job_id}-{n}.json").read_text())["sums"]]
    assert sums == [sum(item) for item in items], sums

    # The same job again into the same folder: on_job_complete() counts this job's batches only.
    again = batch_sum.run("job", "submit", EXAMPLE_API, str(spec), "--wait", timeout=180)
    assert again.returncode == 0, batch_sum.diag(EXAMPLE_API, proc=again)
    second = submitted_id(again.stdout)
    assert second != job_id
    total = json.loads((dest / "total.json").read_text())
    assert total == {"job_id": second, "total": 210, "count": 8, "batches": 3}, total


def test_the_example_fails_a_batch_that_is_not_lists_of_numbers(batch_sum, tmp_path):
    dest = tmp_path / "out"
    body = {"workers": 1, "config": {"dest": str(dest)},
            "item_list": {"items": [[1, 2], [3], "seven", [4]], "batch_size": 2}}
    job = submit(batch_sum, EXAMPLE_API, body)
    s = wait_final(batch_sum, EXAMPLE_API, job["job_id"], timeout=120)
    assert s["status"] == "completed_with_failures", s
    [failed] = s["failed_batches"]
    assert failed["batch_id"] == f"{job['job_id']}-1", failed
    assert "ValueError: item 0 of batch" in failed["error"] and "'seven'" in failed["error"], failed
    total = json.loads((dest / "total.json").read_text())
    assert (total["total"], total["count"], total["batches"]) == (6, 2, 1), total


# ------------------------------------------------------------------------------------------
# 10,000 items: every one processed exactly once

TALLY = r'''
import os

class PythonPredictor:
    def __init__(self, config, job_spec):
        self.out = config["out"]
        os.makedirs(self.out, exist_ok=True)
        # One file per worker process: no two processes ever write to the same file.
        self.file = open(os.path.join(self.out, f"items-{os.getpid()}"), "a")

    def predict(self, payload, batch_id):
        self.file.write("".join(f"{batch_id} {item}\n" for item in payload))
        self.file.flush()

    def on_job_complete(self):
        with open(os.path.join(self.out, "complete"), "a") as f:
            f.write("done\n")
'''


@pytest.fixture(scope="module")
def tally(gyrus, projects_dir):
    proj = projects_dir / "tally"
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "predictor.py").write_text(TALLY)
    (proj / "cortex.yaml").write_text(
        "- name: tally\n  kind: BatchAPI\n  predictor:\n    type: python\n    path: predictor.py\n"
    )
    gyrus.deploy_ok(proj, "tally")
    return gyrus


def test_ten_thousand_items_are_each_processed_exactly_once(tally, tmp_path, capsys):
    out = tmp_path / "out"
    n, batch_size, workers = 10_000, 10, 4
    started = time.monotonic()
    job = submit(tally, "tally", {"workers": workers, "config": {"out": str(out)},
                                  "item_list": {"items": list(range(n)), "batch_size": batch_size}})
    assert job["total_batch_count"] == n // batch_size, job
    s = wait_final(tally, "tally", job["job_id"], timeout=600)
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\n[batch at scale] {n} items, {n // batch_size} batches of {batch_size}, {workers} workers: "
              f"{s['status']} in {elapsed:.1f}s (submit to end; "
              f"avg {(s['batch_metrics']['avg_time_per_batch'] or 0) * 1000:.1f} ms per batch)")
    assert s["status"] == "succeeded", (s, job_log(tally, "tally", job["job_id"])[-3000:])
    assert s["batch_metrics"]["succeeded"] == n // batch_size and s["batch_metrics"]["failed"] == 0, s
    assert s["on_job_complete"]["status"] == "succeeded", s
    assert (out / "complete").read_text() == "done\n"

    files = sorted(out.glob("items-*"))
    assert 1 <= len(files) <= workers, files  # no worker was restarted
    seen = collections.Counter()
    batch_of = {}
    for f in files:
        for line in f.read_text().splitlines():
            batch_id, item = line.split()
            seen[int(item)] += 1
            batch_of[int(item)] = batch_id
    missing = sorted(set(range(n)) - set(seen))
    twice = sorted(i for i, c in seen.items() if c != 1)
    assert not missing and not twice, f"missing: {missing[:20]} ({len(missing)}), more than once: {twice[:20]} ({len(twice)})"
    assert set(seen) == set(range(n))
    # Batches hold consecutive items, in order: item i is in batch i // batch_size.
    assert all(batch_of[i] == f"{job['job_id']}-{i // batch_size}" for i in range(n))


# ------------------------------------------------------------------------------------------
# a worker over its memory limit

HOG = r'''
import os, time

class PythonPredictor:
    def __init__(self, config, job_spec):
        self.out = config["out"]
        self.mib = config.get("mib", 2048)
        self.hold = config.get("hold", 10)
        os.makedirs(self.out, exist_ok=True)

    def predict(self, payload, batch_id):
        with open(os.path.join(self.out, "attempts"), "a") as f:
            f.write(f"{os.getpid()} {batch_id}\n")
        # 64 MiB at a time, every page written, config["mib"] in all (2 GiB unless said), held
        # for config["hold"] seconds: longer than the launcher's 1 s between checks, however
        # fast the allocation. The batch succeeds if nothing enforces the limit.
        chunks = [b"\x01" * (64 << 20) for _ in range(self.mib // 64)]
        time.sleep(self.hold)
        return len(chunks)

    def on_job_complete(self):
        with open(os.path.join(self.out, "complete"), "a") as f:
            f.write("done\n")
'''

MEM_LIMIT = "200Mi"


@pytest.fixture(scope="module")
def hog(gyrus, projects_dir):
    proj = projects_dir / "hog"
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "predictor.py").write_text(HOG)
    (proj / "cortex.yaml").write_text(
        "- name: hog\n  kind: BatchAPI\n  predictor:\n    type: python\n    path: predictor.py\n"
        f"  compute:\n    mem: {MEM_LIMIT}\n"
    )
    gyrus.deploy_ok(proj, "hog")
    return gyrus


def attempts(out: Path) -> list[str]:
    p = out / "attempts"
    return [line.split()[1] for line in p.read_text().splitlines()] if p.exists() else []


def test_a_job_within_its_memory_limit_succeeds(hog, tmp_path):
    """The control for the next test: the limit does not stop a worker that stays under it."""
    out = tmp_path / "out"
    job = submit(hog, "hog", {"workers": 1, "config": {"out": str(out), "mib": 64, "hold": 0},
                              "item_list": {"items": [1, 2], "batch_size": 1}})
    s = wait_final(hog, "hog", job["job_id"], timeout=120)
    assert s["status"] == "succeeded", (s, job_log(hog, "hog", job["job_id"])[-3000:])
    assert len(attempts(out)) == 2


@pytest.mark.parametrize("items", [[1], [1, 2, 3]], ids=["one-batch", "more-batches-than-restarts"])
def test_a_worker_over_its_memory_limit_ends_the_job_worker_oom(hog, tmp_path, items):
    out = tmp_path / "out"
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"workers": 1, "config": {"out": str(out)},
                                "item_list": {"items": items, "batch_size": 1}}))
    started = time.monotonic()
    proc = hog.run("job", "submit", "hog", str(spec), "--wait", timeout=240)
    assert proc.returncode == 1, hog.diag("hog", proc=proc)
    assert "status:   worker_oom" in proc.stdout, hog.diag("hog", proc=proc)
    job_id = submitted_id(proc.stdout)
    log = job_log(hog, "hog", job_id)
    print(f"worker_oom after {time.monotonic() - started:.1f}s")

    # The CLI's JSON and the control API say the same: the status and why.
    status = hog.json("job", "get", "hog", job_id, "-o", "json")
    assert status == {**job_status(hog, "hog", job_id), "worker_counts": status["worker_counts"]}
    assert status["status"] == "worker_oom", (status, log)
    error = status["error"] or ""
    assert error.startswith("out of memory: used "), (error, log)
    assert "of its 200.0 MiB limit (compute.mem)" in error, (error, log)
    # The batch that ran out was tried max_receive_count (1) + 2 times, then failed with the reason.
    first = f"{job_id}-0"
    assert attempts(out).count(first) == 3, (attempts(out), log)
    failed = {f["batch_id"]: f["error"] for f in status["failed_batches"]}
    assert first in failed and "out of memory" in failed[first], (status, log)
    assert status["batch_metrics"]["succeeded"] == 0, status
    assert "out of memory" in log, log
