#!/usr/bin/env bash
# Sets up everything on a fresh machine and serves the example iris API:
# builds gyrus, installs it on PATH, prepares the Python side, trains the example models,
# and deploys the examples: examples/iris-python (Python), examples/onnx-model (ONNX, no
# Python), examples/store-model (a model from the model store), examples/tensorflow-iris
# (Cortex's TensorFlow example and a TensorFlow model API) and examples/batch-sum (a batch
# API). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-python.sh

echo "==> building gyrus (release)"
cargo build --release --locked -p gyrus-cli

bindir="${CARGO_HOME:-$HOME/.cargo}/bin"
mkdir -p "$bindir"
install -m 0755 target/release/gyrus "$bindir/gyrus"
echo "==> installed $bindir/gyrus"

echo "==> training the example models"
.venv/bin/python examples/iris-python/train.py
.venv/bin/python examples/iris-onnx/train.py
.venv/bin/python examples/onnx-model/make_model.py
.venv/bin/python examples/mlp/make_model.py
.venv/bin/python examples/tensorflow-iris/train.py 2>/dev/null

# uv builds the API's Python environment from requirements.txt much faster than pip.
export GYRUS_UV="$PWD/.venv/bin/uv"

echo "==> deploying examples/iris-python and examples/onnx-model"
"$bindir/gyrus" deploy examples/iris-python
# The first ONNX deploy installs ONNX Runtime (the onnxruntime wheel) into GYRUS_HOME/runtime.
"$bindir/gyrus" deploy examples/onnx-model

echo "==> saving the iris model in the model store and deploying examples/store-model"
if ! "$bindir/gyrus" models get iris -o path >/dev/null 2>&1; then
  "$bindir/gyrus" models save examples/onnx-model/model.onnx --name iris --label example=quickstart
fi
"$bindir/gyrus" deploy examples/store-model

echo "==> deploying examples/tensorflow-iris (installs tensorflow-cpu into GYRUS_HOME/runtime on first use)"
"$bindir/gyrus" deploy examples/tensorflow-iris

echo "==> deploying the batch API examples/batch-sum (its jobs start their own workers)"
"$bindir/gyrus" deploy examples/batch-sum

cat <<MSG

The iris API is live. Try it:

  curl -X POST localhost:8888/iris-classifier -H 'Content-Type: application/json' \\
    -d '{"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.5, "petal_width": 0.3}'

The same model as ONNX, served by gyrus's Rust engine (no Python in the request path):

  curl -X POST localhost:8888/iris-model -d '{"input": [[5.2, 3.6, 1.5, 0.3]]}'

and over the Open Inference Protocol (e.g. tritonclient with url "localhost:8888"). The same
model from the model store (see: gyrus models list):

  curl -X POST localhost:8888/iris-store -d '{"input": [[5.2, 3.6, 1.5, 0.3]]}'

Cortex's TensorFlow iris example, and the same SavedModel with no Python:

  curl -X POST localhost:8888/iris-tensorflow -H 'Content-Type: application/json' \\
    -d @examples/tensorflow-iris/sample.json                                   # setosa
  curl -X POST localhost:8888/iris-tf-model -d @examples/tensorflow-iris/sample.json

A batch job: sum the lists of numbers in examples/batch-sum/job.json with 2 workers, then read
the total that on_job_complete() wrote (the job's config.dest):

  gyrus job submit batch-sum examples/batch-sum/job.json --wait
  cat /tmp/batch-sum-out/total.json      # {"job_id": "...", "total": 210, "count": 8, "batches": 3}

Watch them: gyrus dashboard (opens the web dashboard) · curl localhost:8888/metrics

Then: gyrus get · gyrus logs iris-classifier · gyrus delete iris-classifier · gyrus --help
MSG
