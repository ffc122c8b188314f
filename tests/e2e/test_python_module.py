"""The `gyrus` Python package (python/): gyrus.onnx.save_model / load_model / get and
gyrus.list_models against the model store contract of docs/model-store.md.

These tests need no gyrus binary or daemon: they drive the package in-process, each with its own
GYRUS_HOME under tmp_path. The package must be installed in the test environment
(`.venv/bin/python -m pip install ./python`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import gyrus
from gyrus import store

RULE = "^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$"
VERSION = re.compile(r"^[0-9a-v]{16}$")
CONTRACT_KEYS = [
    "name",
    "version",
    "module",
    "labels",
    "options",
    "metadata",
    "context",
    "signatures",
    "creation_time",
    "size",
    "files",
]
# onnx 1.23 writes IR version 14 by default, newer than onnxruntime 1.31 reads.
IR_VERSION = 10
B = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


@pytest.fixture(scope="session", autouse=True)
def _binary_exists():
    """Overrides conftest's check for the gyrus binary: this module runs without it."""


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A fresh GYRUS_HOME per test, so nothing touches ~/.gyrus."""
    h = tmp_path / "home"
    monkeypatch.setenv("GYRUS_HOME", str(h))
    return h


def add_model() -> onnx.ModelProto:
    """Y = X + B, X of shape [N, 3] with a dynamic batch dim N."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "B"], ["Y"])],
        "add",
        [x],
        [y],
        [numpy_helper.from_array(B, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)


def conv_model() -> onnx.ModelProto:
    """A super-resolution-like Conv: [N, 1, 8, 8] -> [N, 2, 8, 8]; channel 0 is the identity
    kernel and channel 1 sums the 3x3 neighbourhood."""
    w = np.zeros((2, 1, 3, 3), dtype=np.float32)
    w[0, 0, 1, 1] = 1.0
    w[1, 0] = 1.0
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", 1, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", 2, 8, 8])
    node = helper.make_node("Conv", ["input", "W"], ["output"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    graph = helper.make_graph([node], "sr", [x], [y], [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)


def models(home: Path) -> Path:
    return home / "models"


def names_in(home: Path) -> list[str]:
    """Model name directories (not dot-dirs) under models/."""
    if not models(home).exists():
        return []
    return sorted(p.name for p in models(home).iterdir() if not p.name.startswith("."))


def staging(home: Path) -> list[str]:
    d = models(home) / ".staging"
    return sorted(os.listdir(d)) if d.exists() else []


def read_yaml(m: gyrus.Model) -> dict:
    return yaml.safe_load(Path(m.path, "model.yaml").read_text())


def decode(version: str) -> bytes:
    raw = base64.b32hexdecode(version.upper())
    assert len(raw) == 10
    return raw


def fixed_versions(monkeypatch, versions: list[str]) -> None:
    """Makes the next saves use these versions, in order."""
    it = iter(versions)
    monkeypatch.setattr(store, "new_version", lambda now: next(it))


# ------------------------------------------------------------------------------------------
# save and load


def test_save_then_load_runs_the_model(home):
    m = gyrus.onnx.save_model("adder", add_model())
    assert isinstance(m.tag, gyrus.Tag) and m.tag.name == "adder" and VERSION.match(m.tag.version)
    assert m.path == str(models(home) / "adder" / m.tag.version)
    assert repr(m) == f'Model(tag="adder:{m.tag.version}", path="{m.path}")'
    assert sorted(os.listdir(m.path)) == ["model.yaml", "saved_model.onnx"]

    sess = gyrus.onnx.load_model("adder")
    assert isinstance(sess, ort.InferenceSession)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    (y,) = sess.run(None, {"X": x})
    np.testing.assert_array_equal(y, x + B)
    assert staging(home) == []


@pytest.mark.parametrize("as_path", [str, Path])
def test_save_from_a_file_path(home, tmp_path, as_path):
    src = tmp_path / "adder.onnx"
    onnx.save_model(add_model(), src)
    m = gyrus.onnx.save_model("adder", as_path(src))
    assert Path(m.path, "saved_model.onnx").read_bytes() == src.read_bytes()
    (y,) = gyrus.onnx.load_model(m.tag).run(None, {"X": np.zeros((2, 3), np.float32)})
    np.testing.assert_array_equal(y, np.broadcast_to(B, (2, 3)))


def test_save_a_directory_with_external_data(home, tmp_path):
    src = tmp_path / "dir"
    src.mkdir()
    onnx.save_model(add_model(), src / "adder.onnx", save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    m = gyrus.onnx.save_model("adder", src)
    info = read_yaml(m)
    assert [f["path"] for f in info["files"]] == ["adder.onnx", "weights.bin"]
    (y,) = gyrus.onnx.load_model("adder").run(None, {"X": np.ones((1, 3), np.float32)})
    np.testing.assert_array_equal(y, 1 + B)


def test_missing_path_and_wrong_type(home, tmp_path):
    with pytest.raises(FileNotFoundError):
        gyrus.onnx.save_model("adder", tmp_path / "nope.onnx")
    with pytest.raises(TypeError, match="ModelProto or a path"):
        gyrus.onnx.save_model("adder", b"bytes")
    assert names_in(home) == []


# ------------------------------------------------------------------------------------------
# versions, latest and tag resolution


def test_versions_increase_and_latest_names_the_newest(home):
    first = gyrus.onnx.save_model("adder", add_model())
    second = gyrus.onnx.save_model("adder", add_model())
    for m in (first, second):
        assert VERSION.match(m.tag.version), m.tag.version
    # Versions increase as the 10 bytes they encode (as strings they need not: base32 puts
    # '2'-'7' after 'z', ASCII before 'a').
    assert decode(second.tag.version) > decode(first.tag.version)
    assert (models(home) / "adder" / "latest").read_bytes() == second.tag.version.encode()
    assert gyrus.get("adder") == second
    assert gyrus.onnx.get("adder:latest") == second
    assert gyrus.list_models() == [second, first]
    assert gyrus.list_models("adder") == [second, first]
    assert gyrus.list_models("other") == []
    # The version's first 6 bytes are its creation time in Unix milliseconds.
    for m in (first, second):
        created = dt.datetime.fromisoformat(read_yaml(m)["creation_time"])
        ms = int.from_bytes(decode(m.tag.version)[:6], "big")
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        assert ms == (created - epoch) // dt.timedelta(milliseconds=1)


def test_tag_resolution(home, monkeypatch):
    fixed_versions(monkeypatch, ["c5r2m1kq0gq9w3ab", "c5r2m1kq0gq9w3ac", "d7aaaaaaaaaaaaaa"])
    a, b, c = (gyrus.onnx.save_model("adder", add_model()) for _ in range(3))
    assert gyrus.get("adder") == c
    assert gyrus.get("adder:latest") == c
    assert gyrus.get("adder:c5r2m1kq0gq9w3ab") == a
    assert gyrus.get(gyrus.Tag("adder", "c5r2m1kq0gq9w3ac")) == b
    assert gyrus.get("adder:d") == c
    # A prefix of both is ambiguous, and the error lists both, newest first.
    with pytest.raises(gyrus.AmbiguousTag) as err:
        gyrus.get("adder:c5r2")
    assert isinstance(err.value, ValueError)
    assert "c5r2m1kq0gq9w3ac, c5r2m1kq0gq9w3ab" in str(err.value)
    # load_model resolves the same way.
    assert gyrus.onnx.load_model("adder:c5r2m1kq0gq9w3ab") is not None


def test_tag_resolution_ignores_the_ambiguous_check_for_a_unique_prefix(home, monkeypatch):
    fixed_versions(monkeypatch, ["aaaaaaaaaaaaaaaa", "abaaaaaaaaaaaaaa"])
    a, b = (gyrus.onnx.save_model("adder", add_model()) for _ in range(2))
    assert gyrus.get("adder:aa") == a and gyrus.get("adder:ab") == b
    with pytest.raises(gyrus.AmbiguousTag):
        gyrus.get("adder:a")


def test_not_found_lists_versions_newest_first_at_most_five(home, monkeypatch):
    versions = [f"aaaaaaaaaaaaaa{c}a" for c in "abcdefg"]
    fixed_versions(monkeypatch, versions)
    for _ in versions:
        gyrus.onnx.save_model("adder", add_model())
    with pytest.raises(gyrus.NotFound) as err:
        gyrus.get("adder:zz")
    msg = str(err.value)
    assert isinstance(err.value, LookupError)
    newest_five = ", ".join(reversed(versions[2:]))
    assert newest_five in msg and "(and 2 more)" in msg
    assert versions[0] not in msg


def test_not_found_lists_names_and_empty_store(home):
    with pytest.raises(gyrus.NotFound, match="is empty"):
        gyrus.get("adder")
    with pytest.raises(gyrus.NotFound, match="is empty"):
        gyrus.onnx.load_model("adder:latest")
    assert gyrus.list_models() == []
    assert not home.exists(), "reading must not create the store"
    gyrus.onnx.save_model("adder", add_model())
    gyrus.onnx.save_model("conv", conv_model())
    with pytest.raises(gyrus.NotFound, match=r'no model named "other"; the store has adder, conv'):
        gyrus.get("other")


@pytest.mark.parametrize("bad", ["Iris", "-a", "a-", "a b", "a:", ":v", "a:B", "a:v:w", "é", "a" * 64])
def test_invalid_tags_quote_the_rule(home, bad):
    with pytest.raises(ValueError) as err:
        gyrus.get(bad)
    assert RULE in str(err.value)


def test_list_is_newest_first_by_creation_time_then_version(home, monkeypatch):
    fixed_versions(monkeypatch, ["aaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaa7", "aaaaaaaaaaaaaaab"])
    a, b, c = (gyrus.onnx.save_model("adder", add_model()) for _ in range(3))

    def set_time(m, value):
        p = Path(m.path, "model.yaml")
        info = yaml.safe_load(p.read_text())
        info["creation_time"] = value
        p.write_text(yaml.safe_dump(info, sort_keys=False))

    # The Rust side may write "Z" and nanoseconds; a later creation_time wins over save order.
    set_time(a, "2999-01-01T00:00:00.123456789Z")
    set_time(b, "2000-01-01T00:00:00+00:00")
    set_time(c, "2000-01-01T01:00:00+01:00")  # the same instant as b
    # b and c tie on time; then the version decides (base32hex: '7' is 7, before 'b' = 11).
    assert gyrus.list_models() == [gyrus.get("adder:aaaaaaaaaaaaaaaa"), gyrus.get("adder:aaaaaaaaaaaaaaab"),
                                   gyrus.get("adder:aaaaaaaaaaaaaaa7")]


def test_latest_pointer_missing_or_stale_falls_back_to_the_newest(home):
    first = gyrus.onnx.save_model("adder", add_model())
    second = gyrus.onnx.save_model("adder", add_model())
    (models(home) / "adder" / "latest").unlink()
    assert gyrus.get("adder") == second
    (models(home) / "adder" / "latest").write_text("zzzzzzzzzzzzzzzz")
    assert gyrus.get("adder") == second
    (models(home) / "adder" / "latest").write_text(first.tag.version)
    assert gyrus.get("adder") == first  # the pointer wins when it names a version


def test_save_moves_latest_only_forward(home, monkeypatch):
    newest = gyrus.onnx.save_model("adder", add_model())
    latest = models(home) / "adder" / "latest"
    # A save created earlier that finishes later (a slower, concurrent one) leaves `latest` to
    # the newer version.
    hour_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    times = iter(hour_ago + dt.timedelta(minutes=i) for i in range(10))
    monkeypatch.setattr(store, "_now", lambda: next(times))
    slower = gyrus.onnx.save_model("adder", add_model())
    assert latest.read_text() == newest.tag.version
    assert gyrus.get("adder") == newest
    assert gyrus.list_models("adder") == [newest, slower]
    # A dangling, missing or unreadable `latest` counts as older.
    latest.write_text("zzzzzzzzzzzzzzzz")
    a = gyrus.onnx.save_model("adder", add_model())
    assert latest.read_text() == a.tag.version
    latest.unlink()
    b = gyrus.onnx.save_model("adder", add_model())
    assert latest.read_text() == b.tag.version
    broken = models(home) / "adder" / "broken000000000"
    broken.mkdir()
    (broken / "model.yaml").write_text("name: [adder\n")
    latest.write_text(broken.name)
    c = gyrus.onnx.save_model("adder", add_model())
    assert latest.read_text() == c.tag.version
    # Same creation time: the larger version wins.
    monkeypatch.setattr(store, "_now", lambda: hour_ago + dt.timedelta(minutes=30))
    fixed_versions(monkeypatch, ["0000000000000002", "0000000000000001", "0000000000000003"])
    d2 = gyrus.onnx.save_model("adder", add_model())
    assert latest.read_text() == d2.tag.version
    gyrus.onnx.save_model("adder", add_model())
    assert latest.read_text() == d2.tag.version
    d3 = gyrus.onnx.save_model("adder", add_model())
    assert latest.read_text() == d3.tag.version
    assert [p.name for p in latest.parent.iterdir() if p.name.startswith("latest.")] == []


def test_readers_skip_what_is_not_a_version(home):
    m = gyrus.onnx.save_model("adder", add_model())
    ndir = models(home) / "adder"
    (ndir / ".hidden").mkdir()
    (ndir / "incomplete0000000").mkdir()  # a version dir without model.yaml
    (ndir / "latest.1234abcd").write_text("x")  # a leftover temp pointer
    (models(home) / ".staging" / "leftover").mkdir()
    (models(home) / "empty-name").mkdir()
    # Unknown keys in model.yaml are ignored.
    with open(Path(m.path, "model.yaml"), "a") as f:
        f.write("future_key: {a: 1}\n")
    assert gyrus.list_models() == [m]
    assert gyrus.get("adder") == m
    with pytest.raises(gyrus.NotFound, match="the store has adder$"):
        gyrus.get("empty-name")
    gyrus.onnx.load_model("adder")


# ------------------------------------------------------------------------------------------
# model.yaml


def test_model_yaml_follows_the_contract(home):
    m = gyrus.onnx.save_model("adder", add_model(), labels={"team": "ml"}, metadata={"acc": 0.97, "tags": ["a"]})
    text = Path(m.path, "model.yaml").read_text()
    info = yaml.safe_load(text)
    assert list(info) == CONTRACT_KEYS
    assert m.info == info
    assert info["name"] == "adder" and info["version"] == m.tag.version
    assert info["module"] == "gyrus.onnx"
    assert info["labels"] == {"team": "ml"}
    assert info["options"] == {}
    assert info["metadata"] == {"acc": 0.97, "tags": ["a"]}
    assert list(info["context"]) == ["framework_name", "framework_versions", "gyrus_version"]
    assert info["context"]["framework_name"] == "onnx"
    assert info["context"]["framework_versions"] == {"onnxruntime": ort.__version__, "onnx": onnx.__version__}
    assert info["context"]["gyrus_version"] == gyrus.__version__ == "0.1.0"
    assert info["signatures"] == {
        "run": {
            "batchable": False,
            "batch_dim": 0,
            "input_spec": [{"name": "X", "datatype": "FP32", "shape": [-1, 3]}],
            "output_spec": [{"name": "Y", "datatype": "FP32", "shape": [-1, 3]}],
        }
    }
    assert list(info["signatures"]["run"]) == ["batchable", "batch_dim", "input_spec", "output_spec"]
    # RFC 3339 with a time zone, and a string (quoted), not a YAML timestamp.
    created = info["creation_time"]
    assert isinstance(created, str)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)", created)
    assert dt.datetime.fromisoformat(created).tzinfo is not None
    # files: every file but model.yaml, with its size and sha256; size is their sum.
    on_disk = sorted(p.relative_to(m.path).as_posix() for p in Path(m.path).rglob("*") if p.is_file())
    assert [f["path"] for f in info["files"]] == [p for p in on_disk if p != "model.yaml"]
    for f in info["files"]:
        data = Path(m.path, f["path"]).read_bytes()
        assert list(f) == ["path", "size", "sha256"]
        assert f["size"] == len(data)
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["size"] == sum(f["size"] for f in info["files"])


def test_signatures(home):
    m = gyrus.onnx.save_model(
        "adder", add_model(), signatures={"run": {"batchable": True, "batch_dim": 0}, "run_with_iobinding": {}}
    )
    sigs = read_yaml(m)["signatures"]
    assert sigs["run"]["batchable"] is True and sigs["run"]["batch_dim"] == 0
    assert sigs["run"]["input_spec"][0]["shape"] == [-1, 3]
    assert sigs["run_with_iobinding"] == {"batchable": False, "batch_dim": 0, "input_spec": [], "output_spec": []}
    with pytest.raises(ValueError, match="unknown keys"):
        gyrus.onnx.save_model("other", add_model(), signatures={"run": {"batchsize": 4}})
    with pytest.raises(TypeError, match="batchable"):
        gyrus.onnx.save_model("other", add_model(), signatures={"run": {"batchable": "yes"}})
    with pytest.raises(TypeError, match="batch_dim"):
        gyrus.onnx.save_model("other", add_model(), signatures={"run": {"batch_dim": 1.5}})
    assert names_in(home) == ["adder"]


def test_datatypes_and_shapes_from_the_model(home):
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [None, "seq", 2])
    o = helper.make_tensor_value_info("o", TensorProto.DOUBLE, [None, "seq", 2])
    graph = helper.make_graph([helper.make_node("Cast", ["i"], ["o"], to=TensorProto.DOUBLE)], "cast", [i], [o])
    m = gyrus.onnx.save_model("cast", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION))
    run = read_yaml(m)["signatures"]["run"]
    assert run["input_spec"] == [{"name": "i", "datatype": "INT64", "shape": [-1, -1, 2]}]
    assert run["output_spec"] == [{"name": "o", "datatype": "FP64", "shape": [-1, -1, 2]}]


# ------------------------------------------------------------------------------------------
# failures leave nothing behind


@pytest.mark.parametrize("bad", ["Adder", "my model", "-x", "x" * 64, ""])
def test_invalid_name_writes_nothing(home, bad):
    with pytest.raises(ValueError) as err:
        gyrus.onnx.save_model(bad, add_model())
    assert RULE in str(err.value)
    assert not models(home).exists() or names_in(home) == []


def test_invalid_model_bytes_leave_nothing(home, tmp_path):
    gyrus.onnx.save_model("adder", add_model())
    before = sorted(os.listdir(models(home) / "adder"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    for name in ("junk", "adder"):
        with pytest.raises(ValueError, match="ONNX Runtime cannot load"):
            gyrus.onnx.save_model(name, junk)
    assert names_in(home) == ["adder"]
    assert sorted(os.listdir(models(home) / "adder")) == before
    assert staging(home) == []


def test_invalid_model_proto_leaves_nothing(home):
    # Fails onnx.checker: Y is never produced.
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])
    broken = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["Z"], ["Y"])], "g", [x], [y]), ir_version=IR_VERSION
    )
    with pytest.raises(ValueError, match="not valid"):
        gyrus.onnx.save_model("broken", broken)
    # Passes the checker (an unknown domain is not checked) but ONNX Runtime refuses it.
    custom = helper.make_model(
        helper.make_graph([helper.make_node("Magic", ["X"], ["Y"], domain="com.example")], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)],
        ir_version=IR_VERSION,
    )
    with pytest.raises(ValueError, match="ONNX Runtime cannot load"):
        gyrus.onnx.save_model("custom", custom)
    assert names_in(home) == [] and staging(home) == []


