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
ROUNDS="${1:-3}"
SECS="${2:-5}"
AB_NAME=metrics-ab
source "$(dirname "$0")/ab_common.sh"
AFTER="${AFTER:-$ROOT/target/release/gyrus}"
BEFORE="${BEFORE:?set BEFORE to the gyrus binary to compare against}"

results="$WORK/results.tsv"
for round in $(seq "$ROUNDS"); do
  for mode in before after; do
    G="$AFTER"; [ "$mode" = before ] && G="$BEFORE"
    ab_start "$G" "$WORK/home-$mode-$round"
    for api in ${APIS:-iris hello iris-onnx}; do
      "$G" deploy "$WORK/$api" >/dev/null
      url="http://$GYRUS_ADDR/$api"
      ab_warm "$url" "$WORK/$api.lua"
      for c in 1 8 64; do
        printf '%s\t%s\t%s\t%s\n' "$api" "$c" "$mode" "$(ab_cell "$url" "$WORK/$api.lua" "$c" "$SECS")" >> "$results"
      done
    done
    ab_stop
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
