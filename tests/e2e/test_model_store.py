"""The model store: `gyrus models save/list/get/delete/export/import`, store tags in cortex.yaml,
hostile archives, and the Python module (`gyrus.onnx`) on the same store.

The contract is docs/model-store.md: GYRUS_HOME/models/<name>/<version>/{model.yaml,
saved_model.onnx}, versions of 16 base32hex characters that sort by time, saves and imports
staged under .staging/ and renamed into place, so that a failure leaves nothing behind.
Every test uses its own model names; the module shares one GYRUS_HOME and daemon.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from e2e_helpers import GYRUS_BIN, Gyrus
from onnx_helpers import model_api, model_project
from s3_helpers import staging, store_names, store_versions

RULE = "^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$"
SAVED = re.compile(r"^saved ([a-z0-9._-]+):([0-9a-v]{16}) ", re.M)
SETOSA = [[5.2, 3.6, 1.5, 0.3]]
IRIS_INPUT_SPEC = [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def save(g: Gyrus, path: Path, name: str, *extra: str) -> str:
    """`gyrus models save PATH --name NAME`; returns the new version."""
    proc = g.ok("models", "save", str(path), "--name", name, *extra)
    m = SAVED.search(proc.stdout)
    assert m and m.group(1) == name, g.diag(proc=proc)
    return m.group(2)


def failed(g: Gyrus, *args: str, expect: tuple[str, ...] = (), cwd: Path | None = None) -> str:
    """Runs a command that must exit 1; returns stderr after checking it holds `expect`."""
    proc = run_in(g, cwd, *args) if cwd else g.run(*args)
    assert proc.returncode == 1, g.diag(proc=proc)
    for s in expect:
        assert s in proc.stderr, f"{s!r} not in the message\n{g.diag(proc=proc)}"
    return proc.stderr


def run_in(g: Gyrus, cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`gyrus ARGS` with g's environment, in folder `cwd`."""
    return subprocess.run(
        [GYRUS_BIN, *map(str, args)],
        env=g.env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def listing(g: Gyrus, name: str | None = None) -> list[dict]:
    return g.json("models", "list", *([name] if name else []), "-o", "json")


def by_tag(g: Gyrus) -> dict[str, dict]:
    return {m["tag"]: m for m in listing(g)}


def nothing_left(g: Gyrus, before: list[str]) -> None:
    """No new version anywhere in the store, and .staging is empty."""
    assert store_versions(g.home) == before, (before, store_versions(g.home))
    assert staging(g.home) == [], staging(g.home)


def predict(g: Gyrus, api: str) -> dict:
    r = g.post(f"/{api}", json={"input": SETOSA})
    assert r.status_code == 200, g.diag(api, resp=r)
    return r.json()


# ------------------------------------------------------------------------------------------
# save, list, get


def test_save_records_model_yaml(gyrus, onnx_models):
    src = onnx_models / "iris.onnx"
    proc = gyrus.ok("models", "save", str(src), "--name", "iris", "--label", "team=ml", "--label", "stage=dev", "--metadata", "accuracy=0.97")
    m = SAVED.search(proc.stdout)
    assert m and m.group(1) == "iris", gyrus.diag(proc=proc)
    version = m.group(2)

    [entry] = listing(gyrus, "iris")
    assert entry["tag"] == f"iris:{version}"
    assert entry["used_by"] == []
    info = entry["info"]
    assert info["name"] == "iris" and info["version"] == version
    assert info["module"] == "gyrus.onnx"
    assert info["labels"] == {"team": "ml", "stage": "dev"}
    assert info["metadata"] == {"accuracy": "0.97"}
    assert info["size"] == src.stat().st_size
    assert info["files"] == [{"path": "saved_model.onnx", "size": src.stat().st_size, "sha256": sha256(src)}]
    run = info["signatures"]["run"]
    assert run["batchable"] is False and run["batch_dim"] == 0, run
    assert run["input_spec"] == IRIS_INPUT_SPEC
    assert [o["name"] for o in run["output_spec"]] == ["label", "probabilities"]
    assert info["context"]["framework_name"] == "onnx"
    assert "onnxruntime" in info["context"]["framework_versions"]

    # -o path: the folder with model.yaml and the model's exact bytes.
    path = Path(gyrus.ok("models", "get", "iris", "-o", "path").stdout.strip())
    assert path == gyrus.home / "models" / "iris" / version
    assert sorted(p.name for p in path.iterdir()) == ["model.yaml", "saved_model.onnx"]
    assert (path / "saved_model.onnx").read_bytes() == src.read_bytes()
    assert (gyrus.home / "models" / "iris" / "latest").read_text() == version

    # -o yaml and -o json say the same, and match model.yaml and the listing.
    as_json = gyrus.json("models", "get", "iris", "-o", "json")
    as_yaml = yaml.safe_load(gyrus.ok("models", "get", "iris", "-o", "yaml").stdout)
    assert as_yaml == as_json == info
    assert yaml.safe_load((path / "model.yaml").read_text()) == info


def test_save_with_signature(gyrus, onnx_models):
    version = save(gyrus, onnx_models / "iris.onnx", "batched", "--signature", "run:batchable=true,batch_dim=0")
    info = gyrus.json("models", "get", f"batched:{version}", "-o", "json")
    run = info["signatures"]["run"]
    assert run["batchable"] is True and run["batch_dim"] == 0, run
    assert run["input_spec"] == IRIS_INPUT_SPEC


# ------------------------------------------------------------------------------------------
# tags


def test_tags_resolve(gyrus, onnx_models):
    v1 = save(gyrus, onnx_models / "iris.onnx", "tags")
    v2 = save(gyrus, onnx_models / "iris.onnx", "tags")
    assert v1 < v2  # versions sort by creation time
    assert [m["tag"] for m in listing(gyrus, "tags")] == [f"tags:{v2}", f"tags:{v1}"]

    def version_of(tag: str) -> str:
        return gyrus.json("models", "get", tag, "-o", "json")["version"]

    assert version_of("tags") == v2
    assert version_of("tags:latest") == v2
    assert version_of(f"tags:{v1}") == v1

    common = os.path.commonprefix([v1, v2])
    assert common, (v1, v2)  # both start with nearly the same timestamp
    assert version_of(f"tags:{v1[: len(common) + 1]}") == v1
    assert version_of(f"tags:{v2[: len(common) + 1]}") == v2
    failed(gyrus, "models", "get", f"tags:{common}", expect=(v1, v2, "give more characters"))

    failed(gyrus, "models", "get", "tags:zzzz", expect=('"tags:zzzz" is not in the store', f"tags:{v2}", f"tags:{v1}"))
    failed(gyrus, "models", "get", "nosuchmodel", expect=('"nosuchmodel:latest" is not in the store', "tags"))


def test_invalid_name_writes_nothing(gyrus, onnx_models):
    before = store_versions(gyrus.home)
    names = store_names(gyrus.home)
    failed(gyrus, "models", "save", str(onnx_models / "iris.onnx"), "--name", "Iris", expect=('"Iris"', RULE))
    nothing_left(gyrus, before)
    assert store_names(gyrus.home) == names


# ------------------------------------------------------------------------------------------
# saves that fail


def test_save_corrupt_model(gyrus, onnx_models):
    before = store_versions(gyrus.home)
    err = failed(
        gyrus,
        "models", "save", str(onnx_models / "corrupt.onnx"), "--name", "broken",
        expect=("does not load in ONNX Runtime", "saved_model.onnx", "corrupt.onnx"),
    )
    assert ".staging" not in err, err
    assert not (gyrus.home / "models" / "broken").exists()
    nothing_left(gyrus, before)


def test_save_directory_with_two_models(gyrus, onnx_models, tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    for n in ("iris.onnx", "add.onnx"):
        (d / n).write_bytes((onnx_models / n).read_bytes())
    before = store_versions(gyrus.home)
    err = failed(gyrus, "models", "save", str(d), "--name", "two", expect=("add.onnx", "iris.onnx", "exactly one"))
    # The message is about the user's folder, not about gyrus' staging copy of it.
    assert ".staging" not in err, err
    assert not (gyrus.home / "models" / "two").exists()
    nothing_left(gyrus, before)


def test_save_missing_path(gyrus, tmp_path):
    before = store_versions(gyrus.home)
    missing = tmp_path / "nothere.onnx"
    failed(gyrus, "models", "save", str(missing), "--name", "missing", expect=(str(missing), "No such file"))
    assert not (gyrus.home / "models" / "missing").exists()
    nothing_left(gyrus, before)


# ------------------------------------------------------------------------------------------
# deploying store tags, and deleting


def test_deploy_store_tag_and_delete(gyrus, projects_dir, onnx_models):
    api = "storeapi"
    v1 = save(gyrus, onnx_models / "iris.onnx", "served")
    proj = model_project(projects_dir, api, [model_api(api, "served:latest")])
    gyrus.deploy_ok(proj, api)
    out = predict(gyrus, api)
    assert out["label"] == [0] and len(out["probabilities"][0]) == 3, out
    assert by_tag(gyrus)[f"served:{v1}"]["used_by"] == [api]
    info = gyrus.get(api)
    assert info["status"] == "live" and info["predictor_type"] == "onnx", info
    assert gyrus.describe(api)["status"] == "live"
    assert api in gyrus.ok("models", "list", "served").stdout

    # A new save changes nothing until the next deploy: the tag was pinned.
    v2 = save(gyrus, onnx_models / "iris.onnx", "served")
    tags = by_tag(gyrus)
    assert tags[f"served:{v1}"]["used_by"] == [api] and tags[f"served:{v2}"]["used_by"] == []
    assert predict(gyrus, api)["label"] == [0]

    # The next deploy pins the new latest.
    proc = gyrus.deploy_ok(proj, api)
    assert f"{api}: updated" in proc.stderr, gyrus.diag(api, proc=proc)
    tags = by_tag(gyrus)
    assert tags[f"served:{v2}"]["used_by"] == [api] and tags[f"served:{v1}"]["used_by"] == [], tags

    # Deleting: confirmation, then the in-use check, then --force.
    failed(gyrus, "models", "delete", f"served:{v2}", expect=("pass -y",))
    assert (gyrus.home / "models" / "served" / v2).is_dir()
    failed(gyrus, "models", "delete", f"served:{v2}", "-y", expect=(f"is used by API {api}", "--force"))
    assert (gyrus.home / "models" / "served" / v2).is_dir()
    proc = gyrus.ok("models", "delete", f"served:{v2}", "-y", "--force")
    assert f"deleted served:{v2}" in proc.stdout + proc.stderr, gyrus.diag(proc=proc)
    assert not (gyrus.home / "models" / "served" / v2).exists()
    assert (gyrus.home / "models" / "served" / "latest").read_text() == v1
    assert [m["tag"] for m in listing(gyrus, "served")] == [f"served:{v1}"]
    assert staging(gyrus.home) == []
    # Its replica keeps serving what it loaded.
    assert predict(gyrus, api)["label"] == [0]


def test_deploy_unknown_tag_fails_fast(gyrus, projects_dir, onnx_models):
    save(gyrus, onnx_models / "iris.onnx", "known")
    api = "nosuchtag"
    proj = model_project(projects_dir, api, [model_api(api, "nosuch:latest")])
    t0 = time.monotonic()
    proc = gyrus.deploy(proj)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, gyrus.diag(proc=proc)
    assert elapsed < 15, elapsed
    for s in (f'api "{api}"', "predictor.model", '"nosuch:latest" is not in the store', "models in the store:", "known"):
        assert s in proc.stderr, gyrus.diag(proc=proc)
    failed(gyrus, "get", api, expect=("not deployed",))


# ------------------------------------------------------------------------------------------
# export and import


@pytest.fixture
def second_gyrus(tmp_path_factory):
    """Another isolated gyrus (own GYRUS_HOME and address), stopped at the end."""
    g = Gyrus(tmp_path_factory.mktemp("store-second") / "home")
    yield g
    g.teardown()


def test_export_import(gyrus, second_gyrus, onnx_models, tmp_path):
    version = save(gyrus, onnx_models / "iris.onnx", "moved", "--label", "team=ml")
    src_dir = gyrus.home / "models" / "moved" / version

    # The default name, in the current folder.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_in(gyrus, cwd, "models", "export", "moved")
    assert proc.returncode == 0, gyrus.diag(proc=proc)
    archive = cwd / f"moved-{version}.tar.gz"
    assert archive.is_file(), (proc.stdout, proc.stderr, list(cwd.iterdir()))
    with tarfile.open(archive) as t:
        members = t.getmembers()
    assert [m.name for m in members] == ["model.yaml", "saved_model.onnx"]
    assert all(m.isfile() for m in members)

    # Into a folder.
    out = tmp_path / "out"
    out.mkdir()
    gyrus.ok("models", "export", f"moved:{version}", str(out))
    assert (out / f"moved-{version}.tar.gz").is_file(), list(out.iterdir())

    # Import into a fresh home: byte-identical.
    g2 = second_gyrus
    proc = g2.ok("models", "import", str(archive))
    assert f"moved:{version}" in proc.stdout + proc.stderr, g2.diag(proc=proc)
    dst_dir = g2.home / "models" / "moved" / version
    assert (dst_dir / "model.yaml").read_bytes() == (src_dir / "model.yaml").read_bytes()
    assert (dst_dir / "saved_model.onnx").read_bytes() == (src_dir / "saved_model.onnx").read_bytes()
    assert sorted(p.name for p in dst_dir.iterdir()) == ["model.yaml", "saved_model.onnx"]
    assert (g2.home / "models" / "moved" / "latest").read_text() == version
    assert [m["tag"] for m in listing(g2)] == [f"moved:{version}"]
    assert listing(g2)[0]["info"] == gyrus.json("models", "get", f"moved:{version}", "-o", "json")

    # Importing again is refused.
    failed(g2, "models", "import", str(archive), expect=(f"moved:{version}", "already in the store"))
    nothing_left(g2, [f"moved/{version}"])


# ------------------------------------------------------------------------------------------
# hostile archives

BOMB_BYTES = 200 * 2**20


class _Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.n = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.n)
        b[:k] = bytes(k)
        self.n -= k
        return k


@pytest.fixture(scope="module")
def exported(gyrus, onnx_models, tmp_path_factory) -> dict:
    """A real export: its model.yaml (as a dict) and model bytes, to forge archives from."""
    version = save(gyrus, onnx_models / "iris.onnx", "hostile")
    out = tmp_path_factory.mktemp("hostile-export")
    gyrus.ok("models", "export", f"hostile:{version}", str(out))
    with tarfile.open(out / f"hostile-{version}.tar.gz") as t:
        info = yaml.safe_load(t.extractfile("model.yaml").read())
        model = t.extractfile("saved_model.onnx").read()
    # The store must not hold the versions the forged archives claim.
    gyrus.ok("models", "delete", f"hostile:{version}", "-y")
    return {"info": info, "model": model}


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    return ti, data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = target
    return ti, None


def forge(path: Path, exported: dict, case: str, outside: Path) -> Path:
    """Writes the hostile archive `case` to `path`."""
    info = dict(exported["info"])
    info["version"] = "0" * 15 + "1"
    model = exported["model"]
    my = lambda i=info: _file("model.yaml", yaml.safe_dump(i).encode())  # noqa: E731
    if case == "random":
        path.write_bytes(os.urandom(8192))
        return path
    if case == "bomb":
        info["size"] = 10
        info["files"] = [{"path": "saved_model.onnx", "size": 10, "sha256": "0" * 64}]
        with tarfile.open(path, "w:gz", compresslevel=1) as t:
            ti, data = my(info)
            t.addfile(ti, io.BytesIO(data))
            big = tarfile.TarInfo("saved_model.onnx")
            big.size = BOMB_BYTES
            t.addfile(big, io.BufferedReader(_Zeros(BOMB_BYTES), 1 << 20))
        return path
    entries = {
        "absolute": [my(), _file(str(outside / "abs-evil.onnx"), model)],
        "dotdot": [my(), _file("../evil.onnx", model)],
        "symlink": [my(), _link("saved_model.onnx", "/etc/passwd", tarfile.SYMTYPE)],
        "hardlink": [my(), _link("saved_model.onnx", "model.yaml", tarfile.LNKTYPE)],
        "yaml-not-first": [_file("saved_model.onnx", model), my()],
        "sha256": [my(), _file("saved_model.onnx", model[:100] + bytes([model[100] ^ 0xFF]) + model[101:])],
        "extra-file": [my(), _file("saved_model.onnx", model), _file("extra.txt", b"hello")],
        "missing-file": [my()],
    }[case]
    with tarfile.open(path, "w:gz") as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


HOSTILE = {
    "absolute": ("absolute paths are not allowed",),
    "dotdot": ("'..' components are not allowed", "../evil.onnx"),
    "symlink": ("saved_model.onnx", "symbolic link"),
    "hardlink": ("saved_model.onnx", "hard link"),
    "yaml-not-first": ("first entry", "not model.yaml"),
    "bomb": ("more data than model.yaml claims",),
    "sha256": ("sha256 of saved_model.onnx",),
    "extra-file": ("extra.txt", "not listed in model.yaml"),
    "missing-file": ("saved_model.onnx", "missing from the archive"),
    "random": ("not a valid gzip-compressed tar",),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_import_hostile_archive(gyrus, exported, case, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = forge(tmp_path / f"{case}.tar.gz", exported, case, outside)
    if case == "bomb":
        assert archive.stat().st_size < 5 * 2**20, archive.stat().st_size
    before = store_versions(gyrus.home)
    t0 = time.monotonic()
    err = failed(gyrus, "models", "import", str(archive), expect=("cannot import", *HOSTILE[case]))
    assert time.monotonic() - t0 < 20
    assert "already in the store" not in err
    nothing_left(gyrus, before)
    assert not (gyrus.home / "models" / "hostile").exists()
    assert list(outside.iterdir()) == []
    for p in (gyrus.home / "models" / "evil.onnx", gyrus.home / "evil.onnx", gyrus.home / "models" / ".staging" / "evil.onnx"):
        assert not p.exists(), p


# ------------------------------------------------------------------------------------------
# the Python module on the daemon's store


def test_python_save_then_deploy(gyrus, projects_dir, onnx_models, monkeypatch):
    import onnx

    import gyrus.onnx as gyrus_onnx

    monkeypatch.setenv("GYRUS_HOME", str(gyrus.home))
    m = gyrus_onnx.save_model("pyiris", onnx.load(str(onnx_models / "iris.onnx")))
    assert m.name == "pyiris"
    [entry] = listing(gyrus, "pyiris")
    assert entry["tag"] == f"pyiris:{m.version}"
    assert entry["info"]["module"] == "gyrus.onnx"
    assert entry["info"]["signatures"]["run"]["input_spec"] == IRIS_INPUT_SPEC

    api = "pyapi"
    proj = model_project(projects_dir, api, [model_api(api, "pyiris:latest")])
    gyrus.deploy_ok(proj, api)
    assert predict(gyrus, api)["label"] == [0]
    assert by_tag(gyrus)[f"pyiris:{m.version}"]["used_by"] == [api]


def test_cli_save_then_python_load(gyrus, projects_dir, onnx_models, monkeypatch):
    import gyrus.onnx as gyrus_onnx

    version = save(gyrus, onnx_models / "iris.onnx", "cliiris")
    monkeypatch.setenv("GYRUS_HOME", str(gyrus.home))
    sess = gyrus_onnx.load_model(f"cliiris:{version}", providers=["CPUExecutionProvider"])
    label, probs = sess.run(["label", "probabilities"], {"input": np.array(SETOSA, np.float32)})

    api = "cliapi"
    proj = model_project(projects_dir, api, [model_api(api, "cliiris:latest")])
    gyrus.deploy_ok(proj, api)
    out = predict(gyrus, api)
    assert out["label"] == label.tolist()
    np.testing.assert_allclose(np.array(out["probabilities"], np.float32), probs, rtol=1e-6)
