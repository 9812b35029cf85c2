"""Input encoders: raw batch ``[B, ...]`` (values in [0, 1]) -> input per step ``[T, B, ...]``.

Encoders are frozen dataclasses; randomness comes only from the generator passed in, so the
same seed gives the same spikes and the first t steps of a T-step encoding equal a t-step one
(for the causal encoders), which is what lets the host read accuracy at every T from one pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class PoissonRate:
    """Bernoulli spike at each step with probability ``gain * x`` (clipped to [0, 1])."""

    #: the encoded input is events (spikes, counts), not analog values
    events: ClassVar[bool] = True

    gain: float = 1.0

    def __call__(self, x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
        p = (x * self.gain).clamp(0.0, 1.0)
        u = torch.rand((T, *x.shape), generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        return (u < p.unsqueeze(0)).to(x.dtype)


@dataclass(frozen=True)
class Direct:
    """Analog current: the same input at every step (the first layer then does MACs)."""

    events: ClassVar[bool] = False

    scale: float = 1.0

    def __call__(self, x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return (x * self.scale).unsqueeze(0).expand(T, *x.shape)


@dataclass(frozen=True)
class TimeToFirstSpike:
    """One spike per input at step ``round((1 - x) * (T - 1))``; inputs below ``threshold``
    never fire. Not causal in T: the spike time depends on the window length."""

    events: ClassVar[bool] = True

    threshold: float = 0.0

    def spike_times(self, x: torch.Tensor, T: int) -> torch.Tensor:
        t = torch.round((1.0 - x.clamp(0.0, 1.0)) * (T - 1))
        return torch.where(x > self.threshold, t, torch.full_like(t, float(T)))

    def __call__(self, x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
        t = self.spike_times(x, T)
        steps = torch.arange(T, dtype=x.dtype, device=x.device).view(T, *([1] * x.dim()))
        return (steps == t.unsqueeze(0)).to(x.dtype)


@dataclass(frozen=True)
class Frames:
    """Inputs that already are frames ``[B, T, ...]`` (event data): moved to time-major
    ``[T, B, ...]``; a shorter T takes the first T frames."""

    events: ClassVar[bool] = True

    def __call__(self, x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.shape[1] < T:
            raise ValueError(f"event input has {x.shape[1]} frames but T={T} was requested")
        return x[:, :T].transpose(0, 1).to(torch.float32)


ENCODERS = {"poisson": PoissonRate, "direct": Direct, "ttfs": TimeToFirstSpike, "events": Frames}


def create_encoder(name: str, **kwargs):
    try:
        cls = ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoding {name!r}; valid: {', '.join(sorted(ENCODERS))}") from None
    return cls(**kwargs)
