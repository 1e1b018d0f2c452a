"""Hashes of the engine's results over a fixed set of cases, to prove that a change
which should not move a bit (a reorganisation, a renaming) moved none.

    python scripts/result_hashes.py > before.txt     # on the old build
    python scripts/result_hashes.py > after.txt      # on the new build
    diff before.txt after.txt                        # must be empty

Each line is one case (every option of the functional API, its variants and
regularisation, the cell API and the layer, both dtypes, every SIMD path this
CPU runs) and the SHA-256 of every array it returns (outputs, cache views and
gradients), as raw bytes. The last line hashes all the lines.
``--module NAME`` imports the package under another name (a copy of an old
build, for example).
Run it under ``LSTM_FAST_SPLIT=batch`` and ``=hidden`` and with
``LSTM_FAST_NUM_THREADS=1`` too, to cover how threads share a call.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import itertools
import os
import sys
from typing import Any

import numpy as np


def _digest(arrays: list[Any]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"None")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _problem(rng: np.random.Generator, t: int, b: int, i: int, h: int, dtype: Any) -> dict:
    def u(*shape: int, scale: float = 0.5) -> np.ndarray:
        return rng.uniform(-scale, scale, shape).astype(dtype)

    return {
        "x": u(t, b, i, scale=1.0),
        "w_ih": u(4 * h, i),
        "w_hh": u(4 * h, h),
        "b_ih": u(4 * h),
        "b_hh": u(4 * h),
        "h0": u(b, h),
        "c0": u(b, h),
        "dy": u(t, b, h, scale=1.0),
        "dh_n": u(b, h),
        "dc_n": u(b, h),
    }


def functional_cases(lf: Any, dtype: Any) -> list[tuple[str, str]]:
    out = []
    shapes = [(7, 3, 5, 6), (9, 1, 4, 21), (5, 20, 16, 32), (4, 70, 8, 40), (3, 2, 3, 64)]
    options = itertools.product([False, True], [False, True], [False, True], [False, True])
    for n, (shape, (batch_first, reverse, with_lengths, with_state)) in enumerate(
        itertools.product(shapes, list(options))
    ):
        t, b, i, h = shape
        rng = np.random.default_rng(n)
        p = _problem(rng, t, b, i, h, dtype)
        x, dy = p["x"], p["dy"]
        if batch_first:
            x, dy = x.swapaxes(0, 1).copy(), dy.swapaxes(0, 1).copy()
        lengths = rng.integers(0, t + 1, b) if with_lengths else None
        biases = (p["b_ih"], p["b_hh"]) if n % 3 else (None, p["b_hh"]) if n % 2 else (None, None)
        state = (p["h0"], p["c0"]) if with_state else (None, None)
        fwd = lf.forward(
            x, p["w_ih"], p["w_hh"], *biases, *state,
            batch_first=batch_first, lengths=lengths, reverse=reverse,
        )  # fmt: skip
        c = fwd.cache
        grads = lf.backward(c, dy, p["dh_n"] if n % 2 else None, p["dc_n"] if n % 4 else None)
        arrays = [fwd.y, fwd.h_n, fwd.c_n, c.i, c.f, c.g, c.o, c.c, *grads]
        lean = lf.forward(x, p["w_ih"], p["w_hh"], *biases, *state, batch_first=batch_first,
                          lengths=lengths, reverse=reverse, need_cache=False)  # fmt: skip
        arrays += [lean.y, lean.h_n, lean.c_n]
        name = f"forward/backward {shape} bf={batch_first:d} rev={reverse:d} "
        name += f"len={with_lengths:d} state={with_state:d} bias={n % 3}{n % 2}"
        out.append((name, _digest(arrays)))
    for n, (b, i, h) in enumerate([(1, 4, 5), (3, 8, 16), (16, 7, 33)]):
        p = _problem(np.random.default_rng(100 + n), 1, b, i, h, dtype)
        cell = lf.cell_forward(p["x"][0], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"])
        cc = cell.cache
        g = lf.cell_backward(cc, p["dh_n"], p["dc_n"])
        arrays = [cell.h_new, cell.c_new, cc.i, cc.f, cc.g, cc.o, cc.c, *g]
        out.append((f"cell {(b, i, h)}", _digest(arrays)))
    return out


VARIANTS: dict[str, dict[str, Any]] = {
    "zoneout": {"zoneout": 0.3, "seed": 5},
    "zoneout h": {"zoneout": (0.4, 0.0), "seed": 6},
    "zoneout c": {"zoneout": (0.0, 0.4), "seed": 7},
    "zoneout inference": {"zoneout": (0.2, 0.3), "training": False},
    "recurrent dropout": {"recurrent_dropout": 0.3, "seed": 8},
    "weight drop": {"weight_drop": 0.3, "seed": 9},
    "zoneout + recurrent dropout": {"zoneout": 0.2, "recurrent_dropout": 0.2, "seed": 10},
    "peepholes + zoneout": {"peepholes": True, "zoneout": 0.2, "seed": 11},
    "clip": {"clip": 0.3},
    "input forget": {"input_forget": True},
    "activations": {"activations": ("hardsigmoid", "softsign", "tanh")},
    "layer norm": {"layer_norm": True},
    "layer norm + zoneout": {"layer_norm": True, "zoneout": 0.2, "seed": 12},
    "projection": {"w_hr": True},
    "projection + zoneout": {"w_hr": True, "zoneout": 0.2, "seed": 13},
}


def variant_cases(lf: Any, dtype: Any) -> list[tuple[str, str]]:
    """The variants and the regularisation, forward with and without a cache
    and backward, at batch 1 (its wide gate math), at several rows (the staged
    gate math) and with lengths."""
    out = []
    shapes = [(6, 1, 5, 40), (5, 7, 6, 21), (4, 20, 8, 33)]
    for n, (shape, (name, options)) in enumerate(itertools.product(shapes, VARIANTS.items())):
        t, b, i, h = shape
        rng = np.random.default_rng(300 + n)
        p = _problem(rng, t, b, i, h, dtype)
        kw = dict(options)
        w_hh, dy, h0 = p["w_hh"], p["dy"], p["h0"]
        if kw.get("peepholes") is True:
            kw["peepholes"] = rng.uniform(-0.5, 0.5, 3 * h).astype(dtype)
        if kw.get("w_hr") is True:
            q = h // 2 + 1
            kw["w_hr"] = rng.uniform(-0.5, 0.5, (q, h)).astype(dtype)
            w_hh, dy, h0 = w_hh[:, :q].copy(), dy[..., :q].copy(), h0[:, :q].copy()
        lengths = rng.integers(0, t + 1, b) if n % 2 and b > 1 else None
        args = (p["x"], p["w_ih"], w_hh, p["b_ih"], p["b_hh"], h0, p["c0"])
        arrays = []
        if kw.get("training", True):
            fwd = lf.forward(*args, lengths=lengths, **kw)
            grads = lf.backward(fwd.cache, dy, None, p["dc_n"])
            arrays += [fwd.y, fwd.h_n, fwd.c_n, *grads]
        lean = lf.forward(*args, lengths=lengths, need_cache=False, **kw)
        arrays += [lean.y, lean.h_n, lean.c_n]
        out.append((f"variant {name} {shape} len={lengths is not None}", _digest(arrays)))
    return out


def layer_cases(lf: Any, dtype: Any) -> list[tuple[str, str]]:
    out = []
    configs = [
        dict(num_layers=1, bidirectional=False, batch_first=False, bias=True),
        dict(num_layers=2, bidirectional=True, batch_first=False, bias=True),
        dict(num_layers=3, bidirectional=False, batch_first=True, bias=False),
        dict(num_layers=2, bidirectional=True, batch_first=True, bias=True),
    ]
    for n, cfg in enumerate(configs):
        t, b, i, h = 6, 5, 7, 12
        layer = lf.LSTM(i, h, dtype=dtype, seed=n, **cfg)
        rng = np.random.default_rng(200 + n)
        x = rng.standard_normal((b, t, i) if cfg["batch_first"] else (t, b, i)).astype(dtype)
        lengths = rng.integers(0, t + 1, b) if n % 2 else None
        d = 2 if cfg["bidirectional"] else 1
        rows = cfg["num_layers"] * d
        hx = (rng.standard_normal((rows, b, h)).astype(dtype),) * 2 if n >= 2 else None
        y, (h_n, c_n) = layer.forward(x, hx, lengths=lengths)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = layer.backward(dy, h_n, c_n)
        grads = [layer.grads[k] for k in sorted(layer.grads)]
        arrays = [y, h_n, c_n, dx, *layer.hx_grad, *grads]
        if not cfg["bidirectional"]:
            y_t, (hs, cs) = layer.step(x[:, 0] if cfg["batch_first"] else x[0], hx)
            arrays += [y_t, hs, cs]
        out.append((f"layer {cfg} lengths={lengths is not None}", _digest(arrays)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", default="lstm_fast", help="package to import")
    args = parser.parse_args()
    lf = importlib.import_module(args.module)
    lines = []
    for isa in lf.available_isas():
        lf._set_isa(isa)
        for dtype in (np.float32, np.float64):
            tag = f"{isa} {np.dtype(dtype).name}"
            cases = functional_cases(lf, dtype) + variant_cases(lf, dtype) + layer_cases(lf, dtype)
            for name, digest in cases:
                lines.append(f"{tag} | {name} | {digest}")
    for line in lines:
        print(line)
    total = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    print(f"ALL {len(lines)} cases | {total}")
    print(f"(threads {lf.get_num_threads()}, LSTM_FAST_SPLIT={os.environ.get('LSTM_FAST_SPLIT')})",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
