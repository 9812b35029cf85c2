"""`Rule`: what a learning-rule plugin provides, and the context the host hands it.

The host owns the loop (epochs, batches, seeding, NaN guard, evaluation, op counting,
results); a rule owns its model, its encoding, its loss and its update. The defaults below
implement the common autograd case so that a rule overrides only what its paper changes:

* ``build``             -- the network for an architecture (required);
* ``forward``           -- encode a raw batch and run T steps -> per-step outputs;
* ``loss``              -- the paper's loss on those outputs;
* ``train_step``        -- one update; a rule whose update is not autograd (SSTDP) does its
                           own weight change here and may return ``None`` from
                           ``configure_optimizer``;
* ``readout``           -- per-step outputs -> logits per step, causal in t;
* ``evaluate``          -- logits at every requested T; by default from ONE pass at T_max.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from suite.encoders import ENCODERS, create_encoder

if TYPE_CHECKING:
    from suite.archs import ArchSpec


@dataclass
class Context:
    """Everything a rule needs to know about the cell being trained or evaluated."""

    hp: dict[str, Any]                 # rule hyper-parameters: defaults + user overrides
    T: int                             # time steps used for training
    timesteps: tuple[int, ...]         # time steps evaluated (accuracy at each)
    arch: "ArchSpec"
    dataset: str
    input_shape: tuple[int, ...]
    n_classes: int
    backend: str = "torch"
    seed: int = 0
    epochs: int = 1
    batch_size: int = 64
    generator: torch.Generator = field(default_factory=torch.Generator)
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 1
    device: str = "cpu"
    data_kind: str = "static"          # "events": inputs are frames [B, T, C, H, W]
    phase: str = "train"               # "train", "val" (validation passes) or "test" (the final pass)


class Rule(abc.ABC):
    """Base class for learning rules and baselines. Subclass and set the class attributes."""

    #: registry name, e.g. "tssl_bp"
    name: str = ""
    #: human-readable citation
    paper: str = ""
    #: neuron model: "IF", "LIF", "SRM", or "ReLU" for ANNs
    neuron: str = ""
    #: default input encoding ("direct", "poisson", "ttfs", "events" or "none")
    encoding: str = "direct"
    #: False for ANNs: one row per cell with T empty
    temporal: bool = True
    #: plugin version; the host fills in the distribution's version when empty
    version: str = ""
    #: hyper-parameters with the paper's values; the only keys users may override
    defaults: dict[str, Any] = {}
    #: what ``snn-suite tune`` searches: option name (a key of ``defaults``) -> ``("log", low, high)``,
    #: ``("float", low, high)``, ``("int", low, high)`` or ``("choice", [values])``; the knobs the paper tunes
    search_space: dict[str, tuple] = {}

    # ------------------------------------------------------------------ capabilities
    def supports(self, arch: "ArchSpec", dataset: str) -> bool:
        return True

    def backends(self) -> tuple[str, ...]:
        """Neuron backends this rule can use (see ``suite.kernels``)."""
        return ("torch",)

    def backend_used(self, backend: str, device: str) -> str:
        """The backend that really runs when ``backend`` is chosen on ``device`` (rows record it):
        override where a backend falls back to another on some devices."""
        return backend

    def resources(self, cell) -> dict[str, Any]:
        """What one cell needs from a Ray cluster (``--executor ray``), as ``ray.remote`` options:
        ``num_cpus``, ``num_gpus`` (fractions share a device), ``memory`` (bytes), ``resources``.
        Default: :func:`default_resources`; override for a large model or data pipeline."""
        return default_resources(cell)

    # ------------------------------------------------------------------ model
    @abc.abstractmethod
    def build(self, arch: "ArchSpec", input_shape: tuple[int, ...], n_classes: int,
              backend: str, hp: dict[str, Any]) -> nn.Module:
        """The rule's network for ``arch``; spiking layers must be :class:`suite.neurons.SpikingNeuron`
        subclasses (or set ``records_spikes = True``) so the host's recorder sees their spikes."""

    def configure_optimizer(self, model: nn.Module, ctx: Context):
        """Return ``(optimizer, scheduler, interval)``; interval is "epoch" or "step".

        Reads ``optimizer`` (adam / adamw / sgd), ``lr``, ``weight_decay``, ``momentum``,
        ``betas``, ``lr_schedule`` (none / cosine / onecycle / step with ``lr_milestones``
        and ``lr_gamma``) from ``ctx.hp``.
        """
        hp = ctx.hp
        name = hp.get("optimizer", "adam").lower()
        params = [p for p in model.parameters() if p.requires_grad]
        lr, wd = hp.get("lr", 1e-3), hp.get("weight_decay", 0.0)
        # torch's fused kernels (one pass over all parameters; ~4x the default's speed for AdamW on
        # the CPU), where every parameter is a floating-point tensor on a CPU or CUDA device
        fused = {"fused": True} if params and all(
            p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) else {}
        if name == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=tuple(hp.get("betas", (0.9, 0.999))), **fused)
        elif name == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=tuple(hp.get("betas", (0.9, 0.999))), **fused)
        elif name == "sgd":
            opt = torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=hp.get("momentum", 0.0), **fused)
        else:
            raise ValueError(f"rule {self.name!r}: unknown optimizer {name!r}; expected adam, adamw or sgd")
        sched = hp.get("lr_schedule", "none")
        if sched == "none":
            return opt, None, "epoch"
        if sched == "cosine":
            return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(ctx.epochs, 1)), "epoch"
        if sched == "onecycle":
            total = max(ctx.epochs * ctx.steps_per_epoch, 1)
            return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total), "step"
        if sched == "step":
            return opt, torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=list(hp.get("lr_milestones", ())), gamma=hp.get("lr_gamma", 0.1)), "epoch"
        raise ValueError(f"rule {self.name!r}: unknown lr_schedule {sched!r}; expected none, cosine, onecycle or step")

    # ------------------------------------------------------------------ running
    def encode(self, x: torch.Tensor, T: int, ctx: Context) -> torch.Tensor:
        """Raw batch -> input per step ``[T, B, ...]`` with the rule's encoder."""
        if ctx.data_kind == "events":  # event data arrive as frames: no further encoding
            return create_encoder("events")(x, T, ctx.generator)
        enc = create_encoder(ctx.hp.get("encoding", self.encoding), **ctx.hp.get("encoder_args", {}))
        return enc(x, T, ctx.generator)

    def forward(self, model: nn.Module, x: torch.Tensor, T: int, ctx: Context) -> torch.Tensor:
        """Encode and run T steps; returns per-step outputs ``[T, B, n_classes]``."""
        return model(self.encode(x, T, ctx))

    def input_events(self, ctx: Context) -> bool:
        """Whether the network's input is events (spikes, signed spikes, event counts) rather than
        analog values: op counting charges accumulates for events, MACs for analog input.
        Default: event data, or an encoder that emits spikes. A rule with its own encoding
        that emits spikes overrides this."""
        if ctx.data_kind == "events":
            return True
        encoder = ENCODERS.get(ctx.hp.get("encoding", self.encoding))
        return bool(encoder is not None and encoder.events)

    def readout(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per-step outputs -> logits per step ``[T, B, C]``; entry t uses steps <= t only.

        Default: accumulated output (spike count or summed potential) up to each step.
        """
        return outputs.cumsum(0)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Default loss: cross-entropy on the time-averaged output."""
        return nn.functional.cross_entropy(outputs.mean(0), y)

    def train_step(self, model: nn.Module, batch, optimizer, ctx: Context) -> dict[str, float]:
        x, y = batch
        outputs = self.forward(model, x, ctx.T, ctx)
        loss = self.loss(outputs, y, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ctx.hp.get("grad_clip"):
            nn.utils.clip_grad_norm_(model.parameters(), ctx.hp["grad_clip"])
        optimizer.step()
        with torch.no_grad():
            acc = (self.readout(outputs)[-1].argmax(-1) == y).float().mean().item()
        return {"loss": loss.item(), "train_acc": acc}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, timesteps: tuple[int, ...], ctx: Context) -> torch.Tensor:
        """Logits at each T in ``timesteps``: ``[len(timesteps), B, C]``.

        Default: one pass at ``max(timesteps)``, read at every T (valid because ``forward``
        and ``readout`` are causal in t). Rules whose encoding depends on the window length
        (TTFS with a window T) override this.
        """
        logits = self.readout(self.forward(model, x, max(timesteps) if timesteps else 1, ctx))
        if not self.temporal:
            return logits[-1:]
        return torch.stack([logits[t - 1] for t in timesteps])

    def op_counter(self, model: nn.Module, T: int, batch_size: int):
        """The object that counts operations during evaluation (see :class:`suite.opcount.OpCounter`:
        a context manager with ``next_batch(B)`` and ``at(T) -> dict``). Rules that evaluate
        without ``nn.Linear``/``nn.Conv2d`` layers (event-driven simulation) return their own."""
        from suite.opcount import OpCounter

        return OpCounter(model, T, batch_size)

    # ------------------------------------------------------------------ helpers
    def describe(self) -> dict[str, str]:
        return {"name": self.name, "paper": self.paper, "neuron": self.neuron,
                "encoding": self.encoding, "version": self.version}


def default_resources(cell) -> dict[str, Any]:
    """One CPU per cell, plus one GPU when the cell runs on CUDA."""
    return {"num_cpus": 1, "num_gpus": 1 if str(cell.device).startswith("cuda") else 0}


def check_options(rule: Rule, options: dict[str, Any]) -> dict[str, Any]:
    """Merge ``options`` into ``rule.defaults``; unknown keys are an error listing the valid ones."""
    unknown = sorted(set(options) - set(rule.defaults))
    if unknown:
        raise ValueError(f"rule {rule.name!r} has no option(s) {', '.join(unknown)}; "
                         f"valid options: {', '.join(sorted(rule.defaults))}")
    hp = dict(rule.defaults)
    for k, v in options.items():
        d = rule.defaults[k]
        if isinstance(d, bool) and isinstance(v, str):
            v = _parse_bool(rule.name, k, v)
        elif isinstance(d, (int, float)) and not isinstance(d, bool) and isinstance(v, str):
            v = _parse_number(rule.name, k, v, d)
        elif isinstance(d, (tuple, list)) and isinstance(v, str):
            v = _parse_sequence(rule.name, k, v)
        hp[k] = v
    return hp


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_bool(rule: str, key: str, text: str) -> bool:
    word = text.strip().lower()
    if word not in _TRUE + _FALSE:
        raise ValueError(f"rule {rule!r} option {key!r}: expected true or false (or yes/no, on/off, 1/0), "
                         f"got {text!r}")
    return word in _TRUE


def _parse_number(rule: str, key: str, text: str, default: int | float) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"rule {rule!r} option {key!r}: expected a number such as {default!r}, "
                         f"got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"rule {rule!r} option {key!r}: expected a finite number, got {text!r}")
    return int(value) if isinstance(default, int) and value.is_integer() else value


def _parse_sequence(rule: str, key: str, text: str) -> tuple:
    """``"(0.1307,)"``, ``"0.1307"``, ``"1,2"`` or ``"()"`` -> a tuple of numbers (a --set value)."""
    items = [t.strip() for t in text.strip().strip("()[]").split(",") if t.strip()]
    try:
        return tuple(int(t) if t.lstrip("+-").isdigit() else float(t) for t in items)
    except ValueError:
        raise ValueError(f"rule {rule!r} option {key!r}: expected comma-separated numbers such as "
                         f"'(0.1307,)' or '1,2', got {text!r}") from None


def finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
