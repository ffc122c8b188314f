#!/usr/bin/env python3
"""Writes model/1/, the SavedModel of Cortex's TensorFlow iris example: a tf.Module whose
serving signature takes the four measurements ("sepal_length", ... float32 [N]) and returns
"class_ids" (int64 [N]) and "probabilities" (float32 [N, 3]). Its weights are a logistic
regression fitted by scikit-learn on its bundled iris data (nothing is downloaded).

    .venv/bin/python examples/tensorflow-iris/train.py

Needs tensorflow-cpu and scikit-learn (both in tests/requirements.txt). Does nothing when
model/ exists.
"""

import runpy
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
if (here / "model").exists():
    sys.exit(0)
make = runpy.run_path(str(here.parents[1] / "scripts" / "make_tf_models.py"))
tmp = here / ".model.tmp"
make["save_iris"](tmp)
(tmp / "iris").rename(here / "model")
for leftover in sorted(tmp.rglob("*"), reverse=True):
    leftover.unlink() if leftover.is_file() else leftover.rmdir()
tmp.rmdir()
print(here / "model")
