"""ann2snn -- ANN -> SNN conversion with data-based normalisation.

Diehl, Neil, Binas, Cook, Liu, Pfeiffer (2015), *Fast-classifying, high-accuracy spiking deep
networks through weight and threshold balancing*, IJCNN 2015, doi:10.1109/IJCNN.2015.7280696;
Rueckauer, Lungu, Hu, Pfeiffer, Liu (2017), *Conversion of Continuous-Valued Deep Networks to
Efficient Event-Driven Networks for Image Classification*, Front. Neurosci. 11:682,
doi:10.3389/fnins.2017.00682.

Mechanism (see :mod:`suite.baselines.conversion` for the math):

* the ReLU network of the same architecture is trained exactly as the ``cnn`` baseline trains
  it (this rule subclasses :class:`~suite.baselines.cnn.CNN`: same build, loss, optimiser and
  schedule, so for the same seed it is the same network as the ``cnn`` row);
* conversion: BatchNorm folded into weights, data-based normalisation with ``lambda_l`` = the
  ``percentile``-th percentile of layer l's non-zero training activations (99.9, Rueckauer's
  robust norm; ``--set percentile=100`` gives Diehl's max-norm), ``W_l <- W_l lambda_{l-1} /
  lambda_l``, ``b_l <- b_l / lambda_l``; IF neurons with threshold 1 and **reset by
  subtraction**; average pooling; analog input current into the first layer (``direct``);
* readout: the classifier's output accumulated over steps (its membrane potential, no spikes),
  so accuracy at every T of ``--timesteps`` comes from one simulation.

Calibration data without host support: ``train_step`` keeps the last ``calibration_samples``
training inputs (default 2048) in a ring buffer on the model (a registered buffer, so it is
checkpointed). Conversion runs once, lazily, when evaluation begins (``op_counter`` /
``evaluate``) -- after the last training step -- on the final ANN and those inputs. Training
mode runs the ANN, eval mode the converted SNN.

Rows' ``extra`` holds ``conversion`` (percentile, calibration size, lambda per layer) and
``ann_agreement``: the fraction of test samples where the SNN at that T predicts the ANN's class.
The identity shortcut of a ResNet is scaled by ``lambda_prev / lambda_next``. In a timm ResNet
that is an inserted multiply the op counter does not see; in the suite's resnet family
(``resnet8`` ...) the factor sits in the :class:`~suite.archs.ResidualAdd` module, whose shortcut
spikes the op counter charges one accumulate each (see :mod:`suite.opcount`).
"""
from __future__ import annotations

import torch
from torch import nn

from suite.baselines.cnn import CNN, DEFAULTS as CNN_DEFAULTS, SEARCH_SPACE as CNN_SEARCH_SPACE
from suite.baselines.conversion import SteppedOpCounter, SpikingNet, check_convertible, convert
from suite.encoders import create_encoder
from suite.hookspecs import hookimpl
from suite.rule import Rule

DEFAULTS = {
    **{k: v for k, v in CNN_DEFAULTS.items() if k != "onnx"},
    "T": 200,                     # snntoolbox's default simulation duration
    "encoding": "direct",         # analog current into the first layer ("poisson" also works, less accurately)
    "percentile": 99.9,           # Rueckauer 2017; 100 = max-norm (Diehl 2015)
    "calibration_samples": 2048,  # last training inputs kept for the activation statistics
}

SEARCH_SPACE = {
    **CNN_SEARCH_SPACE,                   # the ANN's training
    "percentile": ("float", 99.0, 100.0), # activation percentile of the data-based normalisation
}


class ConvertibleANN(nn.Module):
    """The trained ReLU network plus a ring buffer of its last training inputs; ``converted()``
    builds (once, until the next training step) the spiking network from both."""

    def __init__(self, ann: nn.Module, input_shape, calibration_samples: int, percentile: float):
        super().__init__()
        if calibration_samples < 1:
            raise ValueError("ann2snn: calibration_samples must be >= 1")
        self.ann = ann
        self.percentile = float(percentile)
        self.register_buffer("calibration", torch.zeros(int(calibration_samples), *input_shape))
        self.register_buffer("calibration_seen", torch.zeros((), dtype=torch.long))
        self._cache: dict = {}   # a plain dict, so the SNN is no submodule (not trained, not saved)

    def forward(self, x):
        return self.ann(x)

    @torch.no_grad()
    def remember(self, x: torch.Tensor) -> None:
        """Put the batch ``x`` in the calibration ring buffer (oldest entries overwritten)."""
        n = len(self.calibration)
        x = x.detach()[-n:]
        start = int(self.calibration_seen) % n
        self.calibration[(start + torch.arange(len(x), device=x.device)) % n] = x.to(self.calibration)
        self.calibration_seen += len(x)
        self._cache.clear()

    def calibration_data(self) -> torch.Tensor:
        return self.calibration[:min(int(self.calibration_seen), len(self.calibration))]

    def converted(self) -> SpikingNet:
        if "snn" not in self._cache:
            self._cache["snn"] = convert(self.ann, self.calibration_data(), self.percentile)
            self._cache["agreement"] = {}
        return self._cache["snn"]

    @torch.no_grad()
    def record_agreement(self, timesteps, agree: torch.Tensor) -> None:
        """``agree`` ``[len(timesteps), B]``: SNN prediction at T == ANN prediction."""
        table = self._cache.setdefault("agreement", {})
        for T, row in zip(timesteps, agree):
            hit, n = table.get(T, (0, 0))
            table[T] = (hit + int(row.sum()), n + len(row))


