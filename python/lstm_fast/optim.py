"""Optimizers over dicts of NumPy arrays: SGD (with momentum), Adam, gradient clipping.

An optimizer is built over a dict ``name -> array`` (e.g. ``LSTM.parameters``, or that
merged with a head's weights) and updates those arrays in place, so the layer sees
the new values on its next forward. ``step(grads)`` takes a dict with the same keys
(e.g. ``LSTM.grads``); a key that is missing or ``None`` there is skipped. The update
rules are PyTorch's (``torch.optim.SGD``, ``torch.optim.Adam``,
``torch.nn.utils.clip_grad_norm_``), so results can be compared step for step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ._checks import real_array

__all__ = ["SGD", "Adam", "clip_grad_norm"]


def _check_params(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict name -> ndarray, got {type(params).__name__}")
    checked = {}
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
            raise TypeError(
                f"parameter {name!r} must be a floating ndarray, got "
                f"{getattr(p, 'dtype', type(p).__name__)}"
            )
        if not p.flags.writeable:
            raise ValueError(f"parameter {name!r} is read-only; it must be updated in place")
        checked[name] = p
    return checked


def _check_grads(
    params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray | None]
) -> dict[str, np.ndarray]:
    unknown = sorted(set(grads) - set(params))
    if unknown:
        raise ValueError(f"grads has keys that are not parameters: {unknown}")
    checked = {}
    for name, p in params.items():
        g = grads.get(name)
        if g is None:
            continue
        g = real_array(f"gradient {name!r}", g)
        if g.shape != p.shape:
            raise ValueError(f"gradient {name!r} must have shape {p.shape}, got {g.shape}")
        checked[name] = g
    return checked


def _nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class SGD:
    """Stochastic gradient descent with optional (Nesterov) momentum and weight decay.

    ``v = momentum * v + (1 - dampening) * g`` (``v = g`` at the first step), then
    ``p -= lr * v`` (or ``lr * (g + momentum * v)`` with ``nesterov``); ``weight_decay``
    adds ``weight_decay * p`` to ``g`` first.
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float,
        momentum: float = 0.0,
        *,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = _check_params(params)
        self.lr = _nonnegative("lr", lr)
        self.momentum = _nonnegative("momentum", momentum)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        self.weight_decay = _nonnegative("weight_decay", weight_decay)
        if self.nesterov and (self.momentum == 0.0 or self.dampening != 0.0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        self.velocity: dict[str, np.ndarray] = {}

    def step(self, grads: Mapping[str, np.ndarray | None]) -> None:
        """Update every parameter that has a gradient in ``grads``, in place."""
        for name, g in _check_grads(self.params, grads).items():
            p = self.params[name]
            g = g.astype(p.dtype, copy=False)
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                v = self.velocity.get(name)
                if v is None:
                    v = self.velocity[name] = g.copy()
                else:
                    v *= self.momentum
                    v += (1.0 - self.dampening) * g
                g = g + self.momentum * v if self.nesterov else v
            p -= p.dtype.type(self.lr) * g


class Adam:
    """Adam (Kingma & Ba) with PyTorch's bias correction and L2 ``weight_decay``.

    ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = _check_params(params)
        self.lr = _nonnegative("lr", lr)
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.betas = (beta1, beta2)
        self.eps = _nonnegative("eps", eps)
        self.weight_decay = _nonnegative("weight_decay", weight_decay)
        self.steps: dict[str, int] = {}
        self.exp_avg: dict[str, np.ndarray] = {}
        self.exp_avg_sq: dict[str, np.ndarray] = {}

    def step(self, grads: Mapping[str, np.ndarray | None]) -> None:
        """Update every parameter that has a gradient in ``grads``, in place."""
        beta1, beta2 = self.betas
        for name, g in _check_grads(self.params, grads).items():
            p = self.params[name]
            g = g.astype(p.dtype, copy=False)
            if self.weight_decay:
                g = g + self.weight_decay * p
            if name not in self.exp_avg:
                self.exp_avg[name] = np.zeros_like(p)
                self.exp_avg_sq[name] = np.zeros_like(p)
                self.steps[name] = 0
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            self.steps[name] += 1
            t = self.steps[name]
            m *= beta1
            m += (1.0 - beta1) * g
            v *= beta2
            v += (1.0 - beta2) * (g * g)
            step_size = self.lr / (1.0 - beta1**t)
            denom = np.sqrt(v)
            denom /= math.sqrt(1.0 - beta2**t)
            denom += self.eps
            p -= p.dtype.type(step_size) * (m / denom)


def clip_grad_norm(
    grads: Mapping[str, np.ndarray | None], max_norm: float, norm_type: float = 2.0
) -> float:
    """Scale all gradients together so that their global norm is at most ``max_norm``.

    The norm is taken over all arrays as if they were one vector (``norm_type`` may be
    ``inf``). Gradients are scaled in place (a read-only one is replaced in ``grads``)
    by ``max_norm / (norm + 1e-6)`` when that is below 1, as PyTorch does. Returns the
    norm before clipping; when it is not finite the gradients become NaN (as in
    PyTorch), so check it to skip such a step.
    """
    max_norm = _nonnegative("max_norm", max_norm)
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0, got {norm_type}")
    arrays = {k: real_array(f"gradient {k!r}", g) for k, g in grads.items() if g is not None}
    if not arrays:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in arrays.values())
    else:
        total = float(
            sum(
                float(np.sum(np.abs(g.astype(np.float64, copy=False)) ** norm_type))
                for g in arrays.values()
            )
            ** (1.0 / norm_type)
        )
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # NaN scales too: a non-finite norm poisons every gradient
        for name, g in arrays.items():
            if g.flags.writeable and g is grads[name]:
                g *= g.dtype.type(coef)
            else:
                grads[name] = g * g.dtype.type(coef)  # type: ignore[index]
    return total
