"""The examples of the repository, deployed as a user would: examples/legacy-function (the older
`kind: api` format with a function predictor) and examples/iris-python (scikit-learn, installed
from requirements.txt)."""

import json
import subprocess
import sys

import pytest

from e2e_helpers import EXAMPLES, INSTALL_TIMEOUT, REPO, copy_example

SETOSA = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.5, "petal_width": 0.3}


def deploy_json(g, proj, timeout):
    proc = g.deploy(proj, "-o", "json", timeout=timeout)
    assert proc.returncode == 0, g.diag(proc=proc)
    try:
        infos = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"deploy -o json did not print JSON\n{g.diag(proc=proc)}") from None
    assert isinstance(infos, list) and infos, proc.stdout
    return infos


@pytest.fixture(scope="module")
def legacy(gyrus, projects_dir):
    infos = deploy_json(gyrus, copy_example("legacy-function", projects_dir), timeout=90)
    return {"gyrus": gyrus, "infos": infos}


def test_legacy_deploy_json_output(legacy):
    infos = legacy["infos"]
    assert len(infos) == 1, infos
    info = infos[0]
    assert info["status"] == "live", info
    assert info["endpoint"] == "/iris/classifier", info
    assert info["url"] == f"{legacy['gyrus'].base_url}/iris/classifier", info
    assert info["replicas"]["ready"] == info["replicas"]["requested"] >= 1, info


@pytest.mark.parametrize(
    "petal_length, label",
    [(1.5, "iris-setosa"), (4.0, "iris-versicolor"), (5.5, "iris-virginica")],
)
def test_legacy_function_predictor(legacy, petal_length, label):
    g = legacy["gyrus"]
    r = g.post("/iris/classifier", json={"petal_length": petal_length})
    assert r.status_code == 200, g.diag(resp=r)
    assert r.headers["content-type"].startswith("text/plain"), g.diag(resp=r)
    assert r.text == label, g.diag(resp=r)


@pytest.fixture(scope="module")
def iris_model():
    """examples/iris-python/model.joblib (scripts/test.sh trains it; train it if missing)."""
    model = EXAMPLES / "iris-python" / "model.joblib"
    if not model.exists():
        venv_python = REPO / ".venv" / "bin" / "python"
        python = str(venv_python) if venv_python.exists() else sys.executable
        proc = subprocess.run(
            [python, str(EXAMPLES / "iris-python" / "train.py")], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0 and model.exists(), f"training failed:\n{proc.stdout}\n{proc.stderr}"
    return model


@pytest.fixture(scope="module")
def iris(gyrus, projects_dir, iris_model):
    proj = copy_example("iris-python", projects_dir)
    infos = deploy_json(gyrus, proj, timeout=INSTALL_TIMEOUT)
    return {"gyrus": gyrus, "info": infos[0], "dir": proj}


def test_iris_python_predicts_setosa(iris):
    g = iris["gyrus"]
    assert iris["info"]["status"] == "live", iris["info"]
    api = iris["info"]["name"]
    r = g.post(iris["info"]["endpoint"], json=SETOSA)
    assert r.status_code == 200, g.diag(api, resp=r)
    assert r.text == "setosa", g.diag(api, resp=r)
    assert r.headers["content-type"].startswith("text/plain"), g.diag(api, resp=r)


def test_iris_python_with_the_cli(iris):
    g = iris["gyrus"]
    api = iris["info"]["name"]
    proc = g.ok("predict", api, json.dumps({**SETOSA, "petal_length": 6.0, "petal_width": 2.2}), apis=(api,))
    assert proc.stdout.strip() == "virginica", g.diag(api, proc=proc)


def test_iris_python_installed_its_requirements(iris):
    g = iris["gyrus"]
    api = iris["info"]["name"]
    log = g.api_log(api)
    assert "requirements.txt" in log, log
    envs = [p for p in (g.home / "envs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(envs) == 1, envs


def test_iris_train_script_is_not_in_the_snapshot(iris):
    """examples/iris-python/.cortexignore lists train.py."""
    g = iris["gyrus"]
    snapshots = [p for p in (g.home / "projects").iterdir() if (p / "predictor.py").exists() and (p / "model.joblib").exists()]
    assert snapshots, list((g.home / "projects").iterdir())
    for s in snapshots:
        assert not (s / "train.py").exists(), s