class ANN2SNN(CNN):
    name = "ann2snn"
    paper = ("ANN->SNN conversion: Diehl et al. (2015) IJCNN, doi:10.1109/IJCNN.2015.7280696; Rueckauer et al. "
             "(2017) Front. Neurosci. 11:682, doi:10.3389/fnins.2017.00682")
    neuron = "IF"
    encoding = "direct"
    temporal = True
    defaults = DEFAULTS
    search_space = SEARCH_SPACE

    def build(self, arch, input_shape, n_classes, backend, hp):
        ann = super().build(arch, input_shape, n_classes, backend, hp)
        check_convertible(ann)  # fail before training, naming the layer
        return ConvertibleANN(ann, tuple(input_shape), int(hp["calibration_samples"]), float(hp["percentile"]))

    def encode(self, x, T, ctx):
        """The ANN's input (event frames summed, as for ``cnn``) as a current per step."""
        return create_encoder(ctx.hp["encoding"])(self.image(x, ctx), T, ctx.generator)

    def forward(self, model, x, T, ctx):
        if model.training:  # training the ANN: the cnn baseline's forward
            return super().forward(model, x, T, ctx)
        return model.converted()(self.encode(x, T, ctx))

    def train_step(self, model, batch, optimizer, ctx):
        model.remember(self.image(batch[0], ctx))
        return super().train_step(model, batch, optimizer, ctx)

    @torch.no_grad()
    def evaluate(self, model, x, timesteps, ctx):
        logits = Rule.evaluate(self, model, x, timesteps, ctx)
        ann_pred = model.ann(self.image(x, ctx)).argmax(-1)
        model.record_agreement(timesteps, logits.argmax(-1) == ann_pred.unsqueeze(0))
        return logits

    def op_counter(self, model, T, batch_size):
        return SteppedOpCounter(model.converted(), T, batch_size)


def conversion_metrics(model, rule, ctx, result) -> dict:
    """Row ``extra`` for ann2snn: the normalisation used and the agreement with the ANN at T."""
    if not isinstance(model, ConvertibleANN) or "snn" not in model._cache:
        return {}
    snn = model._cache["snn"]
    hit, n = model._cache.get("agreement", {}).get(result.get("T"), (0, 0))
    return {"conversion": {"percentile": snn.percentile, "calibration_samples": snn.n_calibration,
                           "lambdas": dict(snn.lambdas)},
            "ann_agreement": hit / n if n else None}


_POW2 = [2 ** i for i in range(10)]  # 1 ... 512


@hookimpl
def snn_suite_rules():
    return [ANN2SNN()]


@hookimpl
def snn_suite_metrics():
    return [conversion_metrics]


@hookimpl
def snn_suite_presets():
    return [
        {"name": "ann2snn/digits", "rule": "ann2snn", "dataset": "digits", "arch": "mlp128",
         "timesteps": _POW2[:9], "epochs": 20, "note": "fast smoke preset on the embedded 8x8 digits"},
        {"name": "ann2snn/mnist-fc800", "rule": "ann2snn", "dataset": "mnist", "arch": "fc800",
         "timesteps": _POW2, "epochs": 10, "note": "converts the cnn/mnist-fc800 network"},
        {"name": "ann2snn/mnist-convnet", "rule": "ann2snn", "dataset": "mnist", "arch": "convnet",
         "timesteps": _POW2, "epochs": 10, "note": "converts the cnn/mnist-convnet network"},
        {"name": "ann2snn/cifar10-resnet18", "rule": "ann2snn", "dataset": "cifar10", "arch": "timm_resnet18_cifar",
         "timesteps": _POW2 + [1024], "epochs": 30, "batch_size": 128,
         "note": "timm ResNet-18 (CIFAR stem); needs a GPU (0.56 GMAC per image and step)"},
        {"name": "ann2snn/cifar10-cpu", "rule": "ann2snn", "dataset": "cifar10", "arch": "timm_resnet18w16_cifar",
         "timesteps": _POW2[:7], "epochs": 3, "batch_size": 128,
         "note": "CPU reduction: ResNet-18 at width 16, 3 epochs, T <= 64"},
    ]
