"""Surrogate gradients of the Heaviside spike function.

Each shape is a small class with ``alpha`` (sharpness; width ~ 1/alpha), ``primitive(x)``
(the smooth function whose derivative is used) and ``grad(x)`` (that derivative). Calling a
surrogate applies the Heaviside forward and ``grad`` backward. Kernels call ``grad`` directly.
"""
from __future__ import annotations

import math

import torch


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x), None


class Surrogate:
    name = ""
    default_alpha = 1.0

    def __init__(self, alpha: float | None = None):
        self.alpha = float(self.default_alpha if alpha is None else alpha)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _Spike.apply(x, self)

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"surrogate {self.name!r} defines no primitive")

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"surrogate {self.name!r} defines no gradient")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha})"


class FastSigmoid(Surrogate):
    """SuperSpike (Zenke & Ganguli 2018): d/dx = 1 / (1 + alpha |x|)^2 (peak 1, as in snnTorch);
    its primitive ``x / (1 + alpha |x|)`` spans +-1/alpha, so it is shifted by 0.5, not rescaled."""

    name, default_alpha = "fast_sigmoid", 10.0

    def primitive(self, x):
        return x / (1 + self.alpha * x.abs()) + 0.5

    def grad(self, x):
        return 1.0 / (1.0 + self.alpha * x.abs()) ** 2


class Sigmoid(Surrogate):
    name, default_alpha = "sigmoid", 4.0

    def primitive(self, x):
        return torch.sigmoid(self.alpha * x)

    def grad(self, x):
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)


class ATan(Surrogate):
    name, default_alpha = "atan", 2.0

    def primitive(self, x):
        return torch.atan(math.pi / 2 * self.alpha * x) / math.pi + 0.5

    def grad(self, x):
        return self.alpha / 2 / (1 + (math.pi / 2 * self.alpha * x) ** 2)


class Triangle(Surrogate):
    name, default_alpha = "triangle", 1.0

    def primitive(self, x):
        a = self.alpha
        xc = x.clamp(-1 / a, 1 / a)
        return torch.where(xc < 0, 0.5 * (a * xc + 1) ** 2, 1 - 0.5 * (1 - a * xc) ** 2)

    def grad(self, x):
        return (self.alpha - self.alpha ** 2 * x.abs()).clamp(min=0)


class Rectangular(Surrogate):
    name, default_alpha = "rectangular", 1.0

    def primitive(self, x):
        return (self.alpha * x + 0.5).clamp(0, 1)

    def grad(self, x):
        return self.alpha * (x.abs() < 0.5 / self.alpha).to(x.dtype)


SURROGATES = {cls.name: cls for cls in (FastSigmoid, Sigmoid, ATan, Triangle, Rectangular)}


def create_surrogate(name: str | Surrogate, alpha: float | None = None) -> Surrogate:
    if isinstance(name, Surrogate):
        return name
    try:
        return SURROGATES[name](alpha)
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; valid: {', '.join(sorted(SURROGATES))}") from None
