#!/usr/bin/env python3
"""Peak memory of one training step (forward + backward), lstm_fast vs PyTorch.

Each (implementation, shape) runs in a fresh Python process: it imports the
library, builds the problem and the runner (weights, input, dy), then resets the
resident-set high-water mark (Linux ``/proc/self/clear_refs``, where writable),
runs one forward+backward (the first call of the process, or with ``--warmup`` the
second, after memory the allocator kept from the first) and reads
``resource.getrusage(RUSAGE_SELF).ru_maxrss``.
The figure shown is that high-water mark minus the resident set just before the
call: the memory the step itself needed (cache, gradients, workspace). The
``cache 6H`` column is the size of lstm_fast's training cache: 6·H floats per
(row, step), the four activated gates, the cell and the hidden state each step
started from (docs/design.md, 'Data flow').

    python scripts/peak_memory.py [--shapes S,M,L,XL] [--impls lstm_fast,torch]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from lstm_fast import benchmark

_CHILD = r"""
import json, resource, sys
from lstm_fast import benchmark

impl, shape_name, threads, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
KIB = 1024 if sys.platform != "darwin" else 1  # ru_maxrss: KiB on Linux, bytes on macOS

def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB

def current_rss():
    try:
        with open("/proc/self/statm") as f:
            import os
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None

problem = benchmark.make_problem(benchmark.SHAPES[shape_name])
try:
    runner = benchmark.make_runner(impl, problem, threads)
except benchmark.PeerUnavailable as exc:
    print(json.dumps({"skipped": str(exc)}))
    sys.exit(0)
if warmup == "1":
    runner.forward_backward()
reset = False
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    reset = True
except OSError:
    pass
before = current_rss() if reset else maxrss()
if before is None:
    before = maxrss()
runner.forward_backward()
peak = maxrss()
print(json.dumps({"before": before, "peak": peak, "exact": reset}))
"""


def measure(impl: str, shape: str, threads: int, warmup: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, impl, shape, str(threads), "1" if warmup else "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="S,M,L,XL")
    parser.add_argument("--impls", default="lstm_fast,torch")
    parser.add_argument(
        "--threads", type=benchmark.positive_int, default=None, help="default: lstm_fast's"
    )
    parser.add_argument(
        "--warmup",
        action="store_true",
        help="measure a second call (steady state) instead of the first one, which also "
        "pays one-time set-up such as thread pools and PyTorch's lazy initialisation",
    )
    args = parser.parse_args(argv)
    try:
        shapes = benchmark.parse_shapes(args.shapes)
    except ValueError as exc:
        parser.error(str(exc))
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for impl in impls:
        if impl not in benchmark.IMPLS or impl == "onnxruntime":
            parser.error(f"--impls: {impl!r} has no forward+backward here")
    if args.threads is None:
        import lstm_fast

        args.threads = lstm_fast.get_num_threads()

    mb = 1e6
    header = f"{'shape':<6}{'B x T x H':<18}{'cache 6H':>10}" + "".join(
        f"{benchmark.IMPL_LABELS[i] + ' MB':>14}" for i in impls
    )
    if len(impls) > 1:
        header += f"{'ratio':>8}"
    which = "a second (steady-state)" if args.warmup else "the first"
    print(
        f"Peak resident memory of {which} forward+backward in a fresh process, "
        f"above what was resident before it; {args.threads} thread(s)"
    )
    print(header)
    print("-" * len(header))
    notes = set()
    for shape in shapes:
        bound = 6 * shape.hidden_size * shape.batch * shape.steps * 4 / mb
        row = f"{shape.name:<6}{f'{shape.batch}x{shape.steps}x{shape.hidden_size}':<18}"
        row += f"{bound:>10.1f}"
        print(row, end="", flush=True)
        used = []
        for impl in impls:
            result = measure(impl, shape.name, args.threads, args.warmup)
            if "peak" in result:
                delta = max(0, result["peak"] - result["before"]) / mb
                used.append(delta)
                print(f"{delta:>14.1f}", end="", flush=True)
                if not result["exact"]:
                    notes.add(
                        "high-water mark not resettable here: figures are upper-bounded "
                        "by setup peaks"
                    )
            else:
                used.append(None)
                print(f"{'-':>14}", end="", flush=True)
                notes.add(f"{impl}: {result.get('skipped') or result.get('error')}")
        if len(impls) > 1 and used[0] and used[1]:
            print(f"{used[1] / used[0]:>7.2f}x", end="")
        print(flush=True)
    print("cache 6H: 6*H float32 per (row, step), the size of lstm_fast's training cache;")
    print("ratio: second implementation over the first (higher: the first needs less memory).")
    for note in sorted(notes):
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
