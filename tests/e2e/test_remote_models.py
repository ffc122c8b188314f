"""Models named by URL: s3:// (a real S3-compatible server, s3s-fs) and http://.

`gyrus deploy` sends the shell's AWS_* (and HOME) with the deploy; the daemon downloads into
GYRUS_HOME/cache/remote/<sha256(url)[:32]>/<validator>/, writing under .tmp/ and renaming only a
complete, verified download. Failures name the cause, and leave no cache entry. A proxy in this
process sits between gyrus and s3s-fs where a test counts requests, throttles, cuts or corrupts
the download.

The module's gyrus (and so its daemon) runs without any AWS_*/GOOGLE_*/AZURE_* variable and with
an empty HOME; each deploy adds exactly the variables of its case.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from e2e_helpers import Gyrus, free_port, pid_alive, wait_until
from onnx_helpers import model_api, model_project
from s3_helpers import (
    ACCESS_KEY,
    REGION,
    S3S_FS,
    SECRET_KEY,
    Proxy,
    S3Server,
    StaticServer,
    big_model,
    cache_entries,
    s3_env,
    scrub,
    tmp_contents,
    with_env,
)

SETOSA = [[5.2, 3.6, 1.5, 0.3]]


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """s3s-fs on a free port, for the whole session."""
    if not Path(S3S_FS).is_file():
        pytest.fail(f"s3s-fs is missing (GYRUS_TEST_S3S_FS={S3S_FS}); run scripts/setup-s3s.sh", pytrace=False)
    server = S3Server(tmp_path_factory.mktemp("s3s") / "root")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def g(gyrus, tmp_path_factory):
    """The module's gyrus, with no credentials of this machine and an empty HOME."""
    return scrub(gyrus, tmp_path_factory.mktemp("remote-user") / "home")


@pytest.fixture
def bucket(s3):
    """A fresh bucket for one test."""
    return s3.bucket(f"t-{uuid.uuid4().hex[:16]}")


def key_dirs(home: Path, url: str) -> list[Path]:
    """The cache's directories for `url` (one per place it was fetched from): each names the
    URL's hash in its `current` file."""
    root = home / "cache" / "remote"
    marker = "url=" + hashlib.sha256(url.encode()).hexdigest()[:32]
    if not root.is_dir():
        return []
    return [
        d for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".")
        and (d / "current").is_file() and marker in (d / "current").read_text()
    ]


def entries_of(home: Path, url: str) -> list[Path]:
    return sorted(p for d in key_dirs(home, url) for p in d.iterdir() if p.is_dir())


def predict_iris(g: Gyrus, api: str, endpoint: str | None = None) -> dict:
    r = g.post(endpoint or f"/{api}", json={"input": SETOSA})
    assert r.status_code == 200, g.diag(api, resp=r)
    out = r.json()
    assert out["label"] == [0] and len(out["probabilities"][0]) == 3, out
    return out


def deploy_fails(g: Gyrus, env_g: Gyrus, proj: Path, api: str, url: str, expect: tuple[str, ...]) -> str:
    """The deploy exits 1 naming `expect`; the API shows the error; nothing was cached."""
    proc = env_g.deploy(proj, timeout=60)
    assert proc.returncode == 1, g.diag(api, proc=proc)
    for s in expect:
        assert s in proc.stderr, f"{s!r} not in the message\n{g.diag(api, proc=proc)}"
    info = g.get(api)
    assert info["status"] == "error", info
    for s in expect:
        assert s in (info["error"] or ""), info
    assert entries_of(g.home, url) == [], list((g.home / "cache" / "remote").rglob("*"))
    assert tmp_contents(g.home) == [], tmp_contents(g.home)
    return proc.stderr


# ------------------------------------------------------------------------------------------
# s3:// with the ways of naming credentials and endpoint


