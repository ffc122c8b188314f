"""Helpers of the TensorFlow end-to-end tests (tests/e2e/test_tensorflow*.py).

The SavedModels come from scripts/make_tf_models.py, run once per pytest session into a tmp
dir (`tf_models`). Expected values come from TensorFlow itself, run in this process on the
same SavedModel (`oracle`), never from hard-coded numbers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from e2e_helpers import REPO

MAKE_TF_MODELS = REPO / "scripts" / "make_tf_models.py"
MODELS = ("iris", "iris-x", "mlp", "versions", "two-signatures", "strings", "kinds")

_models_dir: Path | None = None


def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs scripts/make_tf_models.py once per session; returns the folder holding the models."""
    global _models_dir
    if _models_dir is None:
        out = tmp_path_factory.mktemp("tf-models")
        proc = subprocess.run(
            [sys.executable, str(MAKE_TF_MODELS), str(out)], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, (
            f"scripts/make_tf_models.py failed with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
        for name in MODELS:
            assert (out / name).is_dir(), f"make_tf_models.py did not write {name}"
        _models_dir = out
    return _models_dir


def copy_model(src: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)


@lru_cache(maxsize=None)
def _signature(path: str, key: str):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    # Keep the loaded object alive with its signature.
    _keep.append(loaded)
    return loaded.signatures[key]


_keep: list = []


def oracle(model_dir: Path, inputs: dict, key: str = "serving_default") -> dict[str, np.ndarray]:
    """TensorFlow's own answer: the SavedModel's signature called on `inputs` in this process."""
    import tensorflow as tf

    fn = _signature(str(model_dir), key)
    specs = fn.structured_input_signature[1]
    feed = {name: tf.constant(np.asarray(value), dtype=specs[name].dtype) for name, value in inputs.items()}
    return {name: t.numpy() for name, t in fn(**feed).items()}