@pytest.mark.parametrize("where", ["hashing", "rename"])
def test_interrupted_save_leaves_nothing(home, monkeypatch, where):
    kept = gyrus.onnx.save_model("kept", add_model())

    def boom(*args, **kwargs):
        raise OSError("interrupted")

    with monkeypatch.context() as mp:
        if where == "hashing":  # after the model file is written to staging
            mp.setattr(store, "sha256_file", boom)
        else:  # after model.yaml is written, at the commit
            mp.setattr(store.os, "rename", boom)
        for name in ("adder", "kept"):
            with pytest.raises(OSError, match="interrupted"):
                gyrus.onnx.save_model(name, add_model())
    assert names_in(home) == ["kept"]
    assert staging(home) == []
    assert sorted(os.listdir(models(home) / "kept")) == sorted(["latest", kept.tag.version])
    assert gyrus.list_models() == [kept]


def test_labels_and_metadata_are_validated(home):
    for labels in ({"a": 1}, {1: "a"}, ["a"], {"a": None}):
        with pytest.raises(TypeError, match="labels"):
            gyrus.onnx.save_model("adder", add_model(), labels=labels)
    for metadata in ({"a": object()}, {1: "a"}, {"a": float("nan")}, {"a": np.float32(1)}, "x"):
        with pytest.raises(TypeError, match="metadata"):
            gyrus.onnx.save_model("adder", add_model(), metadata=metadata)
    assert not models(home).exists() or names_in(home) == []
    m = gyrus.onnx.save_model("adder", add_model(), metadata={"t": (1, 2), "n": None, "d": {"x": True}})
    assert read_yaml(m)["metadata"] == {"t": [1, 2], "n": None, "d": {"x": True}}


