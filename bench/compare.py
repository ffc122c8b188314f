#!/usr/bin/env python3
"""Before and after: two gyrus binaries on the model API and the ONNXPredictor path, in turns.

Each round starts an isolated daemon with one binary, deploys the ONNX projects of
`onnx_bench.py` and examples/hello, checks their answers and measures them with wrk exactly as
`onnx_bench.py` does (server on core 0, wrk on core 1), then does the same with the other
binary. Rounds alternate the order (A B, B A, ...), and the table gives each cell's median
over the rounds and the ratio after/before, so that a change is judged against the noise of
the same run.

Usage: .venv/bin/python bench/compare.py BEFORE AFTER [--rounds 3] [--duration 5]
e.g.   git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release -p gyrus-cli)
       .venv/bin/python bench/compare.py /tmp/before/target/release/gyrus target/release/gyrus
Needs what onnx_bench.py needs (.venv, wrk, taskset); builds nothing.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import onnx_bench as ob  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", help="the gyrus binary before the change")
    ap.add_argument("after", help="the gyrus binary after the change")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per cell")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per API")
    ap.add_argument("--concurrency", type=int, nargs="+", default=list(ob.CONCURRENCY),
                    help="concurrency levels per API (default: 1 8 64)")
    ap.add_argument("--out", default=str(ob.ROOT / "bench" / "out" / "compare.md"))
    args = ap.parse_args()
    if Path(sys.prefix).resolve() != (ob.ROOT / ".venv").resolve():
        os.execv(str(ob.VENV_PY), [str(ob.VENV_PY), str(Path(__file__).resolve()),
                                    *sys.argv[1:]])
    # run_gyrus measures at Run.measure's default levels.
    ob.Run.measure.__defaults__ = (None, tuple(args.concurrency))
    bins = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    for label, path in bins.items():
        if not path.exists():
            sys.exit(f"compare: the {label} binary {path} does not exist")

    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = str(cores[0]), str(cores[-1])
    work = Path(tempfile.mkdtemp(prefix="gyrus-compare-"))
    rows = {}  # (model, system, concurrency, label) -> [results]
    try:
        ob.ensure_wrk()
        dylib = ob.ort_dylib()
        models = ob.make_models(work)
        refs = ob.reference(models)
        wrk = ob.Wrk(client_core, work)
        for round_ in range(args.rounds):
            order = list(bins.items())
            if round_ % 2:
                order.reverse()
            for label, path in order:
                ob.log(f"==> round {round_ + 1}/{args.rounds}: {label} ({path})")
                ob.GYRUS = path
                run = ob.Run(args, wrk)
                run_work = work / f"{round_}-{label}"
                run_work.mkdir()
                ob.run_gyrus(run, models, refs, server_core, run_work, dylib)
                for model, system, conns, r in run.rows:
                    rows.setdefault((model, system, conns, label), []).append(r)
    except ob.BenchError as e:
        ob.stop_all()
        sys.exit(f"compare: {e}\n(logs in {work})")
    except KeyboardInterrupt:
        ob.stop_all()
        sys.exit("compare: interrupted; every process it started is stopped")
    finally:
        ob.stop_all()

    def median(key, field):
        return statistics.median(r[field] for r in rows[key])

    lines = [
        f"Rounds: {args.rounds}, {args.duration}s per cell, server on core {server_core}, "
        f"wrk on core {client_core}; medians over the rounds.",
        f"before: `{bins['before']}`; after: `{bins['after']}`.",
        "",
        "| model | server | concurrency | req/s before | req/s after | after/before "
        "| p50 before (us) | p50 after (us) | p50 after - before (us) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cells = sorted({k[:3] for k in rows}, key=lambda k: (k[0], ob.ORDER.index(k[1]), k[2]))
    for model, system, conns in cells:
        b, a = (model, system, conns, "before"), (model, system, conns, "after")
        if b not in rows or a not in rows:
            continue
        rb, ra = median(b, "rps"), median(a, "rps")
        pb, pa = median(b, "p50"), median(a, "p50")
        lines.append(f"| {model} | {system} | {conns} | {rb:.0f} | {ra:.0f} | {ra / rb:.2f} "
                     f"| {pb:.1f} | {pa:.1f} | {pa - pb:+.1f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    ob.log("\n" + text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
