"""API logs (issue 17): a timestamp on every line (the daemon's, the replica's, and what the
predictor prints), rotation by size (`GYRUS_LOG_MAX_BYTES`) while replicas keep writing, and
`gyrus logs --tail` after a rotation.
"""

import re

import pytest

from conftest import new_gyrus
from e2e_helpers import wait_until

CHATTY = """
import sys


class PythonPredictor:
    def __init__(self, config):
        print("constructed")

    def predict(self, payload):
        for i in range(payload.get("lines", 1)):
            print(f"line {i} " + "x" * 90)
        sys.stdout.writelines(["by writelines 1\\n", "by writelines 2\\n"])
        print("to stderr, in two writes: ", end="", file=sys.stderr)
        print("done", file=sys.stderr)
        return "ok"
"""

STAMPED = re.compile(r"^(\[gyrus \d{4}-\d\d-\d\dT|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z )")


@pytest.fixture(scope="module")
def small_logs(tmp_path_factory):
    g = new_gyrus(tmp_path_factory, "small-logs")
    g.env.update(GYRUS_LOG_MAX_BYTES="20000", GYRUS_LOG_CHECK_INTERVAL="200ms")
    yield g
    g.teardown()


def test_every_line_has_its_time(small_logs, project):
    g = small_logs
    g.deploy_ok(project("chatty", CHATTY), "chatty")
    assert g.post("/chatty", json={"lines": 3}).text == "ok"
    wait_until(lambda: "done" in g.api_log("chatty"), 10, what="the predictor's lines")
    lines = [line for line in g.api_log("chatty").splitlines() if line.strip()]
    unstamped = [line for line in lines if not STAMPED.match(line)]
    assert not unstamped, unstamped
    # A line printed in two writes gets one time, at its start.
    assert any(line.endswith("Z to stderr, in two writes: done") for line in lines), lines[-5:]
    assert sum(1 for line in lines if line.endswith("Z by writelines 1") or line.endswith("Z by writelines 2")) == 2


def test_logs_rotate_by_size_and_writers_go_on(small_logs):
    g = small_logs
    log = g.home / "logs" / "chatty.log"
    for _ in range(5):
        assert g.post("/chatty", json={"lines": 100}).status_code == 200
    wait_until(lambda: (g.home / "logs" / "chatty.log.1").exists(), 15, what="chatty.log.1")
    assert (g.home / "logs" / "chatty.log.1").stat().st_size > 20000
    # The replica and its worker keep writing into the emptied file.
    assert g.post("/chatty", json={"lines": 2, "marker": 1}).status_code == 200
    wait_until(lambda: "line 1 x" in log.read_text(errors="replace"), 10, what="new lines after rotation")
    assert log.stat().st_size < 20000 + 10000
    tail = g.ok("logs", "chatty", "--tail", "2").stdout.splitlines()
    assert len(tail) == 2 and tail[-1].endswith("done"), tail
