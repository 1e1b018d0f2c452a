"""``python -m lstm_fast explain``: why an LSTM remembers, in numbers and in a plot.

(1) The classic forget-gate worked example (I = H = 3, textbook weights
``f = σ(W_f·[x, h_prev] + b_f)``), computed by lstm_fast itself with every
product term written out, including the input-gate figures that the usual
write-up prints and that do not add up.

(2) The gradient flow through time: one long random sequence, a loss on the
last step only, and ‖∂L/∂c_t‖ (from ``LSTM.backward(..., flow=True)``) against
the number of steps back from the loss, for an LSTM without a forget gate (the
constant error carousel), with the forget-gate bias at 0 and at 1, and for a
plain tanh RNN (‖∂L/∂h_t‖, backpropagated here in NumPy). A PNG plot when
matplotlib is installed, a text chart otherwise, and always a small table.

Nothing is trained: the curves are those of freshly initialised models, which
is where vanishing gradients decide whether training can start at all.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from typing import Any, NamedTuple

import numpy as np

from . import convert
from . import functional as F
from .benchmark import positive_int
from .layer import LSTM


def _say(text: str = "") -> None:
    print(text, flush=True)


# ------------------------------------------------------- (1) the worked example

# The numbers of the classic example (I = H = 3). Only the f and i rows are set:
# g and o stay zero, so the example isolates what the two gates do to c.
W_F = np.array([[1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10], [3, 4, 5, 6, 7, 8]], dtype=np.float64)
B_F = np.array([1.0, 2.0, 3.0])
W_I = np.repeat([[1.0], [2.0], [3.0]], 6, axis=1)  # rows of 1s, 2s and 3s
B_I = np.array([1.0, 1.0, 1.0])
B_I_PRINTED = np.array([1.0, 0.0, -1.0])  # the bias the printed [22, 42, 62] needs
X = np.array([1.0, 2.0, 3.0])
H_PREV = np.array([4.0, 5.0, 6.0])
C_PREV = np.array([1.0, -2.0, 3.0])
PRINTED_Z_I = np.array([22.0, 42.0, 62.0])  # what the classic write-up shows

# Gate activation Affine(1, 0), the identity: the cache then holds the
# pre-activations themselves, exactly, where sigmoid would have saturated to 1.
_IDENTITY_GATES = (("Affine", 1.0, 0.0), "Tanh", "Tanh")


class WorkedExample(NamedTuple):
    """What lstm_fast computes for the example (each (H,) for the one batch row)."""

    z_f: np.ndarray  # forget-gate pre-activation
    z_i: np.ndarray  # input-gate pre-activation
    f: np.ndarray  # σ(z_f) as the engine computes it
    i: np.ndarray
    c_new: np.ndarray
    h_new: np.ndarray


def worked_example() -> WorkedExample:
    """Run the example's one step through ``lstm_fast.cell_forward``."""
    zeros = np.zeros_like(W_F)
    weights = convert.from_gate_matrices(W_I, W_F, zeros, zeros, B_I, B_F, input_size=3)
    state = (X[None, :], H_PREV[None, :], C_PREV[None, :])  # one batch row
    cell = F.cell_forward(*state, *weights)
    raw = F.cell_forward(*state, *weights, activations=_IDENTITY_GATES)
    return WorkedExample(
        raw.cache.f[0],
        raw.cache.i[0],
        cell.cache.f[0],
        cell.cache.i[0],
        cell.c_new[0],
        cell.h_new[0],
    )


def _num(v: float) -> str:
    return f"{v:g}"


def _row_arithmetic(name: str, k: int, w: np.ndarray, b: float, z: float) -> str:
    """``z_f[0] = 1·1 + 2·2 + ... + 1 = 1 + 4 + ... + 1 = 92``: one row, every term."""
    v = np.concatenate([X, H_PREV])
    products = " + ".join(f"{_num(a)}·{_num(c)}" for a, c in zip(w, v))
    terms = " + ".join(_num(a * c) for a, c in zip(w, v))
    bias = f" + {_num(b)}" if b >= 0 else f" - {_num(-b)}"
    return f"    {name}[{k}] = {products}{bias}\n           = {terms}{bias} = {_num(z)}"


