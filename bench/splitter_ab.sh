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
ROUNDS="${1:-2}"
SECS="${2:-5}"
AB_NAME=splitter-ab
source "$(dirname "$0")/ab_common.sh"
G="${GYRUS_BIN:-$ROOT/target/release/gyrus}"

# The common iris project, with a second copy of the API and the two splitters.
cat >> "$WORK/iris/cortex.yaml" <<'YAML'
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

results="$WORK/results.tsv"
for round in $(seq "$ROUNDS"); do
  for mode in handoff proxy; do
    handoff=1; [ "$mode" = proxy ] && handoff=0
    ab_start "$G" "$WORK/home-$mode-$round" GYRUS_HANDOFF=$handoff
    "$G" deploy "$WORK/iris" >/dev/null
    for path in iris iris-split iris-shadow; do
      url="http://$GYRUS_ADDR/$path"
      ab_warm "$url" "$WORK/iris.lua"
      for c in 1 32; do
        printf '%s\t%s\t%s\t%s\n' "$mode" "$path" "$c" "$(ab_cell "$url" "$WORK/iris.lua" "$c" "$SECS")" >> "$results"
      done
    done
    curl -s "http://$GYRUS_ADDR/metrics" | grep '^gyrus_splitter_requests_total' > "$WORK/metrics-$mode-$round.txt" || true
    ab_stop
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
