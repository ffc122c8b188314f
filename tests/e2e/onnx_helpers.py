"""Helpers of the ONNX end-to-end tests (tests/e2e/test_onnx_*.py).

The test models come from scripts/make_models.py, run once per pytest session into a tmp dir
(the `onnx_models` fixture in conftest.py calls `models_dir`). Expected values always come from
onnxruntime run in this process on the same model file (`oracle`), never from hard-coded
numbers. The Open Inference Protocol is spoken with tritonclient, its reference client.

Helpers:
  models_dir         the generated models (cached per session)
  make_models        scripts/make_models.py loaded as a module (IDENTITY_DTYPES, sample)
  model_project      a project folder with a cortex.yaml of model APIs and model files
  oracle / run_oracle  onnxruntime sessions on the model files (the expected answers)
  expected_metadata  what the v2 model metadata of a model file must say
  v2_client / v2_inputs / v2_outputs  tritonclient plumbing
  parallel_posts     many JSON POSTs in flight at once (one requests.Session per thread)
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from e2e_helpers import REPO, to_yaml, write_files

MAKE_MODELS = REPO / "scripts" / "make_models.py"

# onnxruntime's type strings -> the Open Inference Protocol's datatypes.
ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# Identity model suffix -> the Open Inference Protocol's datatype.
DTYPE_TO_V2 = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "string": "BYTES",
}

# Generous but bounded network timeouts for tritonclient (seconds).
V2_CONNECT_TIMEOUT = 10.0
V2_NETWORK_TIMEOUT = 60.0

_models_dir: Path | None = None


def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs scripts/make_models.py once per session; returns the folder holding the models."""
    global _models_dir
    if _models_dir is None:
        out = tmp_path_factory.mktemp("onnx-models")
        proc = subprocess.run(
            [sys.executable, str(MAKE_MODELS), str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, (
            f"scripts/make_models.py failed with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
        for name in ("iris.onnx", "mlp.onnx", "add.onnx", "fixed.onnx", "corrupt.onnx", "identity_string.onnx"):
            assert (out / name).is_file(), f"make_models.py did not write {name}\n{proc.stdout}"
        _models_dir = out
    return _models_dir


@lru_cache(maxsize=1)
def make_models():
    """scripts/make_models.py as a module (its IDENTITY_DTYPES and sample())."""
    spec = importlib.util.spec_from_file_location("gyrus_make_models", MAKE_MODELS)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def identity_dtypes() -> list[str]:
    return list(make_models().IDENTITY_DTYPES)


def identity_sample(dtype: str) -> np.ndarray:
    """The [2, 3] sample of an identity model's dtype (strings as np.object_ of bytes)."""
    return make_models().sample(dtype)


# ------------------------------------------------------------------------------------------
# projects


def model_project(
    base: Path,
    name: str,
    apis: list[dict],
    models: dict[str, Path] | None = None,
    files: dict[str, str | bytes] | None = None,
) -> Path:
    """A project folder `base/name` with cortex.yaml listing `apis` (written as given),
    the model files `models` (path in the project -> source file) and other `files`."""
    d = base / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for rel, src in (models or {}).items():
        target = d / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    write_files(d, files or {})
    (d / "cortex.yaml").write_text(to_yaml(apis))
    return d


def model_api(name: str, model: str | None = None, **extra: Any) -> dict:
    """The spec of a model API (`predictor.type: onnx`, no `path`), one replica."""
    predictor: dict[str, Any] = {"type": "onnx"}
    if model is not None:
        predictor["model"] = model
    predictor.update(extra.pop("predictor", {}))
    spec: dict[str, Any] = {"name": name, "predictor": predictor, "autoscaling": {"init_replicas": 1}}
    spec.update(extra)
    return spec


# ------------------------------------------------------------------------------------------
# the oracle: onnxruntime in this process


@lru_cache(maxsize=None)
def _session(path: str):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def oracle(path: Path):
    """An onnxruntime session on the model file (cached)."""
    return _session(str(Path(path).resolve()))


def run_oracle(path: Path, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
    """Runs the model in this process; returns {output name: array}. Values are converted to
    the dtype each input declares (as the server does for JSON numbers)."""
    s = oracle(path)
    types = {i.name: i.type for i in s.get_inputs()}
    arrays = {}
    for name, value in feeds.items():
        t = types[name]
        if t == "tensor(string)":
            arrays[name] = np.asarray(value, dtype=np.object_)
        else:
            arrays[name] = np.asarray(value).astype(ort_np_dtype(t))
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, arrays)))


def ort_np_dtype(ort_type: str):
    from tritonclient.utils import triton_to_np_dtype

    return triton_to_np_dtype(ORT_TO_V2[ort_type])


def _v2_shape(shape: list) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def signature(path: Path) -> dict[str, list[dict]]:
    """{"inputs": [...], "outputs": [...]} as the v2 model metadata lists them."""
    s = oracle(path)
    return {
        "inputs": [{"name": i.name, "datatype": ORT_TO_V2[i.type], "shape": _v2_shape(i.shape)} for i in s.get_inputs()],
        "outputs": [{"name": o.name, "datatype": ORT_TO_V2[o.type], "shape": _v2_shape(o.shape)} for o in s.get_outputs()],
    }


def expected_metadata(name: str, path: Path) -> dict:
    return {"name": name, "platform": "onnxruntime_onnx", "versions": ["1"], **signature(path)}


def tensor_entries(entries: list[dict]) -> list[dict]:
    """The name, datatype and shape of metadata tensor entries (other keys are allowed)."""
    return [{"name": e["name"], "datatype": e["datatype"], "shape": list(e["shape"])} for e in entries]


def python_signature(path: Path, which: str) -> dict[str, dict]:
    """onnx_client.input_signature()/output_signature() of a model file: dims unknown -> None."""
    s = oracle(path)
    items = s.get_inputs() if which == "inputs" else s.get_outputs()
    out = {}
    for i in items:
        np_dtype = ort_np_dtype(i.type)
        type_name = "string" if i.type == "tensor(string)" else np.dtype(np_dtype).name
        out[i.name] = {
            "type": type_name,
            "shape": [d if isinstance(d, int) and d >= 0 else None for d in i.shape],
        }
    return out


# ------------------------------------------------------------------------------------------
# tritonclient


def v2_client(g, endpoint: str = ""):
    """tritonclient's HTTP client for the v2 API at `endpoint` of gyrus `g` ("" = gateway root)."""
    import tritonclient.http as httpclient

    url = g.addr + ("/" + endpoint.strip("/") if endpoint.strip("/") else "")
    return httpclient.InferenceServerClient(
        url=url, connection_timeout=V2_CONNECT_TIMEOUT, network_timeout=V2_NETWORK_TIMEOUT
    )


def v2_inputs(arrays: dict[str, np.ndarray], binary: bool = True, datatypes: dict[str, str] | None = None) -> list:
    """tritonclient InferInputs for {name: array}; the datatype follows the array's dtype unless
    `datatypes` says otherwise."""
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    out = []
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        dt = (datatypes or {}).get(name) or np_to_triton_dtype(arr.dtype)
        inp = httpclient.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=binary)
        out.append(inp)
    return out