def _sigmoid_gap(z: float) -> str:
    """σ(z) = 1 - e^-z/(1 + e^-z): how far from 1, which float64 cannot hold."""
    gap = np.exp(-z) / (1.0 + np.exp(-z))
    return f"1 - {gap:.1e}"


def show_worked_example(ex: WorkedExample) -> None:
    _say("(1) The forget-gate worked example, I = H = 3 (computed by lstm_fast.cell_forward)")
    _say("    f = σ(W_f·[x, h_prev] + b_f),  i = σ(W_i·[x, h_prev] + b_i),  c = f·c_prev + i·g")
    _say(f"    x = {X.tolist()}, h_prev = {H_PREV.tolist()}, c_prev = {C_PREV.tolist()}")
    _say(f"    b_f = {B_F.tolist()}, b_i = {B_I.tolist()}")
    _say(f"    W_f = {W_F.astype(int).tolist()};  W_i = rows of 1s, 2s, 3s")
    _say("  Forget gate:")
    for k in range(3):
        _say(_row_arithmetic("z_f", k, W_F[k], B_F[k], float(ex.z_f[k])))
    _say(f"    lstm_fast: z_f = {ex.z_f.tolist()},  f = σ(z_f) = {ex.f.tolist()}")
    gaps = ", ".join(_sigmoid_gap(float(z)) for z in ex.z_f)
    _say(f"    (σ(92), σ(177), σ(136) = {gaps}: 1 to the last bit of a float64)")
    _say("  Input gate:")
    for k in range(3):
        _say(_row_arithmetic("z_i", k, W_I[k], B_I[k], float(ex.z_i[k])))
    gaps = ", ".join(_sigmoid_gap(float(z)) for z in ex.z_i)
    _say(f"    lstm_fast: z_i = {ex.z_i.tolist()},  i = σ(z_i) = {ex.i.tolist()}")
    _say(f"    (σ(22), σ(43), σ(64) = {gaps})")
    printed = PRINTED_Z_I.astype(int).tolist()
    sums = (W_I @ np.concatenate([X, H_PREV])).astype(int).tolist()
    _say(
        f"    The classic write-up prints z_i = {printed}: that does not add up. The sums"
        f" W_i·[x, h_prev] are {sums}"
    )
    _say(
        f"    (21 times 1, 2, 3), so b_i = [1, 1, 1] gives {ex.z_i.astype(int).tolist()}; "
        f"{printed} needs b_i = {B_I_PRINTED.astype(int).tolist()}."
    )
    _say("    Either way σ(z_i) is 1 within 3e-10, so the example's conclusion stands.")
    _say(
        f"  Cell: g = tanh(0) = 0 (W_c = 0), so c = f·c_prev + i·g = {ex.c_new.tolist()} = c_prev."
    )
    _say(
        "    A forget gate at 1 keeps the cell state whole; and since σ'(z) = σ(z)(1 - σ(z))"
        " ≈ e^-92 here,"
    )
    _say("    a gate this saturated also passes no gradient to W_f: it cannot learn to forget.")


# --------------------------------------------------- (2) the gradient flow


class Curve(NamedTuple):
    """One model's gradient norm against the steps back from the loss."""

    label: str
    mark: str  # its character in the text chart
    norm: np.ndarray  # (T,): norm[k] = mean over rows of ‖∂L/∂(state k steps back)‖
    note: str  # one line of what it shows


def _lstm_curve(layer: LSTM, x: np.ndarray) -> np.ndarray:
    """Mean ‖∂L/∂c_t‖ over the rows, k steps back from a loss on the last step."""
    y, _ = layer(x)
    dy = np.zeros_like(y)
    dy[-1] = 1.0  # L = the sum of the last step's outputs
    layer.backward(dy, flow=True)
    flow = layer.flow[(0, 0)]
    return np.asarray(flow.dc_sum[::-1] / x.shape[1], dtype=np.float64)


