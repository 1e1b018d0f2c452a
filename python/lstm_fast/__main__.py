"""``python -m lstm_fast``: the command line, one ``argparse`` tree.

    python -m lstm_fast [bench's options]   the main job: check, then bench
    python -m lstm_fast check               lstm_fast against its NumPy reference
    python -m lstm_fast bench [options]     the throughput table
    python -m lstm_fast demo [options]      the LSTM layer demo (lstm_fast.demo)
    python -m lstm_fast suite [options]     the real-world suite (lstm_fast.suite)
    python -m lstm_fast explain [options]   the gates and the gradient flow (lstm_fast.explain)

``check`` runs one tiny forward and backward, shows the shapes and compares
every output and gradient with the NumPy reference (exit status 1 on a
mismatch). ``bench`` times the standard shapes of :mod:`lstm_fast.benchmark`
(float32, time-major, one layer) for lstm_fast and the peers that are
importable (the NumPy reference, PyTorch's ``nn.LSTM``, ONNX Runtime's ``LSTM``
op), all in this process with the same number of threads, printing each cell
as it is measured. Without a command the main job runs: the check, then (if it
passed) the table, with bench's options given before any command.

A command is one entry of :data:`COMMANDS`: its name, its help, a function
that adds its options to its subparser and a function that runs it. Options
given before a command are the main job's (bench's); a command that does not
have them rejects them rather than ignore them.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np

import lstm_fast
from lstm_fast import benchmark, demo, explain, suite


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


def check_against_reference() -> bool:
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

    _say(f"Check: one forward + backward, T={T} B={B} I={I} H={H}, float32")
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


def _header(impls: list[str], ratio_impls: list[str], with_peak: bool) -> list[str]:
    top = f"{'':<13}" + "".join(f"  {benchmark.IMPL_LABELS[i]:^{_CELL}}" for i in impls)
    top += "  | lstm_fast speed-up over"
    if with_peak:
        top += " " * max(1, _RATIO * len(ratio_impls) - 23) + " | % of the FMA peak"
    sub = f"{'shape':<6}{'pass':<7}" + "".join(f"  {'ms':>9}{'GFLOP/s':>8}" for _ in impls)
    sub += "  |" + "".join(f"{benchmark.IMPL_LABELS[i]:>{_RATIO}}" for i in ratio_impls)
    if with_peak:
        sub += " |" + "".join(f"{benchmark.IMPL_LABELS[i]:>{_RATIO + 1}}" for i in impls)
    return [top, sub, "-" * len(sub)]


def run_table(
    shapes: list[benchmark.Shape],
    impls: list[str],
    threads: int,
    repeats: int,
    budget_s: float,
    rounds: int,
    peak: float | None,
) -> dict[str, float]:
    """Measure and print the table row by row; returns, per peer, the largest
    relative difference of its forward output from lstm_fast's. ``peak`` (GFLOP/s
    of the cores used) adds each implementation's share of it."""
    ratio_impls = [i for i in impls if i != "lstm_fast"]
    for line in _header(impls, ratio_impls, bool(peak)):
        _say(line)
    agreement: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for shape in shapes:
        problem = benchmark.make_problem(shape)
        runners, failed = benchmark.make_runners(
            problem, [i for i in impls if i not in unavailable], threads
        )
        unavailable.update(failed)
        outputs: dict[str, np.ndarray] = {}
        for pass_ in benchmark.PASSES:
            _say(f"{shape.name:<6}{pass_:<7}", end="")
            work = benchmark.flop(shape, pass_)
            fns = {}
            for impl, runner in runners.items():
                fn = runner.for_pass(pass_)
                if fn is not None:
                    fns[impl] = fn
            first: dict[str, object] = {}
            timings = benchmark.time_interleaved(
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
            if peak:
                ratios += " |"
                for impl in impls:
                    if impl in best:
                        ratios += f"{100 * work / best[impl] / 1e9 / peak:>{_RATIO}.0f}%"
                    else:
                        ratios += f"{'-':>{_RATIO + 1}}"
            _say(f"  |{ratios}")
        # Same weights and input everywhere: the outputs must agree.
        if "lstm_fast" in outputs:
            for impl, y in outputs.items():
                if impl != "lstm_fast":
                    diff = _max_rel_diff(y, outputs["lstm_fast"])
                    agreement[impl] = max(agreement.get(impl, 0.0), diff)
    for impl, why in unavailable.items():
        _say(f"  ({benchmark.IMPL_LABELS[impl]} skipped: {why})")
    return agreement


def _shape_list(text: str) -> list[benchmark.Shape]:
    try:
        return benchmark.parse_shapes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _impl_list(text: str) -> list[str]:
    """``"torch,lstm_fast"`` -> the named implementations, in the table's column order."""
    names = [i.strip() for i in text.split(",") if i.strip()]
    unknown = [i for i in names if i not in benchmark.IMPLS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {unknown}; choose from {','.join(benchmark.IMPLS)}"
        )
    return [i for i in benchmark.IMPLS if i in names]


# bench's options, which the main job takes too: flag -> add_argument's keywords.
_BENCH_OPTIONS: dict[str, dict[str, Any]] = {
    "--shapes": dict(
        type=_shape_list,
        metavar="S,M,...",
        help="comma-separated shapes to time (default S,M,L,XL; S,M with --quick)",
    ),
    "--threads": dict(
        type=benchmark.positive_int,
        metavar="N",
        help="threads for lstm_fast, PyTorch and ONNX Runtime "
        "(default: lstm_fast.get_num_threads(), set by LSTM_FAST_NUM_THREADS)",
    ),
    "--repeats": dict(
        type=benchmark.positive_int,
        metavar="N",
        help="at most this many timed calls per cell, after one warm-up "
        "(default 20; 3 with --quick); the minimum is shown",
    ),
    "--quick": dict(
        action="store_true",
        help="a fast look: shapes S,M, at most 3 timed calls per cell, no sgemm",
    ),
    "--impls": dict(
        type=_impl_list,
        metavar="NAME,...",
        help=f"comma-separated implementations to time (default {','.join(benchmark.IMPLS)})",
    ),
}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """bench's options. An option not given stays unset (``SUPPRESS``), so that
    one given before ``bench`` is not reset by it; run_bench picks the defaults."""
    for flag, options in _BENCH_OPTIONS.items():
        parser.add_argument(flag, default=argparse.SUPPRESS, **options)


def _header_line(threads: int) -> str:
    return f"lstm_fast {_version()}: {_isa_line()}, {threads} thread(s)"


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """check has no options: the problem is fixed so that its verdict is comparable."""


def run_check(args: argparse.Namespace) -> int:
    _say(_header_line(lstm_fast.get_num_threads()))
    return 0 if check_against_reference() else 1


def run_bench(args: argparse.Namespace, *, check_first: bool = False) -> int:
    """The throughput table with bench's options; with ``check_first``, the main
    job: the check first, and no table when it fails."""
    quick = getattr(args, "quick", False)
    default_shapes = "S,M" if quick else ",".join(benchmark.SHAPES)
    shapes = getattr(args, "shapes", None) or _shape_list(default_shapes)
    impls = getattr(args, "impls", None) or list(benchmark.IMPLS)
    missing = {impl: benchmark.missing_modules(impl) for impl in impls}
    impls = [impl for impl in impls if not missing[impl]]
    not_installed = [
        f"{benchmark.IMPL_LABELS[impl]} (no {', '.join(mods)})"
        for impl, mods in missing.items()
        if mods
    ]
    if hasattr(args, "threads"):
        lstm_fast.set_num_threads(args.threads)
    threads = lstm_fast.get_num_threads()
    repeats = getattr(args, "repeats", None) or (3 if quick else 20)
    budget_s = 0.25 if quick else 1.5
    rounds = 1 if quick else 2

    started = time.perf_counter()
    _say(_header_line(threads))
    if check_first:
        if not check_against_reference():
            _say("lstm_fast disagrees with its NumPy reference: not timing it.")
            return 1
        _say()

    versions = benchmark.peer_versions() if len(impls) > 1 else {"numpy": np.__version__}
    _say(
        "Throughput: float32, time-major, one layer, "
        f"{threads} thread(s) for every implementation; the best of up to {repeats} "
        f"back-to-back calls, in {rounds} block(s) per implementation, each after a warm-up "
        "call, the implementations taking turns."
    )
    _say("  " + "; ".join(f"{s.name}: {s.describe()}" for s in shapes))
    _say(
        "  fwd: inference forward (lstm_fast's LSTM layer and the reference with "
        "need_cache=False, PyTorch's nn.LSTM under inference_mode, ONNX RT); fwd+bwd: "
        "training forward + full backward (PyTorch autograd over x and all weights)."
    )
    _say("  GFLOP/s counts 2*T*B*4H*(I+H) per forward and 3x that per forward+backward.")
    _say("  speed-up = the peer's time / lstm_fast's time (above 1: lstm_fast is faster).")
    _say("  Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if not_installed:
        _say(
            f"  Not installed, not timed: {'; '.join(not_installed)}. "
            'pip install ".[peers]" adds them.'
        )
    _say(f"  CPU: {benchmark.cpu_model()}")
    per_core = benchmark.fma_peak()
    peak = per_core * threads
    _say(
        f"  % of the FMA peak: GFLOP/s over {threads} x {per_core:.0f} GFLOP/s, the measured "
        f"single-core f32 FMA peak of the {lstm_fast.get_isa()} path (scripts/fma_peak.py)."
    )
    _say()
    agreement = run_table(shapes, impls, threads, repeats, budget_s, rounds, peak)
    if agreement:
        _say(
            "Forward outputs vs lstm_fast, max |a-b|/(1+|b|): "
            + ", ".join(
                f"{benchmark.IMPL_LABELS[k]} {v:.1e}{'' if v < 1e-3 else ' MISMATCH'}"
                for k, v in agreement.items()
            )
        )
    _say(f"Done in {time.perf_counter() - started:.0f} s.")
    return 0


class Command(NamedTuple):
    """One subcommand: ``python -m lstm_fast NAME [options]``."""

    name: str
    help: str  # one line in the list of commands
    description: str  # the head of the command's own --help
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str | None = None  # the tail of its --help


_SHAPES_EPILOG = (
    "Shapes (float32, time-major, one layer): "
    + "; ".join(f"{s.name}: {s.describe()}" for s in benchmark.SHAPES.values())
    + "."
)

COMMANDS = (
    Command(
        "check",
        "one small forward + backward against the NumPy reference (exit 1 on a mismatch)",
        "Run one small forward and backward, show the shapes and compare every "
        "output and gradient with lstm_fast.reference; exit status 1 on a mismatch.",
        add_check_arguments,
        run_check,
    ),
    Command(
        "bench",
        "the throughput table: the standard shapes against the installed peers",
        "Time forward and forward+backward on the standard shapes against the peers "
        "that are installed (NumPy reference, PyTorch, ONNX Runtime).",
        add_bench_arguments,
        run_bench,
        _SHAPES_EPILOG,
    ),
    Command(
        "demo",
        "train two small models with the LSTM layer",
        demo.DESCRIPTION,
        demo.add_arguments,
        demo.run,
    ),
    Command(
        "explain",
        "why LSTMs remember: the forget-gate example and the gradient flow through time",
        explain.DESCRIPTION,
        explain.add_arguments,
        explain.run,
    ),
    Command(
        "suite",
        "the real-world suite: reported shapes, per-call cost, latency, steadiness",
        "Time the shapes users report in PyTorch's and Keras's issue trackers (wide "
        "input, long stacks, ragged batches, long batch-1 series, stacked bidirectional "
        "training, one step per call), the cost of one call, latency percentiles and "
        "medians, against PyTorch and ONNX Runtime where installed. Prints Markdown.",
        suite.add_arguments,
        suite.run,
    ),
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, set[str]]]:
    """The parser, and for each command the option names (dests) it defines."""
    parser = argparse.ArgumentParser(
        prog="python -m lstm_fast",
        description=(
            "Without a command, the main job: check lstm_fast against its NumPy "
            "reference on a small problem, then time forward and forward+backward on "
            "the standard shapes against the peers that are installed (NumPy "
            "reference, PyTorch, ONNX Runtime); its options are bench's."
        ),
        epilog=_SHAPES_EPILOG + " 'python -m lstm_fast COMMAND --help' shows a command's options.",
    )
    add_bench_arguments(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    dests: dict[str, set[str]] = {}
    for command in COMMANDS:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog=command.epilog,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        command.add_arguments(sub)
        dests[command.name] = {action.dest for action in sub._actions}
    return parser, dests


def main(argv: list[str] | None = None) -> int:
    parser, dests = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        return run_bench(args, check_first=True)
    # Options before a command are the main job's; the command must know them.
    stray = [
        flag
        for flag in _BENCH_OPTIONS
        if hasattr(args, flag[2:]) and flag[2:] not in dests[args.command]
    ]
    if stray:
        parser.error(
            f"{', '.join(stray)}: not an option of '{args.command}' "
            "(options before a command are the main job's)"
        )
    command = next(c for c in COMMANDS if c.name == args.command)
    return int(command.run(args) or 0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
