#!/usr/bin/env bash
# The cost of issue 16's telemetry on the request path: the release binary of the commit before
# it (BEFORE) against this one (AFTER), measured in turns.
#
# For each round, one daemon per binary, each pinned to core 0 with wrk on core 1, serving:
#   iris       the iris model API (predictor.type onnx, no Python)
#   hello      examples/hello (a Python predictor)
#   iris-onnx  examples/iris-onnx (an ONNXPredictor) with the same iris model
# at concurrency 1, 8 and 64. Prints a Markdown table (requests/s, p50, p99), the after/before
# ratio of requests/s, and the p50 difference in microseconds (the issue's budget: 2 us).
#
# Usage: BEFORE=/path/to/old/gyrus bench/metrics_ab.sh [ROUNDS] [SECONDS]  (default 3 rounds, 5 s)
#        APIS="iris" ... measures only those of the three.
# BEFORE: e.g. `git worktree add /tmp/before <commit>; cd /tmp/before; cargo build --release -p gyrus-cli`.
# Needs: the release build (cargo build --release -p gyrus-cli), .venv (scripts/setup-python.sh),
# wrk and taskset. Listens on 127.0.0.1 only; stops only the daemons it started.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${1:-3}"
SECS="${2:-5}"
AFTER="${AFTER:-$ROOT/target/release/gyrus}"
BEFORE="${BEFORE:?set BEFORE to the gyrus binary to compare against}"
PY="$ROOT/.venv/bin/python"
WORK="$(mktemp -d /tmp/gyrus-metrics-ab.XXXXXX)"
ORT_DYLIB_PATH="$(ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | tail -1)"
export ORT_DYLIB_PATH GYRUS_UV="${GYRUS_UV:-$ROOT/.venv/bin/uv}"
command -v wrk >/dev/null || { echo "metrics_ab: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }

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
lua() { printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' "'$2'" > "$WORK/$1.lua"; }
lua iris '{"input": [[5.1, 3.5, 1.4, 0.2]]}'
lua hello '{"name": "bench"}'
lua iris-onnx '{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'

HOME_NOW=""
G="$AFTER"
cleanup() { [ -n "$HOME_NOW" ] && GYRUS_HOME="$HOME_NOW" "$G" daemon stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

results="$WORK/results.tsv"
for round in $(seq "$ROUNDS"); do
  for mode in before after; do
    G="$AFTER"; [ "$mode" = before ] && G="$BEFORE"
    HOME_NOW="$WORK/home-$mode-$round"; mkdir -p "$HOME_NOW"
    port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    export GYRUS_HOME="$HOME_NOW" GYRUS_ADDR="127.0.0.1:$port"
    taskset -c 0 "$G" daemon > "$HOME_NOW/daemon.out" 2>&1 &
    for _ in $(seq 100); do curl -sf "http://$GYRUS_ADDR/_gyrus/v1/health" >/dev/null && break; sleep 0.1; done
    for api in ${APIS:-iris hello iris-onnx}; do
      "$G" deploy "$WORK/$api" >/dev/null
      url="http://$GYRUS_ADDR/$api"
      taskset -c 1 wrk -t1 -c8 -d1 -s "$WORK/$api.lua" "$url" >/dev/null   # warm-up
      for c in 1 8 64; do
        out=$(taskset -c 1 wrk -t1 -c$c -d"$SECS" --latency -s "$WORK/$api.lua" "$url")
        if grep -q "Non-2xx" <<<"$out"; then echo "metrics_ab: $api answered errors" >&2; exit 1; fi
        rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
        p50=$(awk '/ 50%/{print $2}' <<<"$out")
        p99=$(awk '/ 99%/{print $2}' <<<"$out")
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$api" "$c" "$mode" "$rps" "$p50" "$p99" >> "$results"
      done
    done
    "$G" daemon stop >/dev/null; HOME_NOW=""
  done
done

"$PY" - "$results" <<'PY'
import collections, re, sys

def micros(text):
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]

rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    api, c, mode, rps, p50, p99 = line.rstrip("\n").split("\t")
    rows[(api, int(c), mode)].append((float(rps), micros(p50), micros(p99)))
print("| API | concurrency | before req/s (each round) | after req/s (each round) | after / before | before p50 us (median) | after p50 us (median) | p50 difference us |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
median = lambda xs: sorted(xs)[len(xs) // 2]
for api in ("iris", "hello", "iris-onnx"):
    for c in (1, 8, 64):
        b, a = rows[(api, c, "before")], rows[(api, c, "after")]
        if not b or not a:
            continue
        mean = lambda xs: sum(x[0] for x in xs) / len(xs)
        bp50, ap50 = median([x[1] for x in b]), median([x[1] for x in a])
        print(f"| {api} | {c} | {' / '.join(f'{x[0]:.0f}' for x in b)} | "
              f"{' / '.join(f'{x[0]:.0f}' for x in a)} | {mean(a) / mean(b):.3f} | "
              f"{bp50:.0f} | {ap50:.0f} | {ap50 - bp50:+.0f} |")
PY
echo "(raw results in $results)"
