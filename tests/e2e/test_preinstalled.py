"""Cortex's pre-installed packages, on demand (issue 17): a Cortex-style project with no
requirements.txt that imports numpy, pandas, sklearn and yaml deploys unchanged and answers,
`gyrus deploy` says what it added and why, `predictor.preinstalled_packages: false` turns it
off, requirements.txt wins over the list, and the environment is cached by content.

The daemon's base Python here is a bare virtualenv (GYRUS_PYTHON), so that nothing is provided
by the machine's own interpreter and the test means the same everywhere.
"""

import subprocess
import sys

import pytest

from e2e_helpers import make_project

PREDICTOR = """
import numpy as np
import pandas as pd
import yaml
from sklearn.linear_model import LinearRegression

import helpers  # the project's own module: never looked up on PyPI


class PythonPredictor:
    def __init__(self, config):
        x = np.arange(10, dtype=float).reshape(-1, 1)
        self.model = LinearRegression().fit(x, 3 * x.ravel() + 1)
        self.settings = yaml.safe_load("scale: 2")

    def predict(self, payload):
        frame = pd.DataFrame({"x": payload["x"]})
        y = self.model.predict(frame[["x"]].to_numpy())
        return {"y": [round(float(v), 6) for v in y], "scale": self.settings["scale"], "who": helpers.NAME}
"""

FILES = {
    "helpers.py": "NAME = 'helpers'\n",
    # Never imported: a file that does not parse must not stop the others from being read.
    "scratch/broken.py": "def oops(:\n",
    "pkg/__init__.py": "from . import inner  # relative: the project's own\n",
    "pkg/inner.py": "",
}


@pytest.fixture(scope="module")
def bare(gyrus, tmp_path_factory):
    """The daemon's base Python: a virtualenv with nothing in it."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    gyrus.env["GYRUS_PYTHON"] = str(venv / "bin" / "python")
    return gyrus


def test_a_cortex_project_relying_on_preinstalled_packages_deploys_unchanged(bare, projects_dir):
    g = bare
    proj = make_project(projects_dir, "pre-py", PREDICTOR, files=FILES)
    proc = g.deploy_ok(proj, "pre-py", timeout=600)
    note = proc.stderr
    assert "pre-py: adding " in note, g.diag("pre-py", proc=proc)
    for package, module in (("numpy", "numpy"), ("pandas", "pandas"), ("scikit-learn", "sklearn"), ("pyyaml", "yaml")):
        assert f"{package} (`import {module}` in predictor.py)" in note, note
    assert "Cortex's python predictors had them pre-installed" in note
    assert "helpers" not in note.split("adding", 1)[1].split(":")[0]
    r = g.post("/pre-py", json={"x": [1, 2]})
    assert r.status_code == 200, r.text
    assert r.json() == {"y": [4.0, 7.0], "scale": 2, "who": "helpers"}
    # The same note is in the API's log.
    assert "adding numpy (`import numpy` in predictor.py)" in g.api_log("pre-py")

    # A second deploy of the same content builds nothing: one environment, reused.
    envs = sorted(p.name for p in (g.home / "envs").iterdir())
    g.ok("delete", "pre-py")
    again = g.deploy_ok(proj, "pre-py", timeout=120)
    assert sorted(p.name for p in (g.home / "envs").iterdir()) == envs, again.stderr
    assert g.post("/pre-py", json={"x": [0]}).json()["y"] == [1.0]


def test_the_switch_turns_it_off(bare, projects_dir):
    g = bare
    proj = make_project(
        projects_dir, "pre-off", PREDICTOR, api={"predictor": {"preinstalled_packages": False}}, files=FILES
    )
    proc = g.deploy(proj, timeout=120)
    assert proc.returncode != 0, g.diag("pre-off", proc=proc)
    assert "adding" not in proc.stderr
    assert "No module named 'numpy'" in proc.stdout + proc.stderr + g.api_log("pre-off"), g.diag("pre-off", proc=proc)
    g.ok("delete", "pre-off")


def test_requirements_txt_wins(bare, projects_dir):
    g = bare
    predictor = """
import numpy
import yaml


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"numpy": numpy.__version__, "yaml": yaml.safe_load("a: 1")["a"]}
"""
    proj = make_project(projects_dir, "pre-req", predictor, files={"requirements.txt": "numpy==2.2.6\n"})
    proc = g.deploy_ok(proj, "pre-req", timeout=600)
    assert "adding pyyaml (`import yaml` in predictor.py)" in proc.stderr, proc.stderr
    assert "adding numpy" not in proc.stderr and "numpy (`import" not in proc.stderr
    assert g.post("/pre-req", json={}).json() == {"numpy": "2.2.6", "yaml": 1}


def test_an_onnx_predictor_gets_them_beside_its_runtime(bare, projects_dir, onnx_models):
    g = bare
    predictor = """
import numpy as np
import onnxruntime
import yaml


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client
        self.k = yaml.safe_load("k: 3")["k"]

    def predict(self, payload):
        out = self.client.predict(np.asarray([payload["x"]], dtype=np.float32))
        return {"ort": onnxruntime.__version__, "k": self.k, "label": int(np.asarray(out[0]).ravel()[0])}
"""
    proj = make_project(
        projects_dir,
        "pre-onnx",
        predictor,
        api={"predictor": {"type": "onnx", "model": "model.onnx"}},
        files={"model.onnx": (onnx_models / "iris.onnx").read_bytes()},
    )
    proc = g.deploy_ok(proj, "pre-onnx", timeout=600)
    # numpy and the runtime come with gyrus's ONNX environment; only pyyaml is added, and the
    # environment keeps onnxruntime at the version gyrus serves models with.
    assert "pre-onnx: adding pyyaml (`import yaml` in predictor.py)" in proc.stderr, proc.stderr
    assert "numpy (`import" not in proc.stderr and "onnxruntime (`import" not in proc.stderr
    r = g.post("/pre-onnx", json={"x": [5.1, 3.5, 1.4, 0.2]})
    assert r.status_code == 200, g.diag("pre-onnx", resp=r)
    assert r.json() == {"ort": "1.31.1", "k": 3, "label": 0}