def test_s3_with_env_endpoint(g, s3, bucket, projects_dir, onnx_models):
    s3.put(bucket, "iris.onnx", onnx_models / "iris.onnx")
    url = f"s3://{bucket}/iris.onnx"
    api = "s3env"
    proj = model_project(projects_dir, api, [model_api(api, url)])
    with_env(g, **s3_env(s3.endpoint)).deploy_ok(proj, api)
    predict_iris(g, api)
    [entry] = entries_of(g.home, url)
    assert (entry / "iris.onnx").read_bytes() == (onnx_models / "iris.onnx").read_bytes()


def test_s3_with_endpoint_in_config(g, s3, bucket, projects_dir, onnx_models):
    s3.put(bucket, "iris.onnx", onnx_models / "iris.onnx")
    api = "s3conf"
    spec = model_api(api, f"s3://{bucket}/iris.onnx", predictor={"s3": {"endpoint_url": s3.endpoint, "region": REGION}})
    proj = model_project(projects_dir, api, [spec])
    with_env(g, **s3_env(None)).deploy_ok(proj, api)
    predict_iris(g, api)


def test_s3_with_profile(g, s3, bucket, projects_dir, onnx_models, tmp_path):
    s3.put(bucket, "iris.onnx", onnx_models / "iris.onnx")
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n"
        f"[gyrustest]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    (home / ".aws" / "config").write_text(f"[profile gyrustest]\nregion = {REGION}\n")
    api = "s3prof"
    proj = model_project(projects_dir, api, [model_api(api, f"s3://{bucket}/iris.onnx")])
    env_g = with_env(g, HOME=str(home), AWS_PROFILE="gyrustest", AWS_ENDPOINT_URL=s3.endpoint)
    env_g.deploy_ok(proj, api)
    predict_iris(g, api)


# ------------------------------------------------------------------------------------------
# failures


