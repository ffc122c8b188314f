#!/usr/bin/env bash
# What a traffic splitter adds to a request (issue 17): the iris model API called directly
# against the same API behind a splitter (`kind: TrafficSplitter`, 100% to it), measured in
# turns, with the daemon's default path (connection hand-off, which a splitter's requests
# never take) and with GYRUS_HANDOFF=0 (every request proxied, so the split itself is all
# that differs).
#
# Each daemon is pinned to core 0 with wrk on core 1. URLs:
#   direct   /iris, the model API (predictor.type onnx, no Python)
#   split    /iris-split, a splitter sending every request to iris
#   shadow   /iris-shadow, the same with a shadow API (iris-copy) getting a copy of each
# at concurrency 1 and 32. Prints a Markdown table (requests/s, p50, p99) and the ratios.
#
# Usage: bench/splitter_ab.sh [ROUNDS] [SECONDS]     (default 2 rounds of 5 s cells)
# Needs: the release build (cargo build --release -p gyrus-cli), .venv (scripts/setup-python.sh),
# wrk and taskset. Listens on 127.0.0.1 only; stops only the daemons it started.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${1:-2}"
SECS="${2:-5}"
G="${GYRUS_BIN:-$ROOT/target/release/gyrus}"
PY="$ROOT/.venv/bin/python"
WORK="$(mktemp -d /tmp/gyrus-splitter-ab.XXXXXX)"
ORT_DYLIB_PATH="$(ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | tail -1)"
export ORT_DYLIB_PATH GYRUS_UV="${GYRUS_UV:-$ROOT/.venv/bin/uv}"
command -v wrk >/dev/null || { echo "splitter_ab: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }

"$PY" "$ROOT/scripts/make_models.py" "$WORK/models" >/dev/null
mkdir -p "$WORK/iris" && cp "$WORK/models/iris.onnx" "$WORK/iris/model.onnx"
cat > "$WORK/iris/cortex.yaml" <<'YAML'
- name: iris
  predictor:
    type: onnx
    model: model.onnx
    session_options:
      intra_op_num_threads: 1
- name: iris-copy
  predictor:
    type: onnx
    model: model.onnx
    session_options:
      intra_op_num_threads: 1
- name: iris-split
  kind: TrafficSplitter
  apis:
    - {name: iris, weight: 100}
- name: iris-shadow
  kind: TrafficSplitter
  apis:
    - {name: iris, weight: 100}
    - {name: iris-copy, weight: 100, shadow: true}
YAML
printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' \
  "'{\"input\": [[5.1, 3.5, 1.4, 0.2]]}'" > "$WORK/iris.lua"

HOME_NOW=""
cleanup() { [ -n "$HOME_NOW" ] && GYRUS_HOME="$HOME_NOW" "$G" daemon stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

results="$WORK/results.tsv"
for round in $(seq "$ROUNDS"); do
  for mode in handoff proxy; do
    HOME_NOW="$WORK/home-$mode-$round"; mkdir -p "$HOME_NOW"
    port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    export GYRUS_HOME="$HOME_NOW" GYRUS_ADDR="127.0.0.1:$port"
    handoff=1; [ "$mode" = proxy ] && handoff=0
    GYRUS_HANDOFF=$handoff taskset -c 0 "$G" daemon > "$HOME_NOW/daemon.out" 2>&1 &
    for _ in $(seq 100); do curl -sf "http://$GYRUS_ADDR/_gyrus/v1/health" >/dev/null && break; sleep 0.1; done
    "$G" deploy "$WORK/iris" >/dev/null
    for path in iris iris-split iris-shadow; do
      url="http://$GYRUS_ADDR/$path"
      taskset -c 1 wrk -t1 -c8 -d1 -s "$WORK/iris.lua" "$url" >/dev/null   # warm-up
      for c in 1 32; do
        out=$(taskset -c 1 wrk -t1 -c$c -d"$SECS" --latency -s "$WORK/iris.lua" "$url")
        if grep -q "Non-2xx" <<<"$out"; then echo "splitter_ab: $path answered errors" >&2; exit 1; fi
        rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
        p50=$(awk '/ 50%/{print $2}' <<<"$out")
        p99=$(awk '/ 99%/{print $2}' <<<"$out")
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$path" "$c" "$rps" "$p50" "$p99" >> "$results"
      done
    done
    curl -s "http://$GYRUS_ADDR/metrics" | grep '^gyrus_splitter_requests_total' > "$WORK/metrics-$mode-$round.txt" || true
    "$G" daemon stop >/dev/null; HOME_NOW=""
  done
done

"$PY" - "$results" <<'PY'
import collections, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    mode, path, c, rps, p50, p99 = line.rstrip("\n").split("\t")
    rows[(mode, path, int(c))].append((float(rps), f"{p50} / {p99}"))
mean = lambda xs: sum(x for x, _ in xs) / len(xs)
print("| daemon path | concurrency | URL | req/s (each round) | / direct (mean) | p50 / p99 (last round) |")
print("| --- | ---: | --- | ---: | ---: | ---: |")
for mode in ("handoff", "proxy"):
    for c in (1, 32):
        base = mean(rows[(mode, "iris", c)])
        for path in ("iris", "iris-split", "iris-shadow"):
            r = rows[(mode, path, c)]
            print(f"| {mode} | {c} | /{path} | {' / '.join(f'{x:.0f}' for x, _ in r)} | "
                  f"{mean(r) / base:.2f} | {r[-1][1]} |")
PY
echo "(raw results in $results; splitter metrics in $WORK/metrics-*.txt)"
