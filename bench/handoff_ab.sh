#!/usr/bin/env bash
# The connection hand-off against the proxy it replaces (issue 13), measured in turns.
#
# For each round, one daemon with GYRUS_HANDOFF=0 (the gateway proxies every request to the
# replica over a pooled connection) and one with the default (the daemon hands the client's
# socket to the replica), each pinned to core 0 with wrk on core 1, serving:
#   iris       the iris model API (predictor.type onnx, no Python)
#   hello      examples/hello (a Python predictor)
#   iris-onnx  examples/iris-onnx (an ONNXPredictor) with the same iris model
# at concurrency 1, 8 and 64. Prints a Markdown table (requests/s, p50, p99) and the on/off ratios.
#
# Usage: bench/handoff_ab.sh [ROUNDS] [SECONDS]     (default 2 rounds of 5 s cells)
# Needs: the release build (cargo build --release -p gyrus-cli), .venv (scripts/setup-python.sh),
# wrk and taskset. Listens on 127.0.0.1 only; stops only the daemons it started.
set -euo pipefail
ROUNDS="${1:-2}"
SECS="${2:-5}"
AB_NAME=handoff-ab
source "$(dirname "$0")/ab_common.sh"
G="${GYRUS_BIN:-$ROOT/target/release/gyrus}"

results="$WORK/results.tsv"
for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    handoff=1; [ "$mode" = off ] && handoff=0
    ab_start "$G" "$WORK/home-$mode-$round" GYRUS_HANDOFF=$handoff
    for api in iris hello iris-onnx; do
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
import collections, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    api, c, mode, rps, p50, p99 = line.rstrip("\n").split("\t")
    rows[(api, int(c), mode)].append((float(rps), f"{p50} / {p99}"))
print("| API | concurrency | proxy req/s (each round) | hand-off req/s (each round) | hand-off / proxy (mean) | proxy p50 / p99 (last round) | hand-off p50 / p99 (last round) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for api in ("iris", "hello", "iris-onnx"):
    for c in (1, 8, 64):
        off, on = rows[(api, c, "off")], rows[(api, c, "on")]
        mean = lambda xs: sum(x for x, _ in xs) / len(xs)
        print(f"| {api} | {c} | {' / '.join(f'{x:.0f}' for x, _ in off)} | "
              f"{' / '.join(f'{x:.0f}' for x, _ in on)} | {mean(on) / mean(off):.2f} | "
              f"{off[-1][1]} | {on[-1][1]} |")
PY
echo "(raw results in $results)"
