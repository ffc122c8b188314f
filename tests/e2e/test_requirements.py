"""requirements.txt: installed into an environment cached by content; a failed install is an
API error with the installer's message, never a hang."""

import time

import pytest

from e2e_helpers import INSTALL_TIMEOUT

TOMLI_PREDICTOR = """
import tomli_w


class PythonPredictor:
    def __init__(self, config):
        self.dumps = tomli_w.dumps

    def predict(self, payload):
        return self.dumps(payload)
"""

REQUIREMENTS = "tomli-w==1.0.0\n"
MISSING = "gyrus-no-such-package-xyz"


def installer_lines(log: str) -> list[str]:
    """The installer command lines the daemon writes to an API log ("$ uv ...")."""
    return [line for line in log.splitlines() if line.startswith("$ ")]


def env_dirs(g):
    root = g.home / "envs"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def first(gyrus, project):
    proj = project("toml-one", TOMLI_PREDICTOR, files={"requirements.txt": REQUIREMENTS})
    gyrus.deploy_ok(proj, "toml-one", timeout=INSTALL_TIMEOUT)
    return gyrus


def test_requirements_are_installed(first):
    r = first.post("/toml-one", json={"title": "gyrus", "n": 1})
    assert r.status_code == 200, first.diag("toml-one", resp=r)
    assert r.text == 'title = "gyrus"\nn = 1\n', first.diag("toml-one", resp=r)
    lines = installer_lines(first.api_log("toml-one"))
    assert lines, first.diag("toml-one")
    assert any("requirements.txt" in line for line in lines), lines
    assert len(env_dirs(first)) == 1, env_dirs(first)


def test_same_requirements_reuse_the_environment(first, project):
    g = first
    before = env_dirs(g)
    proj = project("toml-two", TOMLI_PREDICTOR, files={"requirements.txt": REQUIREMENTS})
    t0 = time.monotonic()
    g.deploy_ok(proj, "toml-two", timeout=INSTALL_TIMEOUT)
    elapsed = time.monotonic() - t0
    assert installer_lines(g.api_log("toml-two")) == [], g.diag("toml-two")
    assert env_dirs(g) == before, (before, env_dirs(g))
    r = g.post("/toml-two", json={"x": True})
    assert r.status_code == 200 and r.text == "x = true\n", g.diag("toml-two", resp=r)
    print(f"second deploy with cached requirements took {elapsed:.1f}s")


def test_redeploying_installs_nothing(first, project):
    """Editing the predictor of the first API: new generation, same cached environment."""
    g = first
    n_before = len(installer_lines(g.api_log("toml-one")))
    proj = project("toml-one", TOMLI_PREDICTOR + "\n# edited\n", files={"requirements.txt": REQUIREMENTS})
    proc = g.deploy_ok(proj, "toml-one", timeout=INSTALL_TIMEOUT)
    assert "toml-one: updated" in proc.stderr, g.diag("toml-one", proc=proc)
    assert len(installer_lines(g.api_log("toml-one"))) == n_before, g.diag("toml-one")


def test_failed_install_is_an_error_with_the_message(gyrus, project):
    proj = project(
        "no-such-package",
        "class PythonPredictor:\n    def __init__(self, config):\n        pass\n\n"
        "    def predict(self, payload):\n        return 1\n",
        files={"requirements.txt": f"{MISSING}==9.9.9\n"},
    )
    t0 = time.monotonic()
    proc = gyrus.deploy(proj, timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, gyrus.diag("no-such-package", proc=proc)
    assert "error: no-such-package failed:" in proc.stderr, gyrus.diag("no-such-package", proc=proc)
    assert MISSING in proc.stderr, gyrus.diag("no-such-package", proc=proc)
    assert "gave up waiting" not in proc.stderr, gyrus.diag("no-such-package", proc=proc)
    info = gyrus.get("no-such-package")
    assert info["status"] == "error", info
    assert MISSING in info["error"], info
    assert MISSING in gyrus.cli_logs("no-such-package")
    print(f"failed install reported after {elapsed:.1f}s")
    # No replica could start: the endpoint exists but has nothing to serve it.
    r = gyrus.post("/no-such-package", json={})
    assert r.status_code == 503, gyrus.diag("no-such-package", resp=r)
