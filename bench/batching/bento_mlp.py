"""The batching benchmark's BentoML peer: the MLP 784-512-512-10 (ONNX) behind a batchable
API, so BentoML's adaptive batching groups requests (max_batch_size BENCH_MAX_BATCH, default
32), one worker, one intra-op thread; the same request and answer as gyrus's model API.

  POST /mlp  {"x": [[784 floats]]} -> {"logits": [[10 floats]]}

Run: BENTOML_DO_NOT_TRACK=true BENCH_MLP_MODEL=mlp-large.onnx \
     bentoml serve bento_mlp:Mlp --working-dir bench/batching --host 127.0.0.1 --port 3000
"""
import os

import bentoml
import numpy as np
import onnxruntime as ort

MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH", "32"))


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Mlp:
    def __init__(self):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.environ["BENCH_MLP_MODEL"], opts, providers=["CPUExecutionProvider"])

    @bentoml.api(route="/mlp", batchable=True, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=60000)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": x.astype(np.float32)})[0]