# ------------------------------------------------------------------------------------------
# loading


def test_corrupted_store_copy_is_refused(home):
    m = gyrus.onnx.save_model("adder", add_model())
    f = Path(m.path, "saved_model.onnx")
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    f.write_bytes(bytes(data))
    with pytest.raises(gyrus.CorruptModel, match="corrupted"):
        gyrus.onnx.load_model("adder")
    f.write_bytes(bytes(data[:-1]))
    with pytest.raises(gyrus.CorruptModel, match="corrupted"):
        gyrus.onnx.load_model("adder")
    f.unlink()
    with pytest.raises(gyrus.CorruptModel, match="missing"):
        gyrus.onnx.load_model("adder")


def test_load_refuses_another_module(home):
    m = gyrus.onnx.save_model("adder", add_model())
    p = Path(m.path, "model.yaml")
    p.write_text(p.read_text().replace("module: gyrus.onnx", "module: gyrus.sklearn"))
    assert gyrus.get("adder").module == "gyrus.sklearn"
    with pytest.raises(ValueError, match="gyrus.sklearn"):
        gyrus.onnx.load_model("adder")


def test_default_providers(home):
    gyrus.onnx.save_model("adder", add_model())
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert gyrus.onnx.default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        assert gyrus.onnx.default_providers() == ["CPUExecutionProvider"]
        assert gyrus.onnx.load_model("adder").get_providers() == ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = gyrus.onnx.load_model("adder", providers=["CPUExecutionProvider"], session_options=opts)
    assert sess.get_providers() == ["CPUExecutionProvider"]


