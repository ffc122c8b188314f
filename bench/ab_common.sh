# Shared by the A/B scripts (handoff_ab.sh, metrics_ab.sh, splitter_ab.sh): the work folder
# with the test models, the example projects and wrk's request scripts; starting and stopping
# one pinned daemon at a time; one wrk cell. Source it after setting AB_NAME.
#
# Provides: ROOT, PY, WORK (with models/, iris/, hello/, iris-onnx/ and <api>.lua), ab_start,
# ab_stop, ab_cell. Needs .venv (scripts/setup-python.sh), wrk and taskset; listens on
# 127.0.0.1 only and stops only the daemons it started.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
WORK="$(mktemp -d "/tmp/gyrus-$AB_NAME.XXXXXX")"
ORT_DYLIB_PATH="$(ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | tail -1)"
export ORT_DYLIB_PATH GYRUS_UV="${GYRUS_UV:-$ROOT/.venv/bin/uv}"
command -v wrk >/dev/null || { echo "$AB_NAME: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }

"$PY" "$ROOT/scripts/make_models.py" "$WORK/models" >/dev/null
mkdir -p "$WORK/iris" && cp "$WORK/models/iris.onnx" "$WORK/iris/model.onnx"
cat > "$WORK/iris/cortex.yaml" <<'YAML'
- name: iris
  predictor:
    type: onnx
    model: model.onnx
    session_options:
      intra_op_num_threads: 1
YAML
cp -r "$ROOT/examples/hello" "$WORK/hello"
cp -r "$ROOT/examples/iris-onnx" "$WORK/iris-onnx" && cp "$WORK/models/iris.onnx" "$WORK/iris-onnx/model.onnx"
ab_lua() { printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' "'$2'" > "$WORK/$1.lua"; }
ab_lua iris '{"input": [[5.1, 3.5, 1.4, 0.2]]}'
ab_lua hello '{"name": "bench"}'
ab_lua iris-onnx '{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'

AB_BIN=""
AB_HOME=""
ab_cleanup() { [ -n "$AB_HOME" ] && GYRUS_HOME="$AB_HOME" "$AB_BIN" daemon stop >/dev/null 2>&1 || true; }
trap ab_cleanup EXIT

# ab_start BIN HOME [VAR=value ...]: a daemon of BIN with GYRUS_HOME=HOME on a free port, pinned
# to core 0, with the extra variables; exports GYRUS_HOME and GYRUS_ADDR for the CLI.
ab_start() {
  AB_BIN="$1"; AB_HOME="$2"; shift 2
  mkdir -p "$AB_HOME"
  local port
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  export GYRUS_HOME="$AB_HOME" GYRUS_ADDR="127.0.0.1:$port"
  env "$@" taskset -c 0 "$AB_BIN" daemon > "$AB_HOME/daemon.out" 2>&1 &
  for _ in $(seq 100); do curl -sf "http://$GYRUS_ADDR/_gyrus/v1/health" >/dev/null && break; sleep 0.1; done
}

ab_stop() { "$AB_BIN" daemon stop >/dev/null; AB_HOME=""; }

# ab_cell URL LUA CONCURRENCY SECONDS: wrk on core 1; prints "req/s<TAB>p50<TAB>p99", or fails
# the script when the server answered errors.
ab_cell() {
  local out
  out=$(taskset -c 1 wrk -t1 -c"$3" -d"$4" --latency -s "$2" "$1")
  if grep -q "Non-2xx" <<<"$out"; then echo "$AB_NAME: $1 answered errors" >&2; exit 1; fi
  printf '%s\t%s\t%s\n' "$(awk '/Requests\/sec/{print $2}' <<<"$out")" \
    "$(awk '/ 50%/{print $2}' <<<"$out")" "$(awk '/ 99%/{print $2}' <<<"$out")"
}

# ab_warm URL LUA: one second of load before the measured cells.
ab_warm() { taskset -c 1 wrk -t1 -c8 -d1 -s "$2" "$1" >/dev/null; }
