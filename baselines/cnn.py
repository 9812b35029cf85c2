"""cnn -- the conventional network of the same architecture: ReLU, trained the ANN way.

One row per cell with ``T`` empty and MACs counted. Event data (frames ``[B, T, C, H, W]``)
is summed over time into one image.

Networks come from the suite's sequential specs (``fc800``, ``convnet``, ...), its resnet
family (``resnet8`` ... ``resnet20`` and plain twins: the ReLU twin of the spiking ResNets,
built by the same :func:`~suite.archs.build_network`; BN is part of those specs, the
``batch_norm`` option applies to sequential specs only) or, for
standard architectures, from **timm** (``timm.create_model``): the ``timm`` family below
(:class:`TimmArch`), e.g. ``timm_resnet18_cifar`` -- timm's ResNet-18 with the CIFAR stem of
He et al. 2016 §4.2 (one 3x3 stride-1 convolution, no max-pool, so 32x32 inputs keep a 4x4 map
in the last stage).

With ``--set onnx=true`` (on in this file's presets) the trained model is exported to ONNX and
every evaluation batch also runs through ONNX Runtime on the CPU; the row's ``extra.onnx``
records the agreement of the two engines' predictions, the largest logit difference, the MACs
read off the ONNX graph (to check the op counter's) and the per-sample (batch 1) CPU latency of
ONNX Runtime and of PyTorch. It is off by default because the export takes seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from suite.archs import RESNET_FAMILY, ArchSpec, build_network
from suite.hookspecs import hookimpl
from suite.rule import Rule

DEFAULTS = {
    "batch_norm": False,
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
    "batch_size": 64,
    "epochs": 10,
    "encoding": "none",
    "onnx": False,
}

SEARCH_SPACE = {
    "lr": ("log", 1e-4, 1e-2),
    "weight_decay": ("log", 1e-6, 1e-2),
}

TIMM_FAMILY = "timm"


@dataclass(frozen=True)
class TimmArch(ArchSpec):
    """A network from ``timm.create_model(model, num_classes=, in_chans=, **model_args)``.

    ``cifar_stem``: replace the ResNet stem (7x7 stride-2 conv + max-pool, or the deep stem)
    by one 3x3 stride-1 convolution of the same width and no pooling (He et al. 2016 §4.2)."""

    family: str = TIMM_FAMILY
    model: str = ""
    model_args: tuple = ()
    cifar_stem: bool = False


def build_timm(arch: TimmArch, input_shape, n_classes: int) -> nn.Module:
    import timm

    model = timm.create_model(arch.model, pretrained=False, num_classes=n_classes, in_chans=input_shape[0],
                              **dict(arch.model_args))
    if arch.cifar_stem:
        if not all(hasattr(model, a) for a in ("conv1", "bn1", "maxpool")):
            raise ValueError(f"architecture {arch.name!r}: cifar_stem needs a timm ResNet "
                             f"(conv1, bn1, maxpool); {arch.model!r} is a {type(model).__name__}")
        model.conv1 = nn.Conv2d(input_shape[0], model.bn1.num_features, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # timm's ResNet init
        model.maxpool = nn.Identity()
    return model


class CNN(Rule):
    name = "cnn"
    paper = "Conventional ANN baseline (ReLU, backpropagation, cross-entropy)"
    neuron = "ReLU"
    encoding = "none"
    temporal = False
    defaults = DEFAULTS
    search_space = SEARCH_SPACE

    def supports(self, arch, dataset):
        return arch.family in ("sequential", RESNET_FAMILY, TIMM_FAMILY)

    def build(self, arch, input_shape, n_classes, backend, hp):
        if arch.family == TIMM_FAMILY:
            return build_timm(arch, input_shape, n_classes)
        return build_network(arch, input_shape, n_classes, norm=hp["batch_norm"],
                             activation=lambda layer, shape: nn.ReLU())

    def image(self, x, ctx):
        """The network's input: event frames ``[B, T, C, H, W]`` are summed over time."""
        if x.dim() == len(ctx.input_shape) + 2:
            return x.sum(1, dtype=torch.float32)
        return x

    def forward(self, model, x, T, ctx):
        return model(self.image(x, ctx)).unsqueeze(0)

    @torch.no_grad()
    def evaluate(self, model, x, timesteps, ctx):
        logits = super().evaluate(model, x, timesteps, ctx)
        if ctx.hp.get("onnx") and ctx.phase == "test":  # the final test pass, not per-epoch validation
            from suite.baselines.onnx_runtime import OnnxCheck

            image = self.image(x, ctx)
            check = getattr(model, "onnx_check", None)
            if check is None:
                check = model.onnx_check = OnnxCheck.from_model(model, image[:2])
            check.compare(image, logits[-1])
        return logits


def onnx_metrics(model, rule, ctx, result) -> dict:
    """Row ``extra.onnx`` for models evaluated with ``onnx=true`` (see :class:`OnnxCheck`)."""
    check = getattr(model, "onnx_check", None)
    return {"onnx": check.summary(model)} if check is not None else {}


ARCHS = [
    TimmArch("timm_resnet18_cifar", description="timm resnet18 (He et al. 2016) with the CIFAR stem: "
             "3x3/1 conv, no max-pool; 11.2M parameters, 0.56 GMAC at 32x32", input_shapes=((3, 32, 32),),
             model="resnet18", cifar_stem=True),
    TimmArch("timm_resnet18w16_cifar", description="timm resnet18 topology at width 16-32-64-128 with the "
             "CIFAR stem (16 channels); 0.7M parameters, 36M MAC at 32x32: the CPU-sized ResNet",
             input_shapes=((3, 32, 32),), model="resnet18", cifar_stem=True,
             # the deep stem's width sets the stem output (2 x 8 = 16 channels); the stem itself is replaced
             model_args=(("channels", (16, 32, 64, 128)), ("stem_type", "deep"), ("stem_width", 8))),
]


@hookimpl
def snn_suite_rules():
    return [CNN()]


@hookimpl
def snn_suite_archs():
    return list(ARCHS)


@hookimpl
def snn_suite_metrics():
    return [onnx_metrics]


@hookimpl
def snn_suite_presets():
    onnx = {"onnx": True}
    return [
        {"name": "cnn/digits", "rule": "cnn", "dataset": "digits", "arch": "mlp128", "epochs": 20,
         "options": onnx, "note": "the ANN that ann2snn/digits converts (same seed, same training)"},
        {"name": "cnn/mnist-fc800", "rule": "cnn", "dataset": "mnist", "arch": "fc800", "epochs": 10,
         "options": onnx, "note": "the ANN that ann2snn/mnist-fc800 converts (same seed, same training)"},
        {"name": "cnn/mnist-convnet", "rule": "cnn", "dataset": "mnist", "arch": "convnet", "epochs": 10,
         "options": onnx, "note": "the ANN that ann2snn/mnist-convnet converts (same seed, same training)"},
        {"name": "cnn/cifar10-resnet18", "rule": "cnn", "dataset": "cifar10", "arch": "timm_resnet18_cifar",
         "epochs": 30, "batch_size": 128, "options": onnx,
         "note": "timm ResNet-18, CIFAR stem, no augmentation; needs a GPU (about 0.56 GMAC per image)"},
        {"name": "cnn/cifar10-cpu", "rule": "cnn", "dataset": "cifar10", "arch": "timm_resnet18w16_cifar",
         "epochs": 3, "batch_size": 128, "options": onnx,
         "note": "CPU reduction: ResNet-18 at width 16, 3 epochs"},
    ]
