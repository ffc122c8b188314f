"""Project files (cortex-semantics.md, section 3): what the snapshot holds, .cortexignore,
.env and predictor.env, python_path, relative paths, and snapshot semantics."""

import pytest

API = "files"

PREDICTOR = """
import json
import os

import helpermod  # lives in lib/, importable only through python_path

CHECK = [
    "predictor.py",
    "values.json",
    "data.txt",
    "lib/helpermod.py",
    "kept/keep.txt",
    "ignored.txt",
    "ignored_dir/inner.txt",
    "notes.log",
    "kept/also.log",
    "compiled.pyc",
    "lib/compiled.pyo",
    "native.pyd",
    ".hidden",
    ".hidden_dir/inside.txt",
    "kept/.nested_hidden",
    ".cortexignore",
    ".env",
    "cortex.yaml",
]


class PythonPredictor:
    def __init__(self, config):
        # seed 002: project files are read with paths relative to the project folder
        with open("values.json", "r") as values_file:
            self.values = json.load(values_file)

    def predict(self, payload):
        with open("data.txt") as f:
            data = f.read()
        return {
            "exists": {p: os.path.exists(p) for p in CHECK},
            "env": {k: os.environ.get(k) for k in ["FROM_DOTENV", "QUOTED", "FROM_SPEC", "SHARED"]},
            "values": self.values,
            "data": data,
            "helper": helpermod.VALUE,
            "helper_file": os.path.relpath(helpermod.__file__),
        }
"""

FILES = {
    "values.json": '{"answer": 42, "name": "values"}',
    "data.txt": "version-1",
    "lib/helpermod.py": 'VALUE = "from-lib"\n',
    "kept/keep.txt": "kept",
    "ignored.txt": "ignored",
    "ignored_dir/inner.txt": "ignored too",
    "notes.log": "log",
    "kept/also.log": "log re-included by a negation",
    "compiled.pyc": b"\x00bytecode",
    "lib/compiled.pyo": b"\x00bytecode",
    "native.pyd": b"\x00native",
    ".hidden": "hidden",
    ".hidden_dir/inside.txt": "hidden",
    "kept/.nested_hidden": "hidden",
    ".cortexignore": "# gitignore syntax\nignored.txt\nignored_dir/\n*.log\n!kept/also.log\n",
    ".env": "FROM_DOTENV=dotenv-value\n# a comment\n\nexport QUOTED=\"two words\"\nSHARED=from-dotenv\n",
}


@pytest.fixture(scope="module")
def files_api(gyrus, project):
    proj = project(
        API,
        PREDICTOR,
        api={"predictor": {"python_path": "lib", "env": {"FROM_SPEC": "spec-value"}}},
        files=FILES,
    )
    gyrus.deploy_ok(proj, API)
    r = gyrus.post(f"/{API}", json={})
    assert r.status_code == 200, gyrus.diag(API, resp=r)
    return {"dir": proj, "first": r.json(), "gyrus": gyrus}


@pytest.mark.parametrize(
    "path, present",
    [
        ("predictor.py", True),
        ("values.json", True),
        ("data.txt", True),
        ("lib/helpermod.py", True),
        ("kept/keep.txt", True),
        ("ignored.txt", False),  # .cortexignore: a file
        ("ignored_dir/inner.txt", False),  # .cortexignore: a folder
        ("notes.log", False),  # .cortexignore: a glob
        ("kept/also.log", True),  # .cortexignore: a negation
        ("compiled.pyc", False),
        ("lib/compiled.pyo", False),
        ("native.pyd", False),
        (".hidden", False),
        (".hidden_dir/inside.txt", False),
        ("kept/.nested_hidden", False),
        (".cortexignore", False),
        (".env", False),
        ("cortex.yaml", False),
    ],
)
def test_snapshot_contents(files_api, path, present):
    exists = files_api["first"]["exists"]
    assert exists[path] is present, f"{path}: expected {'present' if present else 'absent'}; all: {exists}"


def test_dotenv_and_predictor_env(files_api):
    env = files_api["first"]["env"]
    assert env["FROM_DOTENV"] == "dotenv-value", env
    assert env["QUOTED"] == "two words", env
    assert env["FROM_SPEC"] == "spec-value", env
    assert env["SHARED"] == "from-dotenv", env


def test_python_path_module_is_importable(files_api):
    got = files_api["first"]
    assert got["helper"] == "from-lib", got
    assert got["helper_file"] == "lib/helpermod.py", got


def test_values_json_read_with_a_relative_path(files_api):
    assert files_api["first"]["values"] == {"answer": 42, "name": "values"}


def test_edits_after_deploy_change_nothing(files_api):
    g = files_api["gyrus"]
    proj = files_api["dir"]
    (proj / "data.txt").write_text("version-2")
    (proj / "ignored.txt").unlink()
    (proj / "lib" / "helpermod.py").write_text('VALUE = "edited"\n')
    r = g.post(f"/{API}", json={})
    assert r.status_code == 200, g.diag(API, resp=r)
    got = r.json()
    assert got["data"] == "version-1", got
    assert got["helper"] == "from-lib", got


def test_next_deploy_takes_the_edits(files_api):
    g = files_api["gyrus"]
    proc = g.deploy_ok(files_api["dir"], API)
    assert f"{API}: updated" in proc.stderr, g.diag(API, proc=proc)
    r = g.post(f"/{API}", json={})
    assert r.status_code == 200, g.diag(API, resp=r)
    got = r.json()
    assert got["data"] == "version-2", got
    assert got["helper"] == "edited", got



def test_invalid_dotenv_line_fails_the_deploy(gyrus, project):
    proj = project(
        "bad-dotenv",
        "class PythonPredictor:\n    def __init__(self, config):\n        pass\n\n"
        "    def predict(self, payload):\n        return 1\n",
        files={".env": "GOOD=1\nthis line has no equals sign\n"},
    )
    proc = gyrus.deploy(proj)
    assert proc.returncode == 1, gyrus.diag("bad-dotenv", proc=proc)
    assert ".env:2" in proc.stderr, gyrus.diag("bad-dotenv", proc=proc)
    listed = [i["name"] for i in gyrus.json("get", "-o", "json")]
    assert "bad-dotenv" not in listed, listed
