"""A job's items from files (Cortex's `file_path_lister` and `delimited_files`): local
directories through the CLI (relative paths from the user's directory), an s3:// prefix on a
real S3-compatible server (s3s-fs) read with the submitting shell's credentials, includes and
excludes globs, `?dryRun=true` listing the files, and precise errors for bad files and paths."""

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from e2e_helpers import GYRUS_BIN, write_files
from s3_helpers import S3S_FS, S3Server, s3_env, scrub, with_env

API = "lines"

# Each batch writes its payload, as JSON, to a file named after the batch: the test reads
# back exactly what the workers got.
PREDICTOR = r'''
import json, os

class PythonPredictor:
    def __init__(self, config, job_spec):
        self.out = config["out"]
        os.makedirs(self.out, exist_ok=True)

    def predict(self, payload, batch_id):
        with open(os.path.join(self.out, batch_id + ".json"), "w") as f:
            json.dump(payload, f)
'''


@pytest.fixture(scope="module")
def g(gyrus, projects_dir, tmp_path_factory):
    g = scrub(gyrus, tmp_path_factory.mktemp("batch-user") / "home")
    d = projects_dir / API
    d.mkdir(parents=True, exist_ok=True)
    write_files(d, {
        "predictor.py": PREDICTOR,
        "cortex.yaml": f"- name: {API}\n  kind: BatchAPI\n  predictor:\n    type: python\n    path: predictor.py\n",
    })
    g.deploy_ok(d, API)
    return g


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    if not Path(S3S_FS).is_file():
        pytest.fail(f"s3s-fs is missing (GYRUS_TEST_S3S_FS={S3S_FS}); run scripts/setup-s3s.sh", pytrace=False)
    server = S3Server(tmp_path_factory.mktemp("s3s") / "root")
    yield server
    server.stop()


def submit_cli(g, body: dict, *args: str, cwd: Path, env_extra: dict | None = None):
    """`gyrus job submit lines - ARGS` run in `cwd`, the submission on stdin."""
    return subprocess.run(
        [GYRUS_BIN, "job", "submit", API, "-", *args],
        input=json.dumps(body), cwd=cwd, env={**g.env, **(env_extra or {})},
        capture_output=True, text=True, timeout=120,
    )


