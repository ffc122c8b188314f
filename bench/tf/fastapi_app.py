"""Peer (c) of bench/tf_bench.py: the same TensorFlow SavedModels served by FastAPI + uvicorn,
written the way the FastAPI and TensorFlow docs suggest: each SavedModel loaded once at import
with tf.saved_model.load, its signatures["serving_default"] called per request; `async def`
endpoints with pydantic request and response models (the fastest form in bench/onnx_bench.py's
measurements); one uvicorn worker (uvloop + httptools).

  POST /iris-model  {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4,
                     "petal_width": 0.3}  -> {"class_ids": [0], "probabilities": [[...]]}
  POST /mlp-model   {"x": [[784 floats]]} -> {"logits": [[10 floats]]}

The answers are those of gyrus's model API for the same requests. TensorFlow runs with
BENCH_TF_THREADS intra-op and inter-op threads (default 1, as gyrus's engine does).

Run: BENCH_IRIS_MODEL=models/iris BENCH_MLP_MODEL=models/mlp \
     uvicorn fastapi_app:app --app-dir bench/tf --workers 1 --no-access-log
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel  # noqa: E402

THREADS = int(os.environ.get("BENCH_TF_THREADS", "1"))
tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(THREADS)

iris = tf.saved_model.load(os.environ["BENCH_IRIS_MODEL"]).signatures["serving_default"]
mlp = None
if os.environ.get("BENCH_MLP_MODEL"):
    mlp = tf.saved_model.load(os.environ["BENCH_MLP_MODEL"]).signatures["serving_default"]

app = FastAPI()


class IrisRequest(BaseModel):
    sepal_length: float
    sepal_width: float
    petal_length: float
    petal_width: float


class IrisResponse(BaseModel):
    class_ids: list[int]
    probabilities: list[list[float]]


class MlpRequest(BaseModel):
    x: list[list[float]]


class MlpResponse(BaseModel):
    logits: list[list[float]]


@app.post("/iris-model")
async def iris_model(req: IrisRequest) -> IrisResponse:
    out = iris(**{k: tf.constant([v], tf.float32) for k, v in req.model_dump().items()})
    return IrisResponse(class_ids=out["class_ids"].numpy().tolist(),
                        probabilities=out["probabilities"].numpy().tolist())


@app.post("/mlp-model")
async def mlp_model(req: MlpRequest) -> MlpResponse:
    out = mlp(x=tf.constant(np.asarray(req.x, dtype=np.float32)))
    return MlpResponse(logits=out["logits"].numpy().tolist())
