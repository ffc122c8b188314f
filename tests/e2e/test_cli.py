"""The CLI without deploying anything heavy: help, `gyrus validate` (the invalid-configs table
and the defaults of the resolved spec), and errors of commands that need a daemon."""

import json
import re
import shutil

import pytest

from e2e_helpers import EXAMPLES, INVALID_CONFIGS, Gyrus, copy_example

# --- gyrus validate: the invalid-configs table ---------------------------------------------


def invalid_cases():
    if not INVALID_CONFIGS.is_dir():
        return []
    return sorted(p for p in INVALID_CONFIGS.iterdir() if p.is_dir() and (p / "expected.txt").is_file())


@pytest.mark.parametrize("case", invalid_cases(), ids=lambda p: p.name)
def test_invalid_config_is_rejected_with_the_expected_error(gyrus, case):
    expected = "error: " + (case / "expected.txt").read_text().rstrip()
    proc = gyrus.run("validate", str(case))
    assert proc.returncode == 1, gyrus.diag(proc=proc)
    assert proc.stderr.rstrip() == expected, (
        f"case {case.name}\n--- expected stderr ---\n{expected}\n--- actual stderr ---\n{proc.stderr.rstrip()}"
    )
    assert proc.stdout == "", gyrus.diag(proc=proc)


def test_invalid_configs_table_is_not_empty():
    """Guards against the parametrized test above silently running zero cases."""
    assert invalid_cases(), f"no cases (folders with expected.txt) under {INVALID_CONFIGS}"


# --- gyrus validate: the resolved spec -----------------------------------------------------

DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def seconds(text):
    """Seconds in a duration like "60s", "1m", "1h30m", "0s" (or 0)."""
    if text in (0, "0"):
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


@pytest.fixture(scope="module")
def hello_spec(gyrus):
    proc = gyrus.run("validate", str(EXAMPLES / "hello"), "-o", "json")
    assert proc.returncode == 0, gyrus.diag(proc=proc)
    specs = json.loads(proc.stdout)
    assert isinstance(specs, list) and len(specs) == 1, proc.stdout
    return specs[0]


def test_validate_json_fills_every_default(hello_spec):
    s = hello_spec
    assert s["name"] == "hello"
    assert s["kind"] == "RealtimeAPI"
    assert s["endpoint"] == "/hello"
    p = s["predictor"]
    assert p["type"] == "python" and p["path"] == "predictor.py", p
    assert p["config"] == {"greeting": "hello"}, p
    assert p["env"] == {}, p
    assert s["compute"]["cpu"] == "200m", s["compute"]
    assert s["compute"]["gpu"] == 0, s["compute"]
    a = s["autoscaling"]
    assert a["min_replicas"] == 1, a
    assert a["max_replicas"] == 100, a
    assert a["init_replicas"] == 1, a
    assert a["workers_per_replica"] == 1, a
    assert a["threads_per_worker"] == 1, a
    assert a["target_replica_concurrency"] == 1, a
    assert a["max_replica_concurrency"] == 1024, a
    assert a["max_downscale_factor"] == 0.5, a
    assert a["max_upscale_factor"] == 10, a
    assert a["downscale_tolerance"] == 0.1, a
    assert a["upscale_tolerance"] == 0.1, a
    u = s["update_strategy"]
    assert u["max_surge"] == "25%" and u["max_unavailable"] == "25%", u


@pytest.mark.parametrize(
    "field, secs",
    [("window", 60), ("downscale_stabilization_period", 300), ("upscale_stabilization_period", 0)],
)
def test_validate_json_duration_defaults(hello_spec, field, secs):
    value = hello_spec["autoscaling"][field]
    assert isinstance(value, str), value
    assert seconds(value) == secs, f"{field} = {value!r}"


def test_validate_json_window_is_written_as_documented(hello_spec):
    """The seeds document the default as `60s`; the brief asks for exactly that text."""
    assert hello_spec["autoscaling"]["window"] == "60s"


def test_validate_yaml_is_the_default_output(gyrus):
    proc = gyrus.run("validate", str(EXAMPLES / "hello"))
    assert proc.returncode == 0, gyrus.diag(proc=proc)
    assert "max_replica_concurrency: 1024" in proc.stdout, proc.stdout
    assert "name: hello" in proc.stdout, proc.stdout


def test_validate_legacy_format(gyrus):
    proc = gyrus.run("validate", str(EXAMPLES / "legacy-function"), "-o", "json")
    assert proc.returncode == 0, gyrus.diag(proc=proc)
    specs = json.loads(proc.stdout)
    assert len(specs) == 1, specs
    assert specs[0]["endpoint"] == "/iris/classifier", specs
    assert specs[0]["format"] == "legacy", specs
    assert specs[0]["predictor"]["config"]["labels"][0] == "iris-setosa", specs


def test_validate_in_the_current_folder_and_with_f(gyrus, tmp_path):
    proj = copy_example("hello", tmp_path)
    shutil.move(proj / "cortex.yaml", proj / "other.yaml")
    proc = gyrus.run("validate", str(proj))
    assert proc.returncode == 1, gyrus.diag(proc=proc)
    assert "no cortex.yaml or gyrus.yaml" in proc.stderr, gyrus.diag(proc=proc)
    proc = gyrus.run("validate", str(proj), "-f", "other.yaml", "-o", "json")
    assert proc.returncode == 0, gyrus.diag(proc=proc)
    assert json.loads(proc.stdout)[0]["name"] == "hello"