def test_super_resolution_flow_from_the_bentoml_docs(home, tmp_path):
    """Seed 004: BentoML's ONNX guide with `gyrus` in place of `bentoml`."""
    onnx.save_model(conv_model(), tmp_path / "super_resolution.onnx")
    onnx_model = onnx.load(str(tmp_path / "super_resolution.onnx"))

    signatures = {"run": {"batchable": True}}
    model = gyrus.onnx.save_model("onnx_super_resolution", onnx_model, signatures=signatures)
    assert re.fullmatch(
        r'Model\(tag="onnx_super_resolution:[0-9a-v]{16}", path="[^"]+/models/onnx_super_resolution/[0-9a-v]{16}"\)',
        repr(model),
    )

    ort_session = gyrus.onnx.load_model("onnx_super_resolution")
    test_input = np.random.default_rng(0).standard_normal((2, 1, 8, 8))  # any batch size
    (out,) = ort_session.run(None, {"input": test_input.astype(np.float32)})
    assert out.shape == (2, 2, 8, 8)
    np.testing.assert_allclose(out[:, 0], test_input[:, 0], rtol=1e-6)
    padded = np.pad(test_input[:, 0], ((0, 0), (1, 1), (1, 1)))
    box = sum(padded[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3))
    np.testing.assert_allclose(out[:, 1], box, rtol=1e-5, atol=1e-5)

    sess = gyrus.onnx.load_model("onnx_super_resolution:latest", providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"input": test_input.astype(np.float32)})[0], out)

    got = gyrus.onnx.get("onnx_super_resolution")
    assert got == model
    run = got.info["signatures"]["run"]
    assert run["batchable"] is True and run["batch_dim"] == 0
    assert run["input_spec"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert run["output_spec"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 2, 8, 8]}]
    assert gyrus.list_models() == [model]


