"""``python -m lstm_fast``: a short checked demo, then a throughput table.

The demo runs one tiny forward and backward, shows the shapes and checks every
output and gradient against the NumPy reference (exit status 1 on a mismatch).
The table times the standard shapes of PERFORMANCE.md (float32, time-major,
one layer) for lstm_fast and the peers that are importable (the NumPy
reference, PyTorch's ``nn.LSTM``, ONNX Runtime's ``LSTM`` op), all in this
process with the same number of threads, printing each cell as it is measured.

``python -m lstm_fast demo [...]`` runs the layer demo instead
(:func:`lstm_fast.demo.main`).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import lstm_fast
from lstm_fast import _bench

# Past this shape the NumPy reference is too slow to be worth waiting for.
_REFERENCE_SKIP = {"XL"}


def _say(text: str = "", end: str = "\n") -> None:
    print(text, end=end, flush=True)


def _version() -> str:
    version = getattr(lstm_fast, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib.metadata import version as dist_version

        return dist_version("lstm_fast")
    except Exception:
        return "unknown"


def _isa_line() -> str:
    try:
        active = lstm_fast.get_isa()
        available = ", ".join(lstm_fast.available_isas())
        return f"SIMD path {active} (available here: {available})"
    except AttributeError:
        return "SIMD path unknown"


def _max_rel_diff(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / (1.0 + np.abs(b))))


def demo_check() -> bool:
    """One small forward + backward, shapes shown, every result compared with
    the NumPy reference. Returns True when they agree."""
    from lstm_fast import reference

    T, B, I, H = 5, 3, 4, 6
    rng = np.random.default_rng(42)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    w_ih = rng.uniform(-0.4, 0.4, (4 * H, I)).astype(np.float32)
    w_hh = rng.uniform(-0.4, 0.4, (4 * H, H)).astype(np.float32)
    b_ih = rng.uniform(-0.4, 0.4, 4 * H).astype(np.float32)
    b_hh = rng.uniform(-0.4, 0.4, 4 * H).astype(np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)

    _say(f"Demo: one forward + backward, T={T} B={B} I={I} H={H}, float32")
    out = lstm_fast.forward(x, w_ih, w_hh, b_ih, b_hh)
    assert out.cache is not None  # need_cache defaults to True
    grads = lstm_fast.backward(out.cache, dy)
    _say(f"  forward(x {x.shape}, w_ih {w_ih.shape}, w_hh {w_hh.shape}, b_ih/b_hh {b_ih.shape})")
    _say(
        f"    -> y {out.y.shape}, h_n {out.h_n.shape}, c_n {out.c_n.shape}, "
        f"cache.i/f/g/o/c {out.cache.i.shape}"
    )
    _say(f"  backward(cache, dy {dy.shape})")
    _say("    -> " + ", ".join(f"{name} {getattr(grads, name).shape}" for name in grads._fields))

    ref_out = reference.forward(x, w_ih, w_hh, b_ih, b_hh)
    assert ref_out.cache is not None
    ref_grads = reference.backward(ref_out.cache, dy)
    diffs = {name: _max_rel_diff(out[k], ref_out[k]) for k, name in enumerate(("y", "h_n", "c_n"))}
    for gate in ("i", "f", "g", "o", "c"):
        diffs[f"cache.{gate}"] = _max_rel_diff(
            getattr(out.cache, gate), getattr(ref_out.cache, gate)
        )
    for name in grads._fields:
        diffs[name] = _max_rel_diff(getattr(grads, name), getattr(ref_grads, name))
    worst_name = max(diffs, key=lambda k: diffs[k])
    worst = diffs[worst_name]
    ok = worst < 1e-4  # float32: a few ULP per step compound over T steps
    verdict = "OK" if ok else f"MISMATCH (worst: {worst_name})"
    _say(
        f"  vs the NumPy reference (lstm_fast.reference), {len(diffs)} arrays: "
        f"max |a-b|/(1+|b|) = {worst:.1e}  {verdict}"
    )
    return ok


def _fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 100:
        return f"{ms:.2f}"
    return f"{ms:.1f}"


_CELL = 17  # width of one "ms GFLOP/s" cell
_RATIO = 9


def _header(impls: list[str], ratio_impls: list[str], with_sgemm: bool) -> list[str]:
    top = f"{'':<13}" + "".join(f"  {_bench.IMPL_LABELS[i]:^{_CELL}}" for i in impls)
    top += "  | lstm_fast speed-up over"
    sub = f"{'shape':<6}{'pass':<7}" + "".join(f"  {'ms':>9}{'GFLOP/s':>8}" for _ in impls)
    sub += "  |" + "".join(f"{_bench.IMPL_LABELS[i]:>{_RATIO}}" for i in ratio_impls)
    if with_sgemm:
        sub += f"{'%sgemm':>8}"
    return [top, sub, "-" * len(sub)]


def run_table(
    shapes: list[_bench.Shape],
    impls: list[str],
    threads: int,
    repeats: int,
    budget_s: float,
    rounds: int,
    sgemm: float | None,
) -> dict[str, float]:
    """Measure and print the table row by row; returns, per peer, the largest
    relative difference of its forward output from lstm_fast's."""
    ratio_impls = [i for i in impls if i != "lstm_fast"]
    for line in _header(impls, ratio_impls, bool(sgemm)):
        _say(line)
    agreement: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for shape in shapes:
        problem = _bench.make_problem(shape)
        runners: dict[str, _bench.Runner | None] = {}
        for impl in impls:
            if impl == "reference" and shape.name in _REFERENCE_SKIP:
                runners[impl] = None
                continue
            if impl in unavailable:
                runners[impl] = None
                continue
            try:
                runners[impl] = _bench.make_runner(impl, problem, threads)
            except _bench.PeerUnavailable as exc:
                unavailable[impl] = str(exc)
                runners[impl] = None
        outputs: dict[str, np.ndarray] = {}
        for pass_ in _bench.PASSES:
            _say(f"{shape.name:<6}{pass_:<7}", end="")
            work = _bench.flop(shape, pass_)
            fns = {}
            for impl in impls:
                runner = runners[impl]
                fn = runner.for_pass(pass_) if runner is not None else None
                if fn is not None:
                    fns[impl] = fn
            first: dict[str, object] = {}
            timings = _bench.time_interleaved(
                fns, repeats=repeats, budget_s=budget_s, rounds=rounds, first_results=first
            )
            if pass_ == "fwd":  # forward outputs are compared below
                outputs.update({impl: np.asarray(y) for impl, y in first.items()})
            best = {impl: t.best for impl, t in timings.items()}
            cells = ""
            for impl in impls:
                if impl in best:
                    cells += f"  {_fmt_ms(best[impl]):>9}{work / best[impl] / 1e9:>8.1f}"
                else:
                    cells += f"  {'-':>9}{'-':>8}"
            _say(cells, end="")
            ratios = ""
            ours = best.get("lstm_fast")
            for impl in ratio_impls:
                if ours is not None and impl in best:
                    ratios += f"{best[impl] / ours:>{_RATIO - 1}.2f}x"
                else:
                    ratios += f"{'-':>{_RATIO}}"
            if ours is not None and sgemm:
                ratios += f"{100 * work / ours / 1e9 / sgemm:>7.0f}%"
            _say(f"  |{ratios}")
        # Same weights and input everywhere: the outputs must agree.
        if "lstm_fast" in outputs:
            for impl, y in outputs.items():
                if impl != "lstm_fast":
                    diff = _max_rel_diff(y, outputs["lstm_fast"])
                    agreement[impl] = max(agreement.get(impl, 0.0), diff)
    for impl, why in unavailable.items():
        _say(f"  ({_bench.IMPL_LABELS[impl]} skipped: {why})")
    return agreement


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lstm_fast",
        description=(
            "Check lstm_fast against its NumPy reference on a small problem, then time "
            "forward and forward+backward on the standard shapes against the peers "
            "that are installed (NumPy reference, PyTorch, ONNX Runtime)."
        ),
        epilog=(
            "Shapes (float32, time-major, one layer): "
            + "; ".join(f"{s.name}: {s.describe()}" for s in _bench.SHAPES.values())
            + ". Subcommand: 'python -m lstm_fast demo [--help]' runs the LSTM layer demo."
        ),
    )
    parser.add_argument(
        "--shapes",
        default=None,
        help="comma-separated shapes to time (default S,M,L,XL; S,M with --quick)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for lstm_fast, PyTorch and ONNX Runtime "
        "(default: lstm_fast.get_num_threads(), set by LSTM_FAST_NUM_THREADS)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="at most this many timed calls per cell, after one warm-up "
        "(default 20; 3 with --quick); the minimum is shown",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a fast look: shapes S,M, at most 3 timed calls per cell, no sgemm",
    )
    parser.add_argument(
        "--impls",
        default=",".join(_bench.IMPLS),
        help=f"comma-separated implementations to time (default {','.join(_bench.IMPLS)})",
    )
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    try:
        args.shape_list = _bench.parse_shapes(
            args.shapes or ("S,M" if args.quick else ",".join(_bench.SHAPES))
        )
    except ValueError as exc:
        parser.error(f"--shapes: {exc}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in impls if i not in _bench.IMPLS]
    if unknown or not impls:
        parser.error(f"--impls: unknown {unknown}; choose from {','.join(_bench.IMPLS)}")
    args.impl_list = [i for i in _bench.IMPLS if i in impls]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from lstm_fast import demo  # written separately; imported only when asked for

        return int(demo.main(argv[1:]) or 0)

    args = _parse_args(argv)
    missing = {impl: _bench.missing_modules(impl) for impl in args.impl_list}
    args.impl_list = [impl for impl in args.impl_list if not missing[impl]]
    not_installed = [
        f"{_bench.IMPL_LABELS[impl]} (no {', '.join(mods)})"
        for impl, mods in missing.items()
        if mods
    ]
    if args.threads is not None:
        lstm_fast.set_num_threads(args.threads)
    threads = lstm_fast.get_num_threads()
    repeats = args.repeats or (3 if args.quick else 20)
    budget_s = 0.25 if args.quick else 1.5
    rounds = 1 if args.quick else 2

    started = time.perf_counter()
    _say(f"lstm_fast {_version()}: {_isa_line()}, {threads} thread(s)")
    if not demo_check():
        _say("lstm_fast disagrees with its NumPy reference: not timing it.")
        return 1
    _say()

    versions = _bench.peer_versions() if len(args.impl_list) > 1 else {"numpy": np.__version__}
    _say(
        "Throughput: float32, time-major, one layer, "
        f"{threads} thread(s) for every implementation; the best of up to {repeats} "
        f"back-to-back calls, in {rounds} block(s) per implementation, each after a warm-up "
        "call, the implementations taking turns."
    )
    _say("  " + "; ".join(f"{s.name}: {s.describe()}" for s in args.shape_list))
    _say(
        "  fwd: inference forward (lstm_fast/reference need_cache=False, PyTorch "
        "inference_mode, ONNX RT); fwd+bwd: training forward + full backward "
        "(PyTorch autograd over x and all weights)."
    )
    _say("  GFLOP/s counts 2*T*B*4H*(I+H) per forward and 3x that per forward+backward.")
    _say("  speed-up = the peer's time / lstm_fast's time (above 1: lstm_fast is faster).")
    _say("  Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if not_installed:
        _say(
            f"  Not installed, not timed: {'; '.join(not_installed)}. "
            'pip install ".[peers]" adds them.'
        )
    sgemm: float | None = None
    if not args.quick:
        _say("  %sgemm: lstm_fast's GFLOP/s over NumPy's sgemm 2048^3 rate: ", end="")
        sgemm = _bench.sgemm_gflops(2048)
        _say(f"{sgemm:.0f} GFLOP/s")
    _say()
    agreement = run_table(
        args.shape_list, args.impl_list, threads, repeats, budget_s, rounds, sgemm
    )
    if agreement:
        _say(
            "Forward outputs vs lstm_fast, max |a-b|/(1+|b|): "
            + ", ".join(
                f"{_bench.IMPL_LABELS[k]} {v:.1e}{'' if v < 1e-3 else ' MISMATCH'}"
                for k, v in agreement.items()
            )
        )
    _say(f"Done in {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
