"""gyrus: save models to the local gyrus model store and load them back.

>>> import gyrus
>>> model = gyrus.onnx.save_model("iris", onnx_model)      # Model(tag="iris:...", path="...")
>>> sess = gyrus.onnx.load_model("iris:latest")            # onnxruntime.InferenceSession

The store is ``$GYRUS_HOME/models`` (default ``~/.gyrus/models``), shared with the gyrus daemon
and CLI; docs/model-store.md describes its layout.
"""

from . import onnx
from .store import AmbiguousTag, CorruptModel, Model, NotFound, Tag, __version__, get, list_models

__all__ = [
    "AmbiguousTag",
    "CorruptModel",
    "Model",
    "NotFound",
    "Tag",
    "__version__",
    "get",
    "list_models",
    "onnx",
]
