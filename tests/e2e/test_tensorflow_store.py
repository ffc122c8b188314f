"""TensorFlow SavedModels in the model store (docs/model-store.md): `gyrus models save DIR`
stores a SavedModel directory as it is (`<name>/<version>/saved_model.pb`, `variables/` ...)
with `module: gyrus.tensorflow`, `context.framework_name: tensorflow` and its serving
signature in model.yaml; `predictor.type: tensorflow` deploys `name:latest` from the store;
ONNX and TensorFlow APIs refuse each other's models with a 4xx; export/import round-trips.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np

from e2e_helpers import to_yaml
from onnx_helpers import model_api as onnx_api
from s3_helpers import staging, store_versions
from tf_helpers import copy_model, oracle

SAVED = re.compile(r"^saved ([a-z0-9._-]+):([0-9a-v]{16}) ", re.M)
IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.9, 3.1, 5.4, 2.1]], dtype=np.float32)


def save(g, path: Path, name: str) -> str:
    proc = g.ok("models", "save", str(path), "--name", name)
    m = SAVED.search(proc.stdout)
    assert m and m.group(1) == name, g.diag(proc=proc)
    return m.group(2)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tf_api(name: str, model: str) -> dict:
    return {"name": name, "predictor": {"type": "tensorflow", "model": model}, "autoscaling": {"init_replicas": 1}}


def project(base: Path, name: str, apis: list[dict], models: dict[str, Path] | None = None) -> Path:
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    for rel, src in (models or {}).items():
        copy_model(src, d / rel)
    (d / "cortex.yaml").write_text(to_yaml(apis))
    return d


def test_save_stores_the_savedmodel_as_is(gyrus, tf_models):
    src = tf_models / "iris-x"
    version = save(gyrus, src, "iris-tf")
    [entry] = gyrus.json("models", "list", "iris-tf", "-o", "json")
    info = entry["info"]
    assert entry["tag"] == f"iris-tf:{version}"
    assert info["module"] == "gyrus.tensorflow"
    assert info["context"]["framework_name"] == "tensorflow"
    assert info["context"]["framework_versions"].get("tensorflow", "").startswith("2."), info["context"]
    serving = info["signatures"]["serving_default"]
    assert serving["input_spec"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [(o["name"], o["datatype"]) for o in serving["output_spec"]] == [("class_ids", "INT64"), ("probabilities", "FP32")]
    # The version directory is the SavedModel directory, byte for byte, plus model.yaml.
    stored = Path(entry["path"])
    assert stored == gyrus.home / "models" / "iris-tf" / version
    got = files_of(stored)
    assert got.pop("model.yaml")
    assert got == files_of(src)
    assert "saved_model.pb" in got and "variables/variables.index" in got
    assert sorted(f["path"] for f in info["files"]) == sorted(got)
    assert info["size"] == sum(len(b) for b in got.values())

    table = gyrus.ok("models", "list", "iris-tf").stdout
    assert "FRAMEWORK" in table and "tensorflow" in table, table
    yaml_text = gyrus.ok("models", "get", "iris-tf").stdout
    assert "framework_name: tensorflow" in yaml_text and "serving_default" in yaml_text, yaml_text


def test_version_directories_save_the_highest(gyrus, tf_models):
    src = tf_models / "versions"
    proc = gyrus.ok("models", "save", str(src), "--name", "tf-versions")
    assert "saving the highest, 2" in proc.stderr, gyrus.diag(proc=proc)
    [entry] = gyrus.json("models", "list", "tf-versions", "-o", "json")
    got = files_of(Path(entry["path"]))
    got.pop("model.yaml")
    assert got == files_of(src / "2")


def test_deploy_from_store_equals_project_path(gyrus, projects_dir, tf_models):
    if not gyrus.json("models", "list", "iris-tf", "-o", "json"):
        save(gyrus, tf_models / "iris-x", "iris-tf")
    apis = [tf_api("tfs-path", "iris-x"), tf_api("tfs-store", "iris-tf:latest")]
    proj = project(projects_dir, "tf-store", apis, {"iris-x": tf_models / "iris-x"})
    proc = gyrus.deploy(proj)
    assert proc.returncode == 0, gyrus.diag("tfs-path", "tfs-store", proc=proc)
    answers = []
    for api in ("tfs-path", "tfs-store"):
        r = gyrus.post(f"/{api}", json={"x": IRIS_ROWS.tolist()})
        assert r.status_code == 200, gyrus.diag(api, resp=r)
        answers.append(r.json())
    assert answers[0] == answers[1]
    want = oracle(tf_models / "iris-x", {"x": IRIS_ROWS})
    assert answers[1]["class_ids"] == want["class_ids"].tolist()
    # The deploy pinned the version, and the store knows the API uses it.
    [entry] = gyrus.json("models", "list", "iris-tf", "-o", "json")
    assert entry["used_by"] == ["tfs-store"]
    gyrus.ok("delete", "tfs-path", "tfs-store")


def test_apis_refuse_the_other_framework(gyrus, projects_dir, tf_models, onnx_models):
    if not gyrus.json("models", "list", "iris-tf", "-o", "json"):
        save(gyrus, tf_models / "iris-x", "iris-tf")
    save(gyrus, onnx_models / "iris.onnx", "iris-onnx-not-tf")
    cases = [
        (onnx_api("onnx-gets-tf", "iris-tf:latest"), "is a TensorFlow SavedModel, which predictor.type onnx cannot serve"),
        (tf_api("tf-gets-onnx", "iris-onnx-not-tf:latest"), "is an ONNX model, which predictor.type tensorflow cannot serve"),
    ]
    for api, message in cases:
        proj = project(projects_dir, f"wrong-{api['name']}", [api])
        proc = gyrus.deploy(proj)
        assert proc.returncode == 1, gyrus.diag(api["name"], proc=proc)
        assert message in proc.stderr, gyrus.diag(api["name"], proc=proc)
        assert "predictor.model" in proc.stderr, proc.stderr
        r = gyrus.control("GET", f"/apis/{api['name']}")
        assert r.status_code == 404, r.text


def upload(g, name: str, files: dict[str, bytes]):
    """A save request as the CLI sends it, with a tar of `files`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel, data in files.items():
            ti = tarfile.TarInfo(rel)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    header = base64.b64encode(json.dumps({"name": name}).encode()).decode()
    return g.control("POST", "/models", data=buf.getvalue(), headers={"x-gyrus-save": header, "Content-Type": "application/x-tar"})