def received(out: Path) -> list:
    """Every item the workers got, in batch order."""
    files = sorted(out.glob("*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [item for f in files for item in json.loads(f.read_text())]


def wait_final(g, job_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = g.control("GET", f"/apis/{API}/jobs/{job_id}").json()
        if s["status"] not in ("enqueuing", "running"):
            return s
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end\n{g.api_log(API)}")


def test_delimited_files_from_a_relative_local_directory(g, tmp_path):
    data = tmp_path / "work" / "data"
    write_files(data, {
        "a.jsonl": '[1, 2]\n{"x": 3}\n\n',
        "sub/b.jsonl": '"four"\n5\n',
        "skip-me.jsonl": "6\n",
        "notes.txt": "not json\n",
    })
    out = tmp_path / "out"
    body = {"workers": 2, "config": {"out": str(out)},
            "delimited_files": {"s3_paths": ["data/"], "includes": ["*.jsonl"],
                                "excludes": ["skip-*"], "batch_size": 2}}
    dry = submit_cli(g, body, "--dry-run", cwd=tmp_path / "work")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        str(data / "a.jsonl"), str(data / "sub" / "b.jsonl"),
        "would run 2 batch(es) of up to 2 item(s) (4 items)",
    ], dry.stdout
    assert not out.exists(), "a dry run runs nothing"

    proc = submit_cli(g, body, "--wait", cwd=tmp_path / "work")
    assert proc.returncode == 0, (proc.stdout, proc.stderr, g.api_log(API))
    assert received(out) == [[1, 2], {"x": 3}, "four", 5]
    assert proc.stdout.startswith("submitted job "), proc.stdout
    job_id = proc.stdout.split()[2]
    spec = g.control("GET", f"/apis/{API}/jobs/{job_id}").json()
    assert spec["status"] == "succeeded", spec
    # The job keeps where its items came from, with the path made absolute by the CLI.
    assert spec["delimited_files"]["s3_paths"] == [f"{tmp_path / 'work' / 'data'}/"], spec


def test_file_path_lister_gives_each_file_path(g, tmp_path):
    data = tmp_path / "images"
    write_files(data, {"1.jpg": "a", "2.png": "b", "deep/3.jpg": "c"})
    out = tmp_path / "out"
    r = g.http.post(g.url(API), headers={"Authorization": f"Bearer {g.token()}"}, timeout=60, json={
        "workers": 1, "config": {"out": str(out)},
        "file_path_lister": {"s3_paths": [f"file://{data}"], "includes": ["**/*.jpg"], "batch_size": 5}})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["file_path_lister"]["item_count"] == 2, job
    assert wait_final(g, job["job_id"])["status"] == "succeeded"
    assert received(out) == [str(data / "1.jpg"), str(data / "deep" / "3.jpg")]


def test_delimited_files_from_an_s3_prefix_with_the_submitters_credentials(g, s3, tmp_path):
    bucket = s3.bucket(f"jobs-{uuid.uuid4().hex[:12]}")
    s3.put(bucket, "in/part-0.jsonl", b"".join(b"%d\n" % i for i in range(0, 25)))
    s3.put(bucket, "in/part-1.jsonl", b"".join(b"%d\n" % i for i in range(25, 40)))
    s3.put(bucket, "in/_SUCCESS", b"")
    s3.put(bucket, "other/part-9.jsonl", b"999\n")
    out = tmp_path / "out"
    body = {"workers": 2, "config": {"out": str(out)},
            "delimited_files": {"s3_paths": [f"s3://{bucket}/in/"], "includes": ["*.jsonl"], "batch_size": 10}}

    # Without credentials the daemon says so, naming the path; nothing runs.
    bare = submit_cli(g, body, cwd=tmp_path, env_extra={"AWS_ENDPOINT_URL": s3.endpoint})
    assert bare.returncode == 1
    assert "delimited_files.s3_paths[0]: no credentials to fetch s3://" in bare.stderr, bare.stderr

    env_g = with_env(g, **s3_env(s3.endpoint))
    proc = submit_cli(env_g, body, "--wait", cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout, proc.stderr, g.api_log(API))
    assert sorted(received(out)) == list(range(40))
    assert len(list(out.glob("*.json"))) == 4

    # file_path_lister hands over the objects' URLs.
    out2 = tmp_path / "out2"
    lister = {"workers": 1, "config": {"out": str(out2)},
              "file_path_lister": {"s3_paths": [f"s3://{bucket}/"], "excludes": ["*_SUCCESS"], "batch_size": 10}}
    proc = submit_cli(env_g, lister, "--wait", cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert received(out2) == [f"s3://{bucket}/in/part-0.jsonl", f"s3://{bucket}/in/part-1.jsonl",
                              f"s3://{bucket}/other/part-9.jsonl"]


def test_bad_files_and_paths_are_named(g, tmp_path):
    write_files(tmp_path / "d", {"ok.jsonl": "1\n", "bad.jsonl": "2\n{oops\n"})
    jobs_before = len(g.control("GET", f"/apis/{API}/jobs").json()["jobs"])
    headers = {"Authorization": f"Bearer {g.token()}"}

    def post(source: dict):
        return g.http.post(g.url(API), headers=headers, timeout=60,
                           json={"workers": 1, "delimited_files": {"batch_size": 1, **source}})

    r = post({"s3_paths": [str(tmp_path / "d")]})
    assert r.status_code == 400, r.text
    assert f"{tmp_path / 'd' / 'bad.jsonl'}:2: not a line of JSON" in r.json()["error"], r.text
    r = post({"s3_paths": ["d/"]})
    assert r.status_code == 400 and "is a relative path" in r.text, r.text
    r = post({"s3_paths": [str(tmp_path / "nope")]})
    assert r.status_code == 400 and "delimited_files.s3_paths[0]: cannot read" in r.text, r.text
    r = post({"s3_paths": [str(tmp_path / "d")], "includes": ["*.csv"]})
    assert r.status_code == 400 and "has no files that match includes/excludes" in r.text, r.text
    r = post({"s3_paths": [str(tmp_path / "d")], "includes": ["[x"]})
    assert r.status_code == 400 and "is not a glob pattern" in r.text, r.text
    # None of them was recorded as a job.
    assert len(g.control("GET", f"/apis/{API}/jobs").json()["jobs"]) == jobs_before


def test_gyrus_get_shows_a_batch_api_with_its_jobs(g, tmp_path):
    write_files(tmp_path / "d", {"x.jsonl": "1\n2\n3\n"})
    proc = submit_cli(g, {"workers": 1, "config": {"out": str(tmp_path / "out")},
                          "delimited_files": {"s3_paths": ["d"], "batch_size": 2}}, "--wait", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split()[2]
    info = json.loads(g.ok("get", API, "-o", "json").stdout)
    assert info["kind"] == "BatchAPI" and info["replicas"]["requested"] == 0, info
    assert info["jobs"]["running"] == 0 and info["jobs"]["workers_running"] == 0, info
    newest = info["jobs"]["recent"][0]
    assert newest["job_id"] == job_id and newest["status"] == "succeeded", info
    assert (newest["succeeded"], newest["total_batch_count"]) == (2, 2), newest
    table = g.ok("get", API).stdout
    assert "0 worker(s)" in table and "BATCHES DONE" in table, table
    row = next(line for line in table.splitlines() if line.startswith(job_id))
    assert row.split()[1:3] == ["succeeded", "2/2"], table
    assert "batch API, 0 job(s) running" in g.ok("get").stdout