# --- help and commands that need a daemon --------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["deploy", "--help"], ["get", "--help"], ["daemon", "--help"]])
def test_help_exits_0(gyrus, args):
    proc = gyrus.run(*args)
    assert proc.returncode == 0, gyrus.diag(proc=proc)
    assert "Usage" in proc.stdout, proc.stdout


def test_help_lists_the_commands(gyrus):
    out = gyrus.run("--help").stdout
    for cmd in ["deploy", "get", "describe", "logs", "delete", "refresh", "predict", "validate", "daemon"]:
        assert re.search(rf"^\s+{cmd}\b", out, re.M), f"{cmd} missing from --help:\n{out}"


def test_unknown_command_exits_non_zero(gyrus):
    proc = gyrus.run("no-such-command")
    assert proc.returncode != 0, gyrus.diag(proc=proc)
    assert "no-such-command" in proc.stderr, gyrus.diag(proc=proc)


@pytest.mark.parametrize(
    "args",
    [["get"], ["get", "-o", "json"], ["describe", "x"], ["logs", "x"], ["delete", "x"], ["predict", "x", "{}"]],
)
def test_commands_without_a_daemon_say_so(gyrus, args):
    proc = gyrus.run(*args)
    assert proc.returncode == 1, gyrus.diag(proc=proc)
    assert "no gyrus daemon is running" in proc.stderr, gyrus.diag(proc=proc)
    assert gyrus.addr in proc.stderr, gyrus.diag(proc=proc)
    # A read command must not start a daemon.
    assert gyrus.health() is None


def test_version(gyrus):
    proc = gyrus.run("version", "-o", "json")
    assert proc.returncode == 0, gyrus.diag(proc=proc)
    v = json.loads(proc.stdout)
    assert v["cli"] and v["daemon"] is None, v


@pytest.fixture(scope="module")
def running(gyrus):
    gyrus.start_daemon()
    return gyrus


def test_get_unknown_api_exits_1_with_a_clear_message(running):
    proc = running.run("get", "nosuch")
    assert proc.returncode == 1, running.diag(proc=proc)
    assert proc.stderr.startswith("error: "), running.diag(proc=proc)
    assert "nosuch" in proc.stderr and "not deployed" in proc.stderr, running.diag(proc=proc)


@pytest.mark.parametrize("args", [["describe", "nosuch"], ["logs", "nosuch"], ["delete", "nosuch"], ["refresh", "nosuch"], ["predict", "nosuch", "{}"]])
def test_other_commands_on_an_unknown_api(running, args):
    proc = running.run(*args)
    assert proc.returncode == 1, running.diag(proc=proc)
    assert "nosuch" in proc.stderr, running.diag(proc=proc)


def test_get_with_nothing_deployed(running):
    assert running.json("get", "-o", "json") == []
    proc = running.ok("get")
    assert "no APIs are deployed" in proc.stdout, running.diag(proc=proc)


def test_daemon_status_when_running(running):
    status = running.json("daemon", "status", "-o", "json")
    assert status["home"] == str(running.home), status
    assert status["addr"] == running.addr, status
    assert isinstance(status["pid"], int), status


def test_deploy_of_an_invalid_config_fails_before_starting_anything(running, tmp_path):
    (tmp_path / "cortex.yaml").write_text("- name: Bad Name!\n  predictor:\n    type: python\n    path: predictor.py\n")
    (tmp_path / "predictor.py").write_text("def predict(payload):\n    return 1\n")
    proc = running.run("deploy", str(tmp_path))
    assert proc.returncode == 1, running.diag(proc=proc)
    assert proc.stderr.startswith("error: cortex.yaml:"), running.diag(proc=proc)
    assert running.json("get", "-o", "json") == []


def test_deploy_of_a_folder_without_config(running, tmp_path):
    proc = running.run("deploy", str(tmp_path))
    assert proc.returncode == 1, running.diag(proc=proc)
    assert "no cortex.yaml or gyrus.yaml" in proc.stderr, running.diag(proc=proc)


def test_deploy_refuses_a_daemon_of_another_home(running, tmp_path):
    """Same GYRUS_ADDR, different GYRUS_HOME: deploy must not use the other home's daemon."""
    other = Gyrus(tmp_path / "other-home", port=running.port)
    proc = other.run("deploy", str(EXAMPLES / "hello"))
    assert proc.returncode == 1, other.diag(proc=proc)
    # The other daemon does not take this home's token (and does not tell where its home is).
    assert "GYRUS_HOME" in proc.stderr and "does not accept the token" in proc.stderr, other.diag(proc=proc)
    assert running.json("get", "-o", "json") == []


def test_second_daemon_on_the_same_home_refuses_to_start(running, tmp_path):
    """One daemon per GYRUS_HOME, even on another address."""
    other = Gyrus(running.home)  # same home, another free port
    proc = other.run("daemon", timeout=30)
    assert proc.returncode == 1, other.diag(proc=proc)
    assert "already running" in proc.stderr, other.diag(proc=proc)
    assert running.health() is not None
