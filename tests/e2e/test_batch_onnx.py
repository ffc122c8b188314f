"""A BatchAPI with an ONNX predictor (seed 002): `ONNXPredictor(onnx_client, config, job_spec)`
gets each batch in `predict(payload, batch_id)` and runs the model through `onnx_client` in the
job's worker, as a realtime ONNXPredictor does; `on_job_complete()` runs once."""

import json
import time

from onnx_helpers import model_project

API = "iris-batch"

PREDICTOR = r'''
import json, os

import numpy as np


class ONNXPredictor:
    def __init__(self, onnx_client, config, job_spec):
        self.client = onnx_client
        self.out = config["out"]
        self.job_id = job_spec["job_id"]
        os.makedirs(self.out, exist_ok=True)

    def predict(self, payload, batch_id):
        labels, _ = self.client.predict(np.asarray(payload, dtype=np.float32))
        with open(os.path.join(self.out, batch_id + ".json"), "w") as f:
            json.dump({"rows": payload, "labels": labels.tolist()}, f)

    def on_job_complete(self):
        count = 0
        for name in os.listdir(self.out):
            if name.endswith(".json"):
                with open(os.path.join(self.out, name)) as f:
                    count += len(json.load(f)["labels"])
        with open(os.path.join(self.out, "complete"), "w") as f:
            json.dump({"job_id": self.job_id, "rows": count}, f)
'''

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.9, 3.1, 5.4, 2.1]


def test_an_onnx_batch_predictor_runs_the_model_on_each_batch(gyrus, projects_dir, onnx_models, tmp_path):
    spec = {"name": API, "kind": "BatchAPI",
            "predictor": {"type": "onnx", "path": "predictor.py", "model": "iris.onnx"}}
    proj = model_project(projects_dir, API, [spec], models={"iris.onnx": onnx_models / "iris.onnx"},
                         files={"predictor.py": PREDICTOR})
    gyrus.deploy_ok(proj, API)
    out = tmp_path / "out"
    items = [SETOSA, VIRGINICA] * 10
    r = gyrus.http.post(gyrus.url(API), headers={"Authorization": f"Bearer {gyrus.token()}"}, timeout=60,
                        json={"workers": 2, "config": {"out": str(out)},
                              "item_list": {"items": items, "batch_size": 4}})
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    deadline = time.time() + 120
    while True:
        s = gyrus.control("GET", f"/apis/{API}/jobs/{job_id}").json()
        if s["status"] not in ("enqueuing", "running"):
            break
        assert time.time() < deadline, (s, gyrus.api_log(API))
        time.sleep(0.3)
    assert s["status"] == "succeeded", (s, (gyrus.home / "logs" / "jobs" / f"{API}-{job_id}.log").read_text())
    batches = [json.loads((out / f"{job_id}-{n}.json").read_text()) for n in range(5)]
    assert [row for b in batches for row in b["rows"]] == items
    # The model's classes: setosa is 0, virginica 2.
    assert [label for b in batches for label in b["labels"]] == [0, 2] * 10
    assert json.loads((out / "complete").read_text()) == {"job_id": job_id, "rows": 20}
