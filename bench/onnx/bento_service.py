"""Peer (d): the iris ONNX model served by BentoML 1.4 (new-style service), one worker, the
onnxruntime session created once in the service's constructor with intra_op_num_threads=1.

  POST /iris-model  {"input": [[5.1, 3.5, 1.4, 0.2]]} -> {"label": [0], "probabilities": [[...]]}

BentoML maps the JSON body's fields to the API method's parameters, so the request is the
same as gyrus's model API. Access logging is off (uvicorn's is off for FastAPI too); the rest
is BentoML's default (metrics on). BENCH_BENTO_FORM=sync uses a `def` API method (BentoML runs
it in a thread pool); the default `async` measured faster, as for FastAPI.

Run: BENTOML_DO_NOT_TRACK=true BENCH_IRIS_MODEL=iris.onnx \
     bentoml serve bento_service:IrisModel --working-dir bench/onnx --host 127.0.0.1 --port 3000
"""
import os

import bentoml
import numpy as np
import onnxruntime as ort
from pydantic import BaseModel

FORM = os.environ.get("BENCH_BENTO_FORM", "async")


class IrisResponse(BaseModel):
    label: list[int]
    probabilities: list[list[float]]


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class IrisModel:
    def __init__(self):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.environ["BENCH_IRIS_MODEL"], opts, providers=["CPUExecutionProvider"]
        )

    def _predict(self, rows):
        label, probabilities = self.session.run(None, {"input": np.asarray(rows, dtype=np.float32)})
        return IrisResponse(label=label.tolist(), probabilities=probabilities.tolist())

    if FORM == "sync":

        @bentoml.api(route="/iris-model")
        def predict(self, input: list[list[float]]) -> IrisResponse:
            return self._predict(input)

    else:

        @bentoml.api(route="/iris-model")
        async def predict(self, input: list[list[float]]) -> IrisResponse:
            return self._predict(input)
