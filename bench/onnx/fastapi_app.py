"""Peer (c): the same ONNX models served by FastAPI + uvicorn + onnxruntime, written the way
the FastAPI docs suggest. One InferenceSession per model, created once at import with
intra_op_num_threads=1; one uvicorn worker (uvloop + httptools).

  POST /iris-model  {"input": [[5.1, 3.5, 1.4, 0.2]]} -> {"label": [0], "probabilities": [[...]]}
  POST /mlp-model   {"x": [[64 floats]]}              -> {"logits": [[10 floats]]}

Run: BENCH_IRIS_MODEL=iris.onnx BENCH_MLP_MODEL=mlp.onnx \
     uvicorn fastapi_app:app --app-dir bench/onnx --workers 1 --no-access-log

BENCH_FASTAPI_FORM picks the endpoint form (bench/onnx_bench.py measured all four and uses
the fastest, `async-pydantic`):
  async-pydantic  `async def`, pydantic request model, pydantic response model (return type)
  sync-pydantic   `def` (FastAPI runs it in its thread pool), same models
  async-request   `async def`, `await request.json()`, returns a dict (no response model)
  sync-request    `def` with the body parsed by FastAPI as `dict = Body()`, returns a dict
"""
import os

import numpy as np
import onnxruntime as ort
from fastapi import Body, FastAPI, Request
from pydantic import BaseModel


def load(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


iris = load(os.environ["BENCH_IRIS_MODEL"])
mlp = load(os.environ["BENCH_MLP_MODEL"]) if os.environ.get("BENCH_MLP_MODEL") else None
FORM = os.environ.get("BENCH_FASTAPI_FORM", "async-pydantic")

app = FastAPI()


class IrisRequest(BaseModel):
    input: list[list[float]]


class IrisResponse(BaseModel):
    label: list[int]
    probabilities: list[list[float]]


class MlpRequest(BaseModel):
    x: list[list[float]]


class MlpResponse(BaseModel):
    logits: list[list[float]]


def predict_iris(rows):
    label, probabilities = iris.run(None, {"input": np.asarray(rows, dtype=np.float32)})
    return {"label": label.tolist(), "probabilities": probabilities.tolist()}


def predict_mlp(rows):
    (logits,) = mlp.run(None, {"x": np.asarray(rows, dtype=np.float32)})
    return {"logits": logits.tolist()}


if FORM == "async-pydantic":

    @app.post("/iris-model")
    async def iris_model(req: IrisRequest) -> IrisResponse:
        return IrisResponse(**predict_iris(req.input))

    @app.post("/mlp-model")
    async def mlp_model(req: MlpRequest) -> MlpResponse:
        return MlpResponse(**predict_mlp(req.x))

elif FORM == "sync-pydantic":

    @app.post("/iris-model")
    def iris_model(req: IrisRequest) -> IrisResponse:
        return IrisResponse(**predict_iris(req.input))

    @app.post("/mlp-model")
    def mlp_model(req: MlpRequest) -> MlpResponse:
        return MlpResponse(**predict_mlp(req.x))

elif FORM == "async-request":

    @app.post("/iris-model")
    async def iris_model(request: Request):
        return predict_iris((await request.json())["input"])

    @app.post("/mlp-model")
    async def mlp_model(request: Request):
        return predict_mlp((await request.json())["x"])

elif FORM == "sync-request":

    @app.post("/iris-model")
    def iris_model(body: dict = Body()):
        return predict_iris(body["input"])

    @app.post("/mlp-model")
    def mlp_model(body: dict = Body()):
        return predict_mlp(body["x"])

else:
    raise SystemExit(f"unknown BENCH_FASTAPI_FORM {FORM!r}")
