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
from collections.abc import Mapping, MutableMapping

import numpy as np

from ._checks import check_size, flag, mapping, real_array, real_number

__all__ = ["SGD", "Adam", "clip_grad_norm"]


def _check_params(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    mapping("params", params, "floating ndarrays")
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
    mapping("grads", grads, "arrays")
    unknown = sorted((k for k in grads if k not in params), key=repr)
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
        self.lr = real_number("lr", lr, minimum=0.0)
        self.momentum = real_number("momentum", momentum, minimum=0.0)
        self.dampening = real_number("dampening", dampening)
        self.nesterov = flag("nesterov", nesterov)
        self.weight_decay = real_number("weight_decay", weight_decay, minimum=0.0)
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
        self.lr = real_number("lr", lr, minimum=0.0)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r:.80}")
        beta1, beta2 = (real_number(f"betas[{k}]", b) for k, b in enumerate(betas))
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.betas = (beta1, beta2)
        self.eps = real_number("eps", eps, minimum=0.0)
        self.weight_decay = real_number("weight_decay", weight_decay, minimum=0.0)
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
    max_norm = real_number("max_norm", max_norm, minimum=0.0)
    if isinstance(norm_type, str) and norm_type.lower() == "inf":  # PyTorch takes "inf" too
        norm_type = math.inf
    norm_type = real_number("norm_type", norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0, got {norm_type}")
    mapping("grads", grads, "arrays")
    arrays = {k: real_array(f"gradient {k!r}", g) for k, g in grads.items() if g is not None}
    for k, g in arrays.items():
        check_size(f"gradient {k!r}", g.shape)  # the norm reads it as float64
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
        # In place where the scaled values fit the caller's array; a read-only one, or
        # an integer or bool one (which would truncate), is replaced by a new array.
        in_place = {
            k: g.flags.writeable and g is grads[k] and g.dtype.kind == "f"
            for k, g in arrays.items()
        }
        if not all(in_place.values()) and not isinstance(grads, MutableMapping):
            raise TypeError(
                "grads must be a mutable dict when a gradient is read-only or not a float "
                "ndarray (it is replaced by its scaled copy)"
            )
        for name, g in arrays.items():
            if in_place[name]:
                g *= g.dtype.type(coef)
            else:
                grads[name] = g * (g.dtype.type(coef) if g.dtype.kind == "f" else coef)  # type: ignore[index]
    return total
