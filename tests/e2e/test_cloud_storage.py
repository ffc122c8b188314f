"""Models named by az:// and gs:// URLs, fetched from real local emulators of the two stores:
Azurite for Azure Blob Storage, gcp-storage-emulator for Google Cloud Storage. The deploying
shell's AZURE_* / GOOGLE_* variables name the endpoint and the credentials, as a user's would.
"""

from __future__ import annotations

import json
import uuid

import pytest

from cloud_helpers import Azurite, GcsEmulator
from onnx_helpers import model_api, model_project
from s3_helpers import scrub, with_env

SETOSA = [[5.2, 3.6, 1.5, 0.3]]


@pytest.fixture(scope="module")
def g(gyrus, tmp_path_factory):
    return scrub(gyrus, tmp_path_factory.mktemp("cloud-user") / "home")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    server = Azurite(tmp_path_factory.mktemp("azurite") / "data")
    yield server
    server.stop()


def predict_iris(g, api: str, endpoint: str | None = None) -> None:
    r = g.post(endpoint or f"/{api}", json={"input": SETOSA})
    assert r.status_code == 200, g.diag(api, resp=r)
    assert r.json()["label"] == [0], r.text


def test_az_model_file_and_directory(g, azurite, projects_dir, onnx_models):
    container = azurite.container(f"m{uuid.uuid4().hex[:12]}")
    azurite.put(container, "iris.onnx", onnx_models / "iris.onnx")
    azurite.put(container, "many/iris.onnx", onnx_models / "iris.onnx")
    azurite.put(container, "many/mlp/model.onnx", onnx_models / "mlp.onnx")
    one = model_api("azone", f"az://{container}/iris.onnx")
    many = model_api("azmany", None, predictor={"models": {"dir": f"az://{container}/many/"}})
    proj = model_project(projects_dir, "az", [one, many])
    proc = with_env(g, **azurite.env()).deploy(proj)
    assert proc.returncode == 0, g.diag("azone", "azmany", proc=proc)
    predict_iris(g, "azone")
    predict_iris(g, "azmany", "/azmany?model=iris")
    r = g.post("/azmany?model=mlp", json={"x": [[0.5] * 64]})
    assert r.status_code == 200 and len(r.json()["logits"][0]) == 10, g.diag("azmany", resp=r)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("wrong-key", ("access denied", "the credentials were refused")),
        ("no-blob", ('no such key "nothere.onnx" in container',)),
    ],
)
def test_az_failures_are_named(g, azurite, projects_dir, onnx_models, case, expect):
    container = azurite.container(f"f{uuid.uuid4().hex[:12]}")
    azurite.put(container, "iris.onnx", onnx_models / "iris.onnx")
    api = f"az-{case}"
    key = "nothere.onnx" if case == "no-blob" else "iris.onnx"
    env = azurite.env(key="d3Jvbmc=" if case == "wrong-key" else azurite.env()["AZURE_STORAGE_ACCOUNT_KEY"])
    proj = model_project(projects_dir, api, [model_api(api, f"az://{container}/{key}")])
    proc = with_env(g, **env).deploy(proj, timeout=60)
    assert proc.returncode == 1, g.diag(api, proc=proc)
    for s in expect:
        assert s in proc.stderr, g.diag(api, proc=proc)



# ------------------------------------------------------------------------------------------
# gs:// against gcp-storage-emulator


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    server = GcsEmulator(tmp_path_factory.mktemp("gcs"), "models")
    yield server
    server.stop()


def test_gs_model_file_and_directory(g, gcs, projects_dir, onnx_models):
    gcs.put("iris.onnx", onnx_models / "iris.onnx")
    gcs.put("many/iris.onnx", onnx_models / "iris.onnx")
    gcs.put("many/mlp/model.onnx", onnx_models / "mlp.onnx")
    one = model_api("gsone", "gs://models/iris.onnx")
    many = model_api("gsmany", None, predictor={"models": {"dir": "gs://models/many/"}})
    proj = model_project(projects_dir, "gs", [one, many])
    # The endpoint is written as http://, so plain HTTP is allowed without GOOGLE_ALLOW_HTTP.
    env = {"GOOGLE_BASE_URL": gcs.endpoint, "GOOGLE_SKIP_SIGNATURE": "true"}
    proc = with_env(g, **env).deploy(proj)
    assert proc.returncode == 0, g.diag("gsone", "gsmany", proc=proc)
    predict_iris(g, "gsone")
    predict_iris(g, "gsmany", "/gsmany?model=iris")
    r = g.post("/gsmany?model=mlp", json={"x": [[0.5] * 64]})
    assert r.status_code == 200 and len(r.json()["logits"][0]) == 10, g.diag("gsmany", resp=r)


def test_gs_with_a_service_account_key_file(g, gcs, projects_dir, onnx_models, tmp_path):
    """A key file naming the endpoint (`gcs_base_url`) and no OAuth, as emulators are used."""
    gcs.put("sa/iris.onnx", onnx_models / "iris.onnx")
    key = tmp_path / "key.json"
    key.write_text(
        json.dumps(
            {
                "type": "service_account",
                "private_key_id": "emulator",
                "private_key": "",
                "client_email": "test@example.iam.gserviceaccount.com",
                "gcs_base_url": gcs.endpoint,
                "disable_oauth": True,
            }
        )
    )
    api = "gssa"
    proj = model_project(projects_dir, api, [model_api(api, "gs://models/sa/iris.onnx")])
    # The key file's endpoint is not visible to gyrus: plain HTTP must be allowed by name.
    proc = with_env(g, GOOGLE_SERVICE_ACCOUNT=str(key)).deploy(proj, timeout=60)
    assert proc.returncode == 1 and "set GOOGLE_ALLOW_HTTP=true" in proc.stderr, g.diag(api, proc=proc)
    with_env(g, GOOGLE_SERVICE_ACCOUNT=str(key), GOOGLE_ALLOW_HTTP="true").deploy_ok(proj, api)
    predict_iris(g, api)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("no-credentials", ("no credentials", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SKIP_SIGNATURE=true")),
        ("no-object", ('no such key "nothere.onnx"',)),

    ],
)
def test_gs_failures_are_named(g, gcs, projects_dir, case, expect):
    api = f"gs-{case}"
    env = {"GOOGLE_BASE_URL": gcs.endpoint, "GOOGLE_SKIP_SIGNATURE": "true"}
    if case == "no-credentials":
        del env["GOOGLE_SKIP_SIGNATURE"]
    proj = model_project(projects_dir, api, [model_api(api, "gs://models/nothere.onnx")])
    proc = with_env(g, **env).deploy(proj, timeout=60)
    assert proc.returncode == 1, g.diag(api, proc=proc)
    for s in expect:
        assert s in proc.stderr, g.diag(api, proc=proc)