def test_save_refuses_what_is_neither_onnx_nor_savedmodel(gyrus, tmp_path, tf_models):
    before = store_versions(gyrus.home)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "weights.bin").write_bytes(b"\0" * 16)
    proc = gyrus.run("models", "save", str(junk), "--name", "junk")
    assert proc.returncode == 1, gyrus.diag(proc=proc)
    assert "TensorFlow SavedModel" in proc.stderr, proc.stderr
    # The daemon says the same to any client.
    r = upload(gyrus, "junk", {"weights.bin": b"\0" * 16})
    assert r.status_code == 400, r.text
    assert "TensorFlow SavedModel (a directory with saved_model.pb" in r.json()["error"], r.text
    assert "found: weights.bin" in r.json()["error"], r.text
    # A saved_model.pb that is not one.
    r = upload(gyrus, "junk", {"saved_model.pb": b"not a protobuf \xff\xff\xff"})
    assert r.status_code == 400, r.text
    assert "the TensorFlow SavedModel cannot be served" in r.json()["error"], r.text
    assert ".staging" not in r.json()["error"], r.text
    # Version directories uploaded by another client.
    v2 = tf_models / "versions" / "2"
    r = upload(gyrus, "junk", {f"2/{k}": v for k, v in files_of(v2).items()})
    assert r.status_code == 400, r.text
    assert "SavedModel version directories" in r.json()["error"], r.text
    assert store_versions(gyrus.home) == before
    assert staging(gyrus.home) == []


def test_export_import_round_trips_a_savedmodel(gyrus, tmp_path, tf_models):
    version = save(gyrus, tf_models / "iris-x", "iris-tf-rt")
    [before] = gyrus.json("models", "list", "iris-tf-rt", "-o", "json")
    archive = tmp_path / "iris-tf-rt.tar.gz"
    gyrus.ok("models", "export", f"iris-tf-rt:{version}", str(archive))
    gyrus.ok("models", "delete", "iris-tf-rt", "-y")
    gyrus.ok("models", "import", str(archive))
    [after] = gyrus.json("models", "list", "iris-tf-rt", "-o", "json")
    assert after["info"] == before["info"]
    got = files_of(Path(after["path"]))
    got.pop("model.yaml")
    assert got == files_of(tf_models / "iris-x")