FAILURES = {
    "wrong-secret": ('secret key does not match', f'"{ACCESS_KEY}"', "AWS_SECRET_ACCESS_KEY"),
    "no-such-key": ("no such key", '"nothere.onnx"'),
    "no-such-bucket": ("no such bucket",),
    "no-credentials": ("no credentials", "AWS_ACCESS_KEY_ID"),
    "closed-port": ("cannot reach",),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_s3_failures(g, s3, bucket, projects_dir, onnx_models, tmp_path, case):
    s3.put(bucket, "iris.onnx", onnx_models / "iris.onnx")
    key, env = "iris.onnx", s3_env(s3.endpoint)
    if case == "wrong-secret":
        env = s3_env(s3.endpoint, secret="not-the-secret")
    elif case == "no-such-key":
        key = "nothere.onnx"
    elif case == "no-such-bucket":
        bucket = f"missing-{uuid.uuid4().hex[:12]}"
    elif case == "no-credentials":
        empty = tmp_path / "home"
        empty.mkdir()
        env = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_REGION": REGION, "HOME": str(empty)}
    elif case == "closed-port":
        env = s3_env(f"http://127.0.0.1:{free_port()}")
    url = f"s3://{bucket}/{key}"
    api = f"fail-{case}"
    proj = model_project(projects_dir, api, [model_api(api, url)])
    expect = FAILURES[case] + (url,) + ((f'"{bucket}"',) if case == "no-such-bucket" else ())
    t0 = time.monotonic()
    deploy_fails(g, with_env(g, **env), proj, api, url, expect)
    assert time.monotonic() - t0 < 20


def test_failed_redeploy_keeps_serving(g, s3, bucket, projects_dir, onnx_models):
    s3.put(bucket, "iris.onnx", onnx_models / "iris.onnx")
    api = "s3keep"
    env_g = with_env(g, **s3_env(s3.endpoint))
    env_g.deploy_ok(model_project(projects_dir, api, [model_api(api, f"s3://{bucket}/iris.onnx")]), api)
    url = f"s3://{bucket}/gone.onnx"
    proc = env_g.deploy(model_project(projects_dir, api, [model_api(api, url)]), timeout=60)
    assert proc.returncode == 1 and "no such key" in proc.stderr, g.diag(api, proc=proc)
    assert entries_of(g.home, url) == []
    predict_iris(g, api)


# ------------------------------------------------------------------------------------------
# the cache


def test_cache_shared_and_refreshed(g, s3, bucket, projects_dir, onnx_models):
    proxy = Proxy(s3.port)
    try:
        s3.put(bucket, "model.onnx", onnx_models / "iris.onnx")
        url = f"s3://{bucket}/model.onnx"
        path = f"/{bucket}/model.onnx"
        env_g = with_env(g, **s3_env(proxy.endpoint))

        proj_a = model_project(projects_dir, "cache-a", [model_api("cache-a", url)])
        env_g.deploy_ok(proj_a, "cache-a")
        predict_iris(g, "cache-a")
        assert proxy.count("GET", path) == 1, proxy.requests
        assert len(entries_of(g.home, url)) == 1

        # Another API, same URL, object unchanged: no new download (a HEAD is fine).
        proj_b = model_project(projects_dir, "cache-b", [model_api("cache-b", url)])
        env_g.deploy_ok(proj_b, "cache-b")
        predict_iris(g, "cache-b")
        assert proxy.count("GET", path) == 1, proxy.requests
        assert len(entries_of(g.home, url)) == 1

        # The object changes; a refresh with the user's environment downloads it again.
        s3.put(bucket, "model.onnx", onnx_models / "mlp.onnx")
        proc = env_g.run("refresh", "cache-a", "--timeout", "60s", timeout=90)
        assert proc.returncode == 0, g.diag("cache-a", proc=proc)
        assert proxy.count("GET", path) == 2, proxy.requests
        assert len(entries_of(g.home, url)) == 2, entries_of(g.home, url)
        r = wait_until(
            lambda: (lambda r: r if r.status_code == 200 else None)(g.post("/cache-a", json={"x": [[0.5] * 64]})),
            30,
            what=lambda: "cache-a to serve the new model\n" + g.diag("cache-a"),
        )
        assert len(r.json()["logits"][0]) == 10, r.text
        # The API not refreshed keeps its model.
        predict_iris(g, "cache-b")
    finally:
        proxy.close()


def test_download_killed_half_way(s3, bucket, projects_dir, tmp_path_factory):
    """SIGKILL of the daemon in the middle of a download: no cache entry; the next deploy
    downloads the whole model and serves it."""
    base = tmp_path_factory.mktemp("killed")
    model = big_model(base / "big.onnx", 16_000_000)  # 64 MB
    size = model.stat().st_size
    s3.put(bucket, "big.onnx", model)
    url = f"s3://{bucket}/big.onnx"
    proxy = Proxy(s3.port)
    proxy.target_path = f"/{bucket}/big.onnx"
    proxy.rate = 4e6  # 16 s for all of it
    g2 = scrub(Gyrus(base / "home"), base / "user")
    try:
        env_g = with_env(g2, **s3_env(proxy.endpoint))
        api = "bigmodel"
        proj = model_project(projects_dir, api, [model_api(api, url)])
        proc = env_g.deploy(proj, "--no-wait", timeout=30)
        assert proc.returncode == 0, g2.diag(api, proc=proc)
        info = wait_until(
            lambda: (lambda i: i if "downloading" in (i.get("message") or "") and proxy.sent > 2_000_000 else None)(g2.get(api)),
            30,
            what=lambda: f"the download to be under way (sent {proxy.sent})\n" + g2.diag(api),
        )
        assert info["status"] == "updating" and url in info["message"], info
        pid = g2.health()["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10, what="the daemon to die")
        assert proxy.sent < size, "the download finished before the kill"
        assert cache_entries(g2.home) == [], cache_entries(g2.home)
        partial = [p for p in tmp_contents(g2.home) if p.is_file()]
        assert partial and all(p.stat().st_size < size for p in partial), partial

        proxy.rate = None
        env_g.deploy_ok(proj, api)
        r = g2.post(f"/{api}", json={"x": [1.0, 2.0]})
        assert r.status_code == 200 and r.json() == {"y": [2.5, 3.5]}, g2.diag(api, resp=r)
        [entry] = cache_entries(g2.home)
        assert (entry / "big.onnx").stat().st_size == size

        # After a restart the daemon (which keeps no credentials) serves the cached download.
        g2.stop_daemon()
        g2.start_daemon()
        wait_until(lambda: g2.get(api)["status"] == "live", 60, what=lambda: g2.diag(api))
        r = g2.post(f"/{api}", json={"x": [1.0]})
        assert r.status_code == 200 and r.json() == {"y": [2.5]}, g2.diag(api, resp=r)
        assert cache_entries(g2.home) == [entry]
    finally:
        g2.teardown()
        proxy.close()


@pytest.mark.parametrize(
    "case,expect",
    [("cut", ("incomplete download", "104821 bytes")), ("flip", ("checksum mismatch", "md5"))],
)
def test_corrupted_download(g, s3, bucket, projects_dir, onnx_models, case, expect):
    proxy = Proxy(s3.port)
    try:
        src = onnx_models / "mlp.onnx"
        assert src.stat().st_size == 104821
        s3.put(bucket, "mlp.onnx", src)
        url = f"s3://{bucket}/mlp.onnx"
        proxy.target_path = f"/{bucket}/mlp.onnx"
        if case == "cut":
            proxy.cut_fraction = 0.5
        else:
            proxy.flip_at = 777
        api = f"dl-{case}"
        proj = model_project(projects_dir, api, [model_api(api, url)])
        deploy_fails(g, with_env(g, **s3_env(proxy.endpoint)), proj, api, url, expect + (url,))
        assert proxy.count("GET", proxy.target_path) >= 1, proxy.requests
    finally:
        proxy.close()


# ------------------------------------------------------------------------------------------
# a prefix, and http://


def test_s3_directory_prefix(g, s3, bucket, projects_dir, onnx_models):
    s3.put(bucket, "many/iris.onnx", onnx_models / "iris.onnx")
    s3.put(bucket, "many/mlp/model.onnx", onnx_models / "mlp.onnx")
    api = "s3dir"
    spec = model_api(api, None, predictor={"models": {"dir": f"s3://{bucket}/many/"}})
    proj = model_project(projects_dir, api, [spec])
    with_env(g, **s3_env(s3.endpoint)).deploy_ok(proj, api)
    for name in ("iris", "mlp"):
        r = g.get_http(f"/{api}/v2/models/{name}/ready")
        assert r.status_code == 200, g.diag(api, resp=r)
    predict_iris(g, api, endpoint=f"/{api}?model=iris")
    r = g.post(f"/{api}?model=mlp", json={"x": [[0.5] * 64]})
    assert r.status_code == 200 and len(r.json()["logits"][0]) == 10, g.diag(api, resp=r)


def test_http_url(g, projects_dir, onnx_models):
    server = StaticServer(onnx_models)
    try:
        api = "httpmodel"
        proj = model_project(projects_dir, api, [model_api(api, f"{server.url}/iris.onnx")])
        g.deploy_ok(proj, api)
        predict_iris(g, api)

        api = "http404"
        url = f"{server.url}/nothere.onnx"
        proj = model_project(projects_dir, api, [model_api(api, url)])
        deploy_fails(g, g, proj, api, url, ("not found", "404", url))
    finally:
        server.close()


# ------------------------------------------------------------------------------------------
# TensorFlow SavedModels: an s3:// prefix (with version directories) and tar.gz archives


def tf_model_api(api: str, model: str, **predictor) -> dict:
    return {"name": api, "predictor": {"type": "tensorflow", "model": model, **predictor}}


def savedmodel_tar_gz(src: Path, dest: Path, top: str | None) -> Path:
    """`src` packed as a .tar.gz, under the directory `top` (or at the archive's root)."""
    import tarfile

    with tarfile.open(dest, "w:gz") as tar:
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src).as_posix()
            tar.add(p, arcname=f"{top}/{rel}" if top else rel, recursive=False)
    return dest


def predict_iris_tf(g: Gyrus, api: str, tf_dir: Path) -> None:
    from tf_helpers import oracle

    r = g.post(f"/{api}", json={"x": SETOSA})
    assert r.status_code == 200, g.diag(api, resp=r)
    want = oracle(tf_dir, {"x": SETOSA})
    assert r.json()["class_ids"] == want["class_ids"].tolist() == [0], r.text


def test_s3_savedmodel_prefix_with_versions(g, s3, bucket, projects_dir, tf_models):
    src = tf_models / "versions"
    for p in src.rglob("*"):
        if p.is_file():
            s3.put(bucket, f"tf/versions/{p.relative_to(src).as_posix()}", p)
    s3.put(bucket, "tf/iris/saved_model.pb", tf_models / "iris-x" / "saved_model.pb")
    for p in (tf_models / "iris-x").rglob("*"):
        if p.is_file():
            s3.put(bucket, f"tf/iris/{p.relative_to(tf_models / 'iris-x').as_posix()}", p)
    api = "s3tf"
    spec = {"name": api, "predictor": {"type": "tensorflow", "models": {"dir": f"s3://{bucket}/tf/"}}}
    proj = model_project(projects_dir, api, [spec])
    # The module's first TensorFlow deploy installs tensorflow-cpu into GYRUS_HOME/runtime.
    with_env(g, **s3_env(s3.endpoint)).deploy_ok(proj, api, timeout=600)
    meta = g.get_http(f"/{api}/v2/models/versions").json()
    assert meta["versions"] == ["2"] and meta["platform"] == "tensorflow_savedmodel", meta
    r = g.post(f"/{api}?model=versions", json={"x": [[1.0, 2.0]]})
    assert r.status_code == 200 and r.json() == {"y": [[2.0, 4.0]]}, g.diag(api, resp=r)
    r = g.post(f"/{api}?model=iris", json={"x": SETOSA})
    assert r.status_code == 200 and r.json()["class_ids"] == [0], g.diag(api, resp=r)


@pytest.mark.parametrize("top", [None, "model"])
def test_savedmodel_tar_gz_over_http_and_s3(g, s3, bucket, projects_dir, tf_models, tmp_path, top):
    archive = savedmodel_tar_gz(tf_models / "iris-x", tmp_path / "iris.tar.gz", top)
    server = StaticServer(tmp_path)
    try:
        api = f"tftgz-http-{top or 'root'}"
        proj = model_project(projects_dir, api, [tf_model_api(api, f"{server.url}/iris.tar.gz")])
        g.deploy_ok(proj, api)
        predict_iris_tf(g, api, tf_models / "iris-x")
    finally:
        server.close()
    s3.put(bucket, "models/iris.tgz", archive)
    api = f"tftgz-s3-{top or 'root'}"
    proj = model_project(projects_dir, api, [tf_model_api(api, f"s3://{bucket}/models/iris.tgz")])
    with_env(g, **s3_env(s3.endpoint)).deploy_ok(proj, api)
    predict_iris_tf(g, api, tf_models / "iris-x")
    unpacked = [p for p in (g.home / "cache" / "unpacked").iterdir() if not p.name.startswith(".")]
    assert len(unpacked) >= 1, unpacked


def test_savedmodel_zip_over_http(g, projects_dir, tf_models, tmp_path):
    import zipfile

    src = tf_models / "iris-x"
    with zipfile.ZipFile(tmp_path / "iris.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, f"iris/{p.relative_to(src).as_posix()}")
    server = StaticServer(tmp_path)
    try:
        api = "tfzip-http"
        proj = model_project(projects_dir, api, [tf_model_api(api, f"{server.url}/iris.zip")])
        g.deploy_ok(proj, api)
        predict_iris_tf(g, api, src)
    finally:
        server.close()


def test_a_savedmodel_archive_that_escapes_is_refused(g, projects_dir, tmp_path):
    import io
    import tarfile

    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("../outside/saved_model.pb")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    server = StaticServer(tmp_path)
    try:
        api = "tftgz-bad"
        proj = model_project(projects_dir, api, [tf_model_api(api, f"{server.url}/bad.tar.gz")])
        proc = g.deploy(proj, timeout=60)
        assert proc.returncode == 1, g.diag(api, proc=proc)
        assert "cannot be unpacked" in proc.stderr and "../outside/saved_model.pb" in proc.stderr, g.diag(api, proc=proc)
    finally:
        server.close()
    assert not (g.home / "cache" / "outside").exists()
