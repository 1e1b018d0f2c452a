"""The single-core f32 FMA peak of every SIMD path this CPU runs, and of all cores.

    python scripts/fma_peak.py [--seconds 0.5] [--threads N]

Prints the CPU model (from /proc/cpuinfo), then for each ISA the GFLOP/s of one
core and of N cores at once (N threads, default: every CPU; the GIL is released
while each measures). The figure is the fastest round of a loop of independent
FMAs on registers (`rust/src/simd/peak.rs`): the yardstick for the products'
GFLOP/s in BENCHMARKS.md. On a CPU with AVX-512 BF16 a last line gives the peak
of the bfloat16 dot products (`vdpbf16ps`, two multiply-adds per f32 lane), the
yardstick of bf16 inference there (`rust/src/kernels/bf16_dot.rs`).
"""

from __future__ import annotations

import argparse
import os

import lstm_fast
from lstm_fast import _core
from lstm_fast.benchmark import cpu_model, on_threads


def peak_on_threads(threads: int, seconds: float) -> float:
    """Sum of the per-thread peaks of `threads` threads measuring at once."""
    return sum(on_threads(threads, lambda: _core.fma_peak(seconds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    print(f"CPU: {cpu_model()}")
    print(f"CPUs: {os.cpu_count()}")
    previous = lstm_fast.get_isa()
    try:
        print(f"{'ISA':10} {'1 core GFLOP/s':>15} {f'{args.threads} cores GFLOP/s':>18}")
        for isa in lstm_fast.available_isas():
            _core.set_isa(isa)
            one = _core.fma_peak(args.seconds)
            many = peak_on_threads(args.threads, args.seconds)
            print(f"{isa:10} {one:15.1f} {many:18.1f}")
        dot = _core.bf16_dot_peak(args.seconds)
        if dot is not None:
            # Two multiply-adds per f32 lane: the yardstick of bf16 inference's
            # products on avx512bf16.
            many = sum(on_threads(args.threads, lambda: _core.bf16_dot_peak(args.seconds) or 0.0))
            print(f"{'bf16 dot':10} {dot:15.1f} {many:18.1f}  (vdpbf16ps)")
        print("Read bandwidth of one core from a buffer (the batch-1 limit; see")
        print("scripts/batch1_bandwidth.py), with the active ISA's vectors:")
        _core.set_isa(previous)
        for kib in (32, 128, 256, 512, 1024, 4096):
            rate = _core.read_bandwidth(kib * 1024, args.seconds)
            print(f"  {kib:5} KiB: {rate / 1e9:6.1f} GB/s")
    finally:
        _core.set_isa(previous)


if __name__ == "__main__":
    main()
