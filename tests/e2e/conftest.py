"""Fixtures of the end-to-end tests (helpers are in e2e_helpers.py).

Each test module gets its own GYRUS_HOME (a tmp dir) and its own free port in GYRUS_ADDR;
teardown runs `gyrus daemon stop` with that environment.
"""

from pathlib import Path

import pytest

from e2e_helpers import GYRUS_BIN, Gyrus, make_project


def new_gyrus(tmp_path_factory: pytest.TempPathFactory, label: str) -> Gyrus:
    base = tmp_path_factory.mktemp(label)
    home = base / "home"
    return Gyrus(home)


@pytest.fixture(scope="session", autouse=True)
def _binary_exists():
    if not Path(GYRUS_BIN).is_file():
        pytest.exit(f"GYRUS_BIN={GYRUS_BIN} does not exist; build it with `cargo build -p gyrus-cli`", 2)


@pytest.fixture(scope="module")
def gyrus(tmp_path_factory, request):
    """One isolated gyrus (home + port) per test module; its daemon is stopped at the end."""
    label = request.module.__name__.rsplit(".", 1)[-1]
    g = new_gyrus(tmp_path_factory, label)
    yield g
    g.teardown()


@pytest.fixture(scope="module")
def projects_dir(tmp_path_factory, request) -> Path:
    """A tmp folder for the projects of one module."""
    label = request.module.__name__.rsplit(".", 1)[-1]
    return tmp_path_factory.mktemp(f"{label}-projects")


@pytest.fixture(scope="module")
def project(projects_dir):
    """Factory: project(name, predictor_source, api=None, files=None) -> project folder."""

    def make(name: str, predictor: str, api: dict | None = None, files: dict | None = None) -> Path:
        return make_project(projects_dir, name, predictor, api=api, files=files)

    return make


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory) -> Path:
    """The ONNX test models, generated once per session by scripts/make_models.py."""
    from onnx_helpers import models_dir

    return models_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def tf_models(tmp_path_factory) -> Path:
    """The TensorFlow SavedModels, generated once per session by scripts/make_tf_models.py."""
    from tf_helpers import models_dir

    return models_dir(tmp_path_factory)