def tanh_rnn_gradients(
    x: np.ndarray, w: np.ndarray, u: np.ndarray, b: np.ndarray, dh_last: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A plain RNN, ``h_t = tanh(W x_t + U h_{t-1} + b)`` from h = 0, and BPTT of a
    loss whose gradient at the last h is ``dh_last`` (B, H). Returns ``(h, dh)``,
    each (T, B, H): the states and ∂L/∂h_t (everything reaching h_t)."""
    steps, batch, _ = x.shape
    hidden = u.shape[0]
    h = np.empty((steps, batch, hidden))
    prev = np.zeros((batch, hidden))
    for t in range(steps):
        prev = h[t] = np.tanh(x[t] @ w.T + prev @ u.T + b)
    dh = np.empty_like(h)
    dh[-1] = dh_last
    for t in range(steps - 1, 0, -1):
        # Each step back multiplies by diag(1 - h_t²)·U: nothing else carries the error.
        dh[t - 1] = (dh[t] * (1.0 - h[t] ** 2)) @ u
    return h, dh


def _cache(layer: LSTM, x: np.ndarray) -> Any:
    """The forward cache (gates and cell states) of ``layer``'s one layer on ``x``."""
    p = layer.parameters
    out = F.forward(
        x, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"],
        forget_gate=layer.forget_gate,
    )  # fmt: skip
    return out.cache


def gradient_flow(
    steps: int, hidden: int, seed: int, inputs: int = 4, batch: int = 8
) -> list[Curve]:
    """The five curves on one random input sequence (same seed, same weights
    wherever the models share them)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps, batch, inputs))
    curves = []

    def lstm(**options: Any) -> LSTM:
        # float64: 0.5^k over a few hundred steps is below float32's range.
        return LSTM(inputs, hidden, seed=seed, dtype=np.float64, **options)

    alone = lstm(forget_gate=False)
    alone.parameters["weight_hh_l0"][:] = 0.0  # no way back through h: the carousel only
    curves.append(
        Curve(
            "carousel alone (no forget gate, W_hh = 0)",
            "=",
            _lstm_curve(alone, x),
            "dc_{t-1} = dc_t and nothing else reaches the past: exactly constant",
        )
    )
    plain = lstm(forget_gate=False)
    norm = _lstm_curve(plain, x)
    c = np.abs(_cache(plain, x).c).mean(axis=(1, 2))
    curves.append(
        Curve(
            "(a) no forget gate",
            "a",
            norm,
            "nothing decays, but each step adds what comes back through h, and nothing "
            f"forgets: |c| grows from {c[0]:.2f} to {c[-1]:.1f} along the sequence, so"
            " tanh'(c) shuts that path near the loss and opens it far back,"
            " where the sum can grow (Gers et al. 2000)",
        )
    )
    for bias, mark in ((0.0, "0"), (1.0, "1")):
        layer = lstm(forget_bias=bias)
        norm = _lstm_curve(layer, x)
        mean_f = float(np.mean(_cache(layer, x).f))
        label = f"({'b' if bias == 0 else 'c'}) forget bias {bias:g}"
        note = f"each step back multiplies by f, here {mean_f:.2f} on average (σ({bias:g}) = "
        note += f"{1 / (1 + np.exp(-bias)):.2f}), plus what comes back through h"
        curves.append(Curve(label, mark, norm, note))

    # PyTorch's nn.RNN initialisation, uniform in ±1/sqrt(H), like the LSTM's.
    bound = 1.0 / np.sqrt(hidden)
    w = rng.uniform(-bound, bound, (hidden, inputs))
    u = rng.uniform(-bound, bound, (hidden, hidden))
    b = rng.uniform(-bound, bound, hidden)
    _, dh = tanh_rnn_gradients(x, w, u, b, np.ones((batch, hidden)))
    rho = float(np.max(np.abs(np.linalg.eigvals(u))))
    curves.append(
        Curve(
            "(d) tanh RNN, ‖∂L/∂h_t‖",
            "r",
            np.linalg.norm(dh, axis=2).mean(axis=1)[::-1],
            f"each step back multiplies by diag(1 - h²)·U; U's spectral radius is {rho:.2f}",
        )
    )
    return curves


def distances(steps: int) -> list[int]:
    """The steps back shown in the table."""
    ks = [k for k in (0, 1, 5, 10, 25, 50, 100, 150, 200, 300, 500) if k < steps]
    return ks if ks[-1] == steps - 1 else ks + [steps - 1]


def _relative(curve: Curve) -> np.ndarray:
    return curve.norm / curve.norm[0]


def _per_step(curve: Curve) -> float:
    """The geometric mean factor per step back, over the whole sequence."""
    r = _relative(curve)
    far = len(r) - 1
    return float(r[far] ** (1.0 / far)) if far and r[far] > 0 else float("nan")


def show_table(curves: list[Curve], steps: int) -> None:
    _say(
        "  ‖∂L/∂c‖ (RNN: ‖∂L/∂h‖) k steps back from the loss, relative to k = 0, mean of the rows:"
    )
    width = 12
    _say("    " + f"{'k':>5}" + "".join(f"{c.mark:>{width}}" for c in curves))
    for k in distances(steps):
        _say("    " + f"{k:>5}" + "".join(f"{_relative(c)[k]:>{width}.3e}" for c in curves))
    _say("    " + f"{'×/step':>5}" + "".join(f"{_per_step(c):>{width}.4f}" for c in curves))
    for c in curves:
        text = f"{c.mark}  {c.label}: {c.note}"
        _say(textwrap.fill(text, 96, initial_indent="    ", subsequent_indent="       "))


def text_chart(curves: list[Curve], height: int = 16, width: int = 64) -> list[str]:
    """A log-scale chart: rows are powers of ten, columns steps back from the loss.
    Where curves meet, the later one in ``curves`` is drawn."""
    steps = len(curves[0].norm)
    with np.errstate(divide="ignore"):
        logs = [np.log10(_relative(c)) for c in curves]
    finite = np.concatenate([v[np.isfinite(v)] for v in logs])
    top = int(np.ceil(finite.max()))
    bottom = max(min(int(np.floor(finite.min())), top - 1), top - 300)
    # Whole decades per row, or whole rows per decade, so that labels are powers of ten;
    # rows on multiples of it, so that 1e+00 (where every curve starts) is one.
    span = top - bottom
    if span <= height - 1:
        per_row = 1.0 / ((height - 1) // span)
    else:
        per_row = float(-(-span // (height - 2)))
    top_row = int(np.ceil(top / per_row))
    rows = top_row - int(np.floor(bottom / per_row)) + 1
    high = top_row * per_row  # the top row's power of ten
    low = high - per_row * (rows - 1)
    columns = min(width, steps)
    ks = np.round(np.linspace(0, steps - 1, columns)).astype(int)
    grid = [[" "] * columns for _ in range(rows)]
    for curve, v in zip(curves, logs):
        for col, k in enumerate(ks):
            value = max(v[k], low)  # -inf (an underflow to 0) and below: the bottom row
            grid[int(round((high - value) / per_row))][col] = curve.mark
    lines = []
    for r, row in enumerate(grid):
        level = high - per_row * r
        label = f"1e{int(round(level)):+03d}" if abs(level - round(level)) < 1e-9 else ""
        lines.append(f"    {label:>6} |" + "".join(row))
    lines.append("    " + " " * 7 + "+" + "-" * columns)
    left, right = "0", f"{steps - 1} steps back"
    lines.append("    " + " " * 8 + left + right.rjust(columns - len(left)))
    return lines


def plot_png(curves: list[Curve], path: str, title: str) -> None:
    """The log-scale plot, with matplotlib's object API (no pyplot, no GUI backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    styles = {"=": ":", "a": "-", "0": "-", "1": "-", "r": "--"}
    for c in curves:
        r = _relative(c)
        ax.plot(
            np.arange(len(r)), np.where(r > 0, r, np.nan), styles.get(c.mark, "-"), label=c.label
        )
    ax.set_yscale("log")
    ax.set_xlabel("steps back from the loss (k)")
    ax.set_ylabel(
        r"$\Vert\partial L/\partial c_{T-k}\Vert\ /\ \Vert\partial L/\partial c_T\Vert$  (RNN: h)"
    )
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------------- main


DESCRIPTION = (
    "Why LSTMs remember: the forget-gate worked example with its arithmetic, then the "
    "gradient norm through time without a forget gate, with forget-gate bias 0 and 1, "
    "and for a plain tanh RNN (a PNG with matplotlib, else a text chart)."
)

_READING = (
    "Reading it: with f ≡ 1 the cell hands its gradient back untouched (=): the constant",
    "error carousel. In (a) the paths through h add to it at every step and nothing takes",
    "it away, so it does not vanish, but it is not constant either. Forget gates at",
    "σ(0) = 0.5 cut it by about that much every step (b); bias 1 slows the decay (c), and",
    "training then opens f towards 1 on the cells that must remember. The tanh RNN has no",
    "carousel: every step back multiplies its error by a matrix of gain below 1 (d).",
)

# dest -> (default, with --quick); options given explicitly win over both.
_SIZES = {"steps": (150, 30), "hidden": (32, 8)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """explain's options, on ``parser`` (its subparser under ``python -m lstm_fast``)."""
    for name, (default, quick) in _SIZES.items():
        parser.add_argument(
            f"--{name}",
            type=positive_int,
            default=argparse.SUPPRESS,  # unset: run() picks the default or the quick size
            help=f"{'sequence length T' if name == 'steps' else 'hidden size H'} "
            f"(default: {default}; {quick} with --quick)",
        )
    parser.add_argument("--seed", type=int, default=0, help="seeds the input and the weights")
    parser.add_argument(
        "--quick",
        action="store_true",
        default=argparse.SUPPRESS,  # unset: a --quick before 'explain' still counts
        help="a short sequence and a small model",
    )
    parser.add_argument("--out", default="explain.png", help="where the PNG goes (with matplotlib)")
    parser.add_argument(
        "--no-plot", action="store_true", help="no PNG: the text chart in the terminal"
    )


def run(args: argparse.Namespace) -> int:
    quick = getattr(args, "quick", False)
    for name, sizes in _SIZES.items():
        if not hasattr(args, name):
            setattr(args, name, sizes[1] if quick else sizes[0])
    show_worked_example(worked_example())
    _say()
    steps, hidden = args.steps, args.hidden
    if steps < 2:
        raise SystemExit("--steps must be at least 2")
    _say(
        f"(2) Gradient flow through time: T = {steps}, H = {hidden}, 8 rows of random input,"
        f" seed {args.seed}; the loss is the sum of the last step's outputs"
    )
    curves = gradient_flow(steps, hidden, args.seed)
    show_table(curves, steps)
    for line in _READING:
        _say("  " + line)
    title = f"Gradient flow through time (T = {steps}, H = {hidden}, seed {args.seed})"
    written = None
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            _say("  (matplotlib is not installed: the text chart instead of a PNG)")
        else:
            plot_png(curves, args.out, title)
            written = os.path.abspath(args.out)
    if written:
        _say(f"  Plot written to {written}")
    else:
        _say(f"  {title}, log scale, relative to k = 0:")
        for line in text_chart(curves):
            _say(line)
        _say(
            "    marks: "
            + " ".join(c.mark for c in curves)
            + " as in the table above (where they meet, the later one)"
        )
    return 0
