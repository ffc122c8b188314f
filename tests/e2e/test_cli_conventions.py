"""One CLI convention (issue 17): -o table|json|yaml on read commands (JSON lines for logs),
exit codes that mean something, did-you-mean for API and model names, `get --watch`, read
commands that never start a daemon and refuse another home's, no panic on a closed pipe, and an
example in every --help.
"""

import json
import subprocess
import time

import pytest
import yaml

from conftest import new_gyrus
from e2e_helpers import GYRUS_BIN, wait_until

HELLO = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"hello": payload.get("name", "world")}
"""


@pytest.fixture(scope="module")
def hello(gyrus, project):
    gyrus.deploy_ok(project("hello", HELLO), "hello")
    gyrus.deploy_ok(project("hello-two", HELLO), "hello-two")
    return gyrus


def test_read_commands_speak_json_and_yaml(hello):
    g = hello
    as_json = g.json("get", "hello", "-o", "json")
    as_yaml = yaml.safe_load(g.ok("get", "hello", "-o", "yaml").stdout)
    assert as_yaml["name"] == as_json["name"] == "hello"
    assert as_yaml["status"] == "live" and as_yaml["replicas"] == as_json["replicas"]
    listed = yaml.safe_load(g.ok("get", "-o", "yaml").stdout)
    assert {a["name"] for a in listed} >= {"hello", "hello-two"}
    described = yaml.safe_load(g.ok("describe", "hello", "-o", "yaml").stdout)
    assert described["replica_details"][0]["state"] == "ready"
    answer = g.json("predict", "hello", '{"name": "cli"}', "-o", "json")
    assert answer["status"] == 200 and answer["body"] == {"hello": "cli"}
    assert len(answer["request_id"]) == 16
    lines = g.ok("logs", "hello", "-o", "json").stdout.splitlines()
    assert lines and all(json.loads(line)["api"] == "hello" for line in lines)
    models = yaml.safe_load(g.ok("models", "list", "-o", "yaml").stdout)
    assert models in ([], None)


def test_names_that_do_not_exist(hello):
    g = hello
    proc = g.run("get", "helo")
    assert proc.returncode != 0
    assert 'api "helo" is not deployed; did you mean "hello"?' in proc.stderr, proc.stderr
    # Every named API is processed; the exit code says one was missing.
    g.deploy_ok(g_project(g, "doomed"), "doomed")
    proc = g.run("delete", "nope", "doomed")
    assert proc.returncode != 0, proc.stderr
    assert "deleted doomed" in proc.stdout
    assert 'api "nope" is not deployed' in proc.stderr and "not deleted: nope" in proc.stderr
    assert g.run("get", "doomed").returncode != 0
    proc = g.run("models", "get", "irsi")
    assert proc.returncode != 0 and "is not in the store" in proc.stderr


def g_project(g, name):
    from e2e_helpers import make_project

    return make_project(g.home.parent / "projects", name, HELLO)


def test_a_closed_pipe_ends_quietly(hello):
    g = hello
    proc = subprocess.run(
        f"'{GYRUS_BIN}' get -o json | head -c 5",
        shell=True,
        env=g.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout == "[\n  {", proc.stdout
    assert "panicked" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr


def test_get_watch_prints_changes(hello, project):
    g = hello
    watch = subprocess.Popen(
        [GYRUS_BIN, "get", "--watch", "-o", "json"],
        env=g.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(watch.stdout.readline())
        assert "watched" not in {a["name"] for a in first}
        g.deploy_ok(project("watched", HELLO), "watched")
        # Each change is one more line: the new API appears, then goes live.
        deadline = time.time() + 60
        seen = []
        while time.time() < deadline:
            line = json.loads(watch.stdout.readline())
            seen.append({a["name"]: a["status"] for a in line})
            if seen[-1].get("watched") == "live":
                break
        assert seen and seen[-1].get("watched") == "live", seen
    finally:
        watch.terminate()
        watch.wait(timeout=10)
    g.ok("delete", "watched")


def test_read_commands_never_start_a_daemon(tmp_path_factory):
    g = new_gyrus(tmp_path_factory, "no-daemon")
    try:
        status = g.run("daemon", "status")
        assert status.returncode == 3 and "not running" in status.stdout
        for args in (("get",), ("models", "list"), ("describe", "x"), ("logs", "x")):
            proc = g.run(*args)
            assert proc.returncode != 0 and "no gyrus daemon is running" in proc.stderr, (args, proc.stderr)
        assert g.health() is None, "a read command started a daemon"
    finally:
        g.teardown()


def test_another_homes_daemon_is_refused(hello, tmp_path_factory):
    g = hello
    other = new_gyrus(tmp_path_factory, "other-home")
    other.port, other.addr, other.base_url = g.port, g.addr, g.base_url
    other.env = dict(other.env, GYRUS_ADDR=g.addr)
    # The other home has no token of its own: give it this daemon's, as a copied file would.
    other.home.mkdir(parents=True, exist_ok=True)
    (other.home / "token").write_text(g.token())
    (other.home / "token").chmod(0o600)
    proc = other.run("get")
    assert proc.returncode != 0
    assert "uses GYRUS_HOME=" in proc.stderr and str(g.home) in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        "deploy", "get", "describe", "logs", "dashboard", "delete", "refresh", "predict", "validate",
        "daemon", "daemon status", "version", "completion", "models", "models save", "models list",
        "models get", "job", "job submit", "job get", "job list",
    ],
)
def test_every_help_has_an_example(command):
    proc = subprocess.run([GYRUS_BIN, *command.split(), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and ("Examples:" in proc.stdout or "Example:" in proc.stdout), proc.stdout


def test_validate_yaml_reads_back_with_pyyaml(gyrus, projects_dir):
    """`validate -o yaml` is serde-saphyr's YAML: strings a YAML 1.1 reader would take for
    booleans, numbers, dates or null are quoted, so PyYAML reads back exactly the JSON form."""
    d = projects_dir / "tricky-yaml"
    d.mkdir()
    (d / "p.py").write_text(HELLO)
    tricky = ["yes", "on", "off", "y", "0x10", "1e3", "012", "null", "~", "2026-12-05", "12:30", "a: b", "#c", "- x", ""]
    config = {f"k{i}": t for i, t in enumerate(tricky)}
    (d / "cortex.yaml").write_text(
        json.dumps([{"name": "tricky", "predictor": {"type": "python", "path": "p.py", "config": config}}])
    )
    as_json = json.loads(gyrus.ok("validate", str(d), "-o", "json").stdout)
    as_yaml = yaml.safe_load(gyrus.ok("validate", str(d), "-o", "yaml").stdout)
    assert as_yaml == as_json, (as_yaml, as_json)
    assert as_yaml[0]["predictor"]["config"] == config


def test_tables_say_which_daemon_and_home_they_read(hello):
    g = hello
    for args in (("get",), ("describe", "hello"), ("models", "list")):
        proc = g.ok(*args)
        assert f"daemon {g.addr} · GYRUS_HOME={g.home}" in proc.stderr, (args, proc.stderr)
        assert "GYRUS_HOME" not in proc.stdout, proc.stdout
    # Machine-readable output has nothing else on either stream.
    proc = g.ok("get", "-o", "json")
    assert proc.stderr == "", proc.stderr


def test_get_watch_yaml_is_a_stream_of_documents(hello, project, tmp_path):
    g = hello
    out = tmp_path / "watch.yaml"
    with open(out, "w") as f:
        watch = subprocess.Popen([GYRUS_BIN, "get", "--watch", "-o", "yaml"], env=g.env, stdout=f, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: out.read_text().startswith("---"), 15, what="the first document")
        g.deploy_ok(project("watched-yaml", HELLO), "watched-yaml")

        def live_in_last():
            try:
                docs = [d for d in yaml.safe_load_all(out.read_text()) if d is not None]
            except yaml.YAMLError:  # a document half written
                return False
            return len(docs) >= 2 and {a["name"]: a["status"] for a in docs[-1]}.get("watched-yaml") == "live"

        wait_until(live_in_last, 30, what=lambda: out.read_text()[-2000:])
    finally:
        watch.terminate()
        watch.wait(timeout=10)
    g.ok("delete", "watched-yaml")
