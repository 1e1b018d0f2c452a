"""``python -m lstm_fast demo``: train two small models with lstm_fast alone.

(a) The adding problem (Hochreiter & Schmidhuber 1997, experiment 4): every
sequence carries random numbers in [0, 1] and a marker channel that flags two of
them, one in each half; the target, read from the last hidden state, is their sum.
Predicting the mean (1.0) gives MSE 1/6, so a loss near zero means the LSTM carries
two numbers across up to T steps of distractors.

(b) A character model on the Zen of Python (the text of the ``this`` module, which
ships with every Python): one-hot characters in, next-character logits out, loss
per epoch with a progress bar, then a sample generated one character at a time
with :meth:`LSTM.step`.

Everything is NumPy around the lstm_fast layer: the linear heads, the losses and
their gradients, Adam and gradient clipping from :mod:`lstm_fast.optim`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from typing import Any, Callable, TextIO

import numpy as np

from .benchmark import positive_int
from .layer import LSTM
from .optim import Adam, clip_grad_norm

_BASELINE_MSE = 1.0 / 6.0  # variance of the sum of two U(0, 1)


def _say(text: str = "", end: str = "\n", file: TextIO | None = None) -> None:
    print(text, end=end, file=file or sys.stdout, flush=True)


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _forget_bias(model: LSTM, value: float) -> None:
    """Start every forget gate open (a classic trick for long time lags)."""
    hidden = model.hidden_size
    for name, p in model.parameters.items():
        if name.startswith("bias_ih"):
            p[hidden : 2 * hidden] = value
        elif name.startswith("bias_hh"):
            p[hidden : 2 * hidden] = 0.0


# ----------------------------------------------------------------- adding problem


def adding_batch(rng: np.random.Generator, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """x (B, T, 2) batch-first: values and markers; target (B, 1): the marked sum."""
    values = rng.uniform(0.0, 1.0, size=(batch, steps))
    markers = np.zeros((batch, steps))
    half = max(steps // 2, 1)
    rows = np.arange(batch)
    first = rng.integers(0, half, size=batch)
    second = rng.integers(half, steps, size=batch) if steps > half else first
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = values[rows, first] + values[rows, second] * (second != first)
    x = np.stack([values, markers], axis=-1).astype(np.float32)
    return x, target[:, None].astype(np.float32)


def run_adding(args: argparse.Namespace) -> float:
    """Train until the mean loss of the last few steps is near zero; returns test MSE."""
    rng = np.random.default_rng(args.seed)
    hidden = args.adding_hidden
    model = LSTM(2, hidden, batch_first=True, seed=args.seed)
    _forget_bias(model, 1.0)
    head = {
        "head.weight": rng.uniform(-0.1, 0.1, size=(hidden, 1)).astype(np.float32),
        "head.bias": np.ones(1, np.float32),  # start at the mean target
    }
    params = {**model.parameters, **head}
    optimizer = Adam(params, lr=args.adding_lr)
    _say(
        f"(a) Adding problem, T = {args.seq_len}: {model!r} + linear head, batch "
        f"{args.batch}, Adam lr {args.adding_lr}, clip 1.0"
    )
    _say(
        f"    baseline (always predict 1.0): MSE {_BASELINE_MSE:.3f}; stop at a mean "
        f"loss below {args.target_loss} over {args.window} steps or after {args.steps} steps"
    )
    _say(f"    {'step':>6} {'loss':>9} {'steps/s':>8}")
    started = time.perf_counter()
    recent: list[float] = []
    step = 0
    for step in range(1, args.steps + 1):
        x, target = adding_batch(rng, args.batch, args.seq_len)
        _, (h_n, _) = model(x)
        features = h_n[-1]  # (B, H)
        pred = features @ params["head.weight"] + params["head.bias"]
        err = pred - target
        loss = float(np.mean(err**2))
        dpred = (2.0 / err.size) * err
        dh_n = np.zeros_like(h_n)
        dh_n[-1] = dpred @ params["head.weight"].T
        model.backward(None, dh_n)
        grads = {**model.grads, "head.weight": features.T @ dpred, "head.bias": dpred.sum(axis=0)}
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads)
        recent = (recent + [loss])[-args.window :]
        mean = sum(recent) / len(recent)
        if (
            step == 1
            or step % args.log_every == 0
            or step == args.steps
            or (len(recent) == args.window and mean < args.target_loss)
        ):
            rate = step / (time.perf_counter() - started)
            _say(f"    {step:>6} {mean:>9.5f} {rate:>8.0f}")
        if len(recent) == args.window and mean < args.target_loss:
            break
    x, target = adding_batch(rng, 1000, args.seq_len)
    _, (h_n, _) = model(x, need_cache=False)
    test = float(np.mean((h_n[-1] @ params["head.weight"] + params["head.bias"] - target) ** 2))
    verdict = "solved" if test < 0.01 else "not solved yet (raise --steps)"
    _say(
        f"    test MSE on 1000 fresh sequences: {test:.5f} ({verdict}; baseline "
        f"{_BASELINE_MSE:.3f}) after {step} steps, {time.perf_counter() - started:.1f} s"
    )
    return test


# ---------------------------------------------------------------- character model


def zen_of_python() -> str:
    """The Zen of Python, decoded from the ``this`` module without printing it."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return "".join(this.d.get(c, c) for c in this.s)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def run_char(args: argparse.Namespace) -> float:
    """Train the character model; returns the last epoch's mean loss (nats/char)."""
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text, source = f.read(), args.text
    else:
        text, source = zen_of_python(), "the Zen of Python (module 'this')"
    symbols = sorted(set(text))
    index = {ch: k for k, ch in enumerate(symbols)}
    codes = np.array([index[ch] for ch in text], dtype=np.int64)
    vocab, hidden, steps = len(symbols), args.char_hidden, args.char_seq_len
    if len(codes) < steps + 2:
        raise SystemExit(f"the text is too short for --char-seq-len {steps}")
    rng = np.random.default_rng(args.seed)
    model = LSTM(vocab, hidden, args.char_layers, batch_first=True, seed=args.seed)
    params = {
        **model.parameters,
        "head.weight": rng.uniform(-1, 1, size=(hidden, vocab)).astype(np.float32)
        / np.sqrt(hidden),
        "head.bias": np.zeros(vocab, np.float32),
    }
    optimizer = Adam(params, lr=args.char_lr)
    eye = np.eye(vocab, dtype=np.float32)
    starts = np.arange(0, len(codes) - steps - 1, args.char_stride)
    batches = max(len(starts) // args.char_batch, 1)
    _say(f"(b) Character model on {source}: {len(text)} characters, {vocab} symbols")
    _say(
        f"    {model!r} + linear head, windows of {steps}, batch {args.char_batch}, "
        f"{batches} batches per epoch, Adam lr {args.char_lr}"
    )
    live = sys.stdout.isatty()
    started = time.perf_counter()
    mean = float("nan")
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(starts)
        total = 0.0
        for b in range(batches):
            chunk = order[b * args.char_batch : (b + 1) * args.char_batch]
            windows = codes[chunk[:, None] + np.arange(steps + 1)]  # (B, T+1)
            x, target = eye[windows[:, :-1]], windows[:, 1:]
            y, _ = model(x)  # (B, T, H)
            probs = _softmax(y @ params["head.weight"] + params["head.bias"])
            picked = np.take_along_axis(probs, target[..., None], axis=-1)
            loss = float(-np.mean(np.log(picked + 1e-12)))
            dlogits = probs
            np.put_along_axis(dlogits, target[..., None], picked - 1.0, axis=-1)
            dlogits /= target.size
            model.backward(dlogits @ params["head.weight"].T)
            grads = {
                **model.grads,
                "head.weight": y.reshape(-1, hidden).T @ dlogits.reshape(-1, vocab),
                "head.bias": dlogits.sum(axis=(0, 1)),
            }
            clip_grad_norm(grads, 5.0)
            optimizer.step(grads)
            total += loss
            mean = total / (b + 1)
            if live:
                _say(
                    f"\r    epoch {epoch:>3}/{args.epochs} {_bar(b + 1, batches)} loss {mean:.3f}",
                    end="",
                )
        line = f"    epoch {epoch:>3}/{args.epochs} {_bar(batches, batches)} loss {mean:.3f}"
        _say(("\r" if live else "") + line + f"  ({time.perf_counter() - started:.1f} s)")
    prompt = args.prompt if all(ch in index for ch in args.prompt) else text[:10]
    sample = generate(
        model,
        params,
        symbols,
        prompt,
        args.sample_len,
        args.temperature,
        np.random.default_rng(args.seed + 1),
    )
    _say(f"    sample (temperature {args.temperature}, one character at a time with LSTM.step):")
    for line in sample.splitlines() or [""]:
        _say("    | " + line)
    return mean


def generate(
    model: LSTM,
    params: dict[str, np.ndarray],
    symbols: list[str],
    prompt: str,
    length: int,
    temperature: float,
    rng: np.random.Generator,
) -> str:
    """Prime with a forward over ``prompt``, then sample ``length`` characters."""
    index = {ch: k for k, ch in enumerate(symbols)}
    eye = np.eye(len(symbols), dtype=np.float32)
    y, state = model(eye[[index[ch] for ch in prompt]], need_cache=False)  # unbatched (T, V)
    out = list(prompt)
    last = y[-1]
    for _ in range(length):
        logits = (last @ params["head.weight"] + params["head.bias"]) / max(temperature, 1e-6)
        probs = _softmax(logits.astype(np.float64))
        code = int(rng.choice(len(symbols), p=probs))
        out.append(symbols[code])
        last, state = model.step(eye[code], state)
    return "".join(out)


# ------------------------------------------------------------------------- main


DESCRIPTION = "Train with lstm_fast: (a) the adding problem, (b) a character model."

# The sizes --quick shrinks to a smoke test: dest -> (default, default with --quick).
# Options given explicitly win over both.
_SIZES = {
    "seq_len": (100, 12),
    "adding_hidden": (32, 8),
    "batch": (64, 8),
    "steps": (5000, 6),
    "window": (50, 3),
    "log_every": (100, 2),
    "epochs": (40, 2),
    "char_hidden": (128, 16),
    "char_seq_len": (64, 16),
    "char_stride": (4, 64),
    "char_batch": (32, 4),
    "sample_len": (300, 40),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, on ``parser`` (``python -m lstm_fast demo``'s subparser)."""

    def size(group: Any, flag: str, help: str, type: Callable[[str], int] = positive_int) -> None:
        default, quick = _SIZES[flag[2:].replace("-", "_")]
        # SUPPRESS: an option not given stays unset, and run() picks its default.
        group.add_argument(
            flag,
            type=type,
            default=argparse.SUPPRESS,
            help=f"{help} (default: {default}; {quick} with --quick)",
        )

    parser.add_argument(
        "--task", choices=("adding", "char", "all"), default="all", help="what to train"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds data and weights")
    parser.add_argument(
        "--quick",
        action="store_true",
        default=argparse.SUPPRESS,  # unset: a --quick before 'demo' still counts
        help="tiny sizes for a smoke test (seconds; nothing is learned)",
    )
    a = parser.add_argument_group("adding problem")
    size(a, "--seq-len", "T, the sequence length")
    size(a, "--adding-hidden", "hidden size")
    size(a, "--batch", "sequences per update")
    size(a, "--steps", "at most this many updates")
    a.add_argument("--adding-lr", type=float, default=0.01, help="Adam learning rate")
    a.add_argument(
        "--target-loss",
        type=float,
        default=0.001,
        help="stop when the mean loss of the last --window steps is below this",
    )
    size(a, "--window", "steps in the running loss")
    size(a, "--log-every", "print every N steps")
    c = parser.add_argument_group("character model")
    c.add_argument("--text", default=None, help="train on this UTF-8 file instead")
    size(c, "--epochs", "passes over the text")
    size(c, "--char-hidden", "hidden size")
    c.add_argument("--char-layers", type=positive_int, default=1, help="stacked layers")
    size(c, "--char-seq-len", "window length")
    size(c, "--char-stride", "offset between windows")
    size(c, "--char-batch", "windows per update")
    c.add_argument("--char-lr", type=float, default=0.005, help="Adam learning rate")
    c.add_argument("--prompt", default="Beautiful is", help="start of the sample")
    size(c, "--sample-len", "characters to generate", type=int)
    c.add_argument("--temperature", type=float, default=0.5, help="sampling temperature")


def run(args: argparse.Namespace) -> int:
    """Train what ``args.task`` names, with the options of :func:`add_arguments`."""
    quick = getattr(args, "quick", False)
    for name, sizes in _SIZES.items():
        if not hasattr(args, name):
            setattr(args, name, sizes[1] if quick else sizes[0])
    from . import functional

    threads = getattr(functional, "get_num_threads", lambda: 1)()
    _say(f"lstm_fast layer demo ({threads} engine thread(s))")
    if args.task in ("adding", "all"):
        run_adding(args)
    if args.task == "all":
        _say()
    if args.task in ("char", "all"):
        run_char(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lstm_fast demo [argv]``, callable from Python."""
    parser = argparse.ArgumentParser(
        prog="python -m lstm_fast demo",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
