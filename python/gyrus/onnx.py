"""ONNX models in the gyrus store, the way ``bentoml.onnx`` does it.

``onnx`` and ``onnxruntime`` are imported when first needed, so that ``import gyrus`` works
without them (they are the ``gyrus[onnx]`` extra).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from . import store
from .store import Model, Tag

MODULE = "gyrus.onnx"
MODEL_FILE = "saved_model.onnx"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# ONNX Runtime's type names -> Open Inference Protocol datatypes (what the daemon speaks).
_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(bfloat16)": "BF16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
_SIGNATURE_KEYS = ("batchable", "batch_dim")


def _ort():
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise ImportError("gyrus.onnx needs onnxruntime: pip install 'gyrus[onnx]'") from e


def _check_labels(labels: Optional[Dict[str, str]]) -> Dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise TypeError(f"labels must be a dict of str to str, not {type(labels).__name__}")
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"labels must map str to str; got {k!r}: {v!r}")
    return dict(labels)


def _check_metadata(metadata: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise TypeError("metadata must be a dict with str keys and JSON values")
    try:
        # The round trip stores exactly the JSON value (tuples become lists), which YAML and the
        # Rust reader both take.
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata values must be JSON values: {e}") from e


def _check_signatures(signatures: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    if signatures is None:
        signatures = {"run": {"batchable": False}}  # BentoML's ONNX default
    if not isinstance(signatures, dict) or not signatures:
        raise TypeError("signatures must be a non-empty dict, e.g. {'run': {'batchable': True}}")
    out = {}
    for method, sig in signatures.items():
        sig = {} if sig is None else sig
        if not isinstance(method, str) or not method or not isinstance(sig, dict):
            raise TypeError(f"signature {method!r} must be a dict such as {{'batchable': True}}")
        unknown = set(sig) - set(_SIGNATURE_KEYS)
        if unknown:
            raise ValueError(
                f"signature {method!r}: unknown keys {sorted(unknown)}; allowed: "
                f"{', '.join(_SIGNATURE_KEYS)} (input and output specs come from the model)"
            )
        batchable, batch_dim = sig.get("batchable", False), sig.get("batch_dim", 0)
        if not isinstance(batchable, bool):
            raise TypeError(f"signature {method!r}: batchable must be True or False")
        if not isinstance(batch_dim, int) or isinstance(batch_dim, bool) or batch_dim < 0:
            raise TypeError(f"signature {method!r}: batch_dim must be an int >= 0")
        out[method] = {"batchable": batchable, "batch_dim": batch_dim, "input_spec": [], "output_spec": []}
    return out


def _spec(args) -> List[Dict[str, Any]]:
    # Anything not a known size (a symbol like "N", None, or a negative number) is dynamic: -1.
    # Non-tensor types (sequences, maps) keep ONNX Runtime's own name, having no OIP one.
    return [
        {
            "name": a.name,
            "datatype": _DATATYPES.get(a.type, a.type),
            "shape": [d if isinstance(d, int) and d >= 0 else -1 for d in (a.shape or [])],
        }
        for a in args
    ]


def _model_file(directory: Path) -> Path:
    """saved_model.onnx, else the one top-level *.onnx file (a model stored as a directory)."""
    if (directory / MODEL_FILE).is_file():
        return directory / MODEL_FILE
    # Any case of ".onnx", as the Rust store's model_file() accepts.
    found = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".onnx" and p.is_file())
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise FileNotFoundError(f"{directory} has {what} top-level .onnx files; expected one")
    return found[0]


def save_model(
    name: str,
    model: Any,
    *,
    signatures: Optional[Dict[str, Dict[str, Any]]] = None,
    labels: Optional[Dict[str, str]] = None,
    metadata: Optional[Dict[str, Any]] = None,
) -> Model:
    """Saves an ONNX model as a new version of ``name`` and returns it.

    ``model`` is an ``onnx.ModelProto``, a path to a .onnx file, or a path to a directory holding
    one top-level .onnx file and its external data. The stored copy must load in ONNX Runtime
    (CPU), or nothing is saved. ``signatures`` maps method names to ``{"batchable": bool,
    "batch_dim": int}`` (default ``{"run": {"batchable": False}}``); the ``run`` signature gets
    the model's input and output specs. ``labels`` map str to str; ``metadata`` values must be
    JSON values.
    """
    store.check_part("name", name)
    labels = _check_labels(labels)
    metadata = _check_metadata(metadata)
    signatures = _check_signatures(signatures)
    ort = _ort()
    try:
        onnx = importlib.import_module("onnx")
    except ImportError:
        onnx = None

    if isinstance(model, (str, os.PathLike)):
        src = Path(model)
        if not src.exists():
            raise FileNotFoundError(f"no ONNX model at {src}")
        if src.is_dir():
            _model_file(src)  # fail early, before staging, on an ambiguous directory
            if (src / store.MODEL_YAML).exists():
                raise ValueError(f"{src} has a {store.MODEL_YAML}, which the store writes itself")
    elif onnx is not None and isinstance(model, onnx.ModelProto):
        src = None
        try:
            onnx.checker.check_model(model)
        except Exception as e:
            raise ValueError(f"the ONNX model is not valid: {e}") from e
    else:
        raise TypeError(f"model must be an onnx.ModelProto or a path, not {type(model).__name__}")

    def write_files(stage: Path) -> Dict[str, Any]:
        if src is None:
            (stage / MODEL_FILE).write_bytes(model.SerializeToString())
        elif src.is_dir():
            shutil.copytree(src, stage, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, stage / MODEL_FILE)
        # Load the stored copy itself, so that a model that would not load (bad bytes, missing
        # external data) is never saved.
        try:
            sess = ort.InferenceSession(str(_model_file(stage)), providers=[CPU])
        except Exception as e:
            raise ValueError(f"ONNX Runtime cannot load the model: {e}") from e
        if "run" in signatures:
            signatures["run"]["input_spec"] = _spec(sess.get_inputs())
            signatures["run"]["output_spec"] = _spec(sess.get_outputs())
        return signatures

    versions = {"onnxruntime": ort.__version__}
    if onnx is not None:
        versions["onnx"] = onnx.__version__
    context = {
        "framework_name": "onnx",
        "framework_versions": versions,
        "gyrus_version": store.__version__,
    }
    return store.save(
        name, MODULE, write_files, context=context, labels=labels, metadata=metadata, options={}
    )


def get(tag: Union[str, Tag]) -> "OnnxModel":
    """The stored model ``tag`` resolves to; ValueError if another module saved it.

    Like ``bentoml.onnx.get``, the model makes a runner: ``get(tag).to_runner()``, or
    ``get(tag).with_options(providers=..., session_options=...).to_runner()``.
    """
    m = store.get(tag)
    if m.module != MODULE:
        raise ValueError(
            f"model {m.tag} was saved by module {m.module!r}, not {MODULE}, so gyrus.onnx cannot "
            f"load it"
        )
    return OnnxModel(m.tag, m.path, m.info)


class OnnxModel(Model):
    """A stored ONNX model, with the options its runners load it with."""

    def __init__(self, tag: Tag, path: Union[str, os.PathLike], info: Dict[str, Any], options=None):
        super().__init__(tag, path, info)
        self._options = dict(options or {})

    def with_options(self, *, providers: Optional[List[Any]] = None, session_options: Any = None) -> "OnnxModel":
        """A copy whose runners use these execution providers and session options."""
        options = dict(self._options)
        if providers is not None:
            options["providers"] = list(providers)
        if session_options is not None:
            options["session_options"] = session_options
        return OnnxModel(self.tag, self.path, self.info, options)

    def to_runner(self) -> "Runner":
        """A runner for this model, with one method per signature saved (``run`` by default)."""
        return Runner(self, **self._options)


# ONNX Runtime's tensor types -> numpy dtypes, to cast a runner's inputs as BentoML does.
_NUMPY = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


class Runner:
    """BentoML's ONNX runner, run in this process: ``runner.init_local()`` loads the model with
    ONNX Runtime, then ``runner.run.run(x)`` (or ``await runner.run.async_run(x)``) runs it.

    Inputs are given in the model's input order, or by name as keywords; each is cast to the
    input's dtype (a float64 array for a float32 input is fine). One output comes back as an
    array, several as a list of arrays.
    """

    def __init__(self, model: OnnxModel, providers: Optional[List[Any]] = None, session_options: Any = None):
        self.model = model
        self.name = model.name
        self.providers = providers
        self.session_options = session_options
        self._session = None
        for method in (model.info.get("signatures") or {"run": {}}):
            setattr(self, method, _RunnerMethod(self, method))

    def init_local(self, quiet: bool = False) -> None:
        """Loads the model here (the stored files are checked first, as load_model does)."""
        self._session = load_model(
            self.model, providers=self.providers, session_options=self.session_options
        )

    def __getattr__(self, name):
        model = self.__dict__.get("model")
        if name.startswith("_") or model is None:
            raise AttributeError(name)
        methods = sorted((model.info.get("signatures") or {"run": {}}))
        raise AttributeError(f"runner {self.name} has no method {name!r}; its signatures: {', '.join(methods)}")

    def _run(self, args, kwargs):
        if self._session is None:
            raise RuntimeError(
                f"runner {self.name} is not initialised: call runner.init_local() first (it loads "
                f"the model in this process)"
            )
        import numpy as np

        specs = self._session.get_inputs()
        if len(args) + len(kwargs) != len(specs):
            raise TypeError(
                f"runner {self.name} takes {len(specs)} input(s) ({', '.join(s.name for s in specs)}); "
                f"got {len(args) + len(kwargs)}"
            )
        feeds = {}
        for spec, value in zip(specs, args):
            feeds[spec.name] = value
        for name, value in kwargs.items():
            if name not in {s.name for s in specs} or name in feeds:
                raise TypeError(f"runner {self.name}: unexpected input {name!r}; inputs: {', '.join(s.name for s in specs)}")
            feeds[name] = value
        for spec in specs:
            dtype = _NUMPY.get(spec.type)
            feeds[spec.name] = np.asarray(feeds[spec.name], dtype=dtype) if dtype else np.asarray(feeds[spec.name])
        outputs = self._session.run(None, feeds)
        return outputs[0] if len(outputs) == 1 else outputs


class _RunnerMethod:
    def __init__(self, runner: Runner, name: str):
        self._runner = runner
        self.name = name

    def run(self, *args, **kwargs):
        return self._runner._run(args, kwargs)

    async def async_run(self, *args, **kwargs):
        import asyncio

        return await asyncio.to_thread(self._runner._run, args, kwargs)


def default_providers() -> List[str]:
    """CUDA then CPU when this onnxruntime has CUDA, else CPU only (BentoML's defaults)."""
    if CUDA in _ort().get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def load_model(
    tag: Union[str, Tag, Model],
    *,
    providers: Optional[List[Any]] = None,
    session_options: Any = None,
):
    """Loads a stored ONNX model as an ``onnxruntime.InferenceSession``.

    ``tag`` is ``name``, ``name:latest``, ``name:version``, a unique version prefix, or a
    Model. The stored files are checked against the sizes and sha256 digests in model.yaml
    first (``gyrus.CorruptModel`` if they differ). ``providers`` default to
    :func:`default_providers`.
    """
    m = get(tag.tag if isinstance(tag, Model) else tag)
    store.verify(m)  # first, so a deleted model file reads as corruption too
    path = _model_file(Path(m.path))
    return _ort().InferenceSession(
        str(path), sess_options=session_options, providers=providers or default_providers()
    )