def v2_outputs(names: list[str], binary: bool = True) -> list:
    import tritonclient.http as httpclient

    return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]


def as_bytes_array(arr: np.ndarray) -> np.ndarray:
    """A BYTES result as bytes elements (tritonclient gives str elements in JSON mode)."""
    return np.vectorize(lambda v: v.encode("utf-8") if isinstance(v, str) else bytes(v), otypes=[np.object_])(arr)


def v2_error(excinfo) -> str:
    """The message of a tritonclient InferenceServerException (and its status)."""
    e = excinfo.value
    return f"status={e.status()} message={e.message()}"


# ------------------------------------------------------------------------------------------
# concurrency


def parallel_posts(url: str, bodies: list, threads: int = 16, timeout: float = 60) -> list[tuple[int, str]]:
    """POSTs each JSON body to `url` from `threads` threads; returns (status, text) in order.
    Each thread has its own requests.Session (a shared one's pool is not thread-safe)."""
    local = threading.local()
    sessions: list[requests.Session] = []
    lock = threading.Lock()

    def one(body):
        s = getattr(local, "session", None)
        if s is None:
            s = local.session = requests.Session()
            s.trust_env = False  # never send 127.0.0.1 through a proxy
            with lock:
                sessions.append(s)
        r = s.post(url, json=body, timeout=timeout)
        return r.status_code, r.text

    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, bodies))
    finally:
        for s in sessions:
            s.close()