def test_runners_as_bentoml_makes_them(home):
    """Seed 004's flow: get(tag).to_runner(), init_local(), run.run / async_run, with_options."""
    import asyncio

    gyrus.onnx.save_model("adder", add_model())
    runner = gyrus.onnx.get("adder").to_runner()
    assert runner.name == "adder"
    with pytest.raises(RuntimeError, match=r"call runner.init_local\(\) first"):
        runner.run.run(np.zeros((1, 3)))
    runner.init_local()
    # float64 in, as numpy makes it: cast to the model's float32, as BentoML's runner does.
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    y = runner.run.run(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float32) + B)
    np.testing.assert_array_equal(runner.run.run(X=x.tolist()), y)
    np.testing.assert_array_equal(asyncio.run(runner.run.async_run(x)), y)
    with pytest.raises(TypeError, match=r"takes 1 input\(s\) \(X\); got 2"):
        runner.run.run(x, x)
    with pytest.raises(AttributeError, match="no method 'predict'; its signatures: run"):
        runner.predict  # noqa: B018 - the attribute access is the test

    # with_options: providers and session options reach the session.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    tuned = gyrus.onnx.get("adder").with_options(providers=["CPUExecutionProvider"], session_options=options)
    r2 = tuned.to_runner()
    r2.init_local()
    assert r2._session.get_providers() == ["CPUExecutionProvider"]
    assert r2._session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_array_equal(r2.run.run(x), y)
    # A model saved with other signatures gets those methods.
    gyrus.onnx.save_model("adder2", add_model(), signatures={"predict": {"batchable": True}})
    r3 = gyrus.onnx.get("adder2").to_runner()
    r3.init_local()
    np.testing.assert_array_equal(r3.predict.run(x), y)
