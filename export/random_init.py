"""Seeded random weights that behave like trained ones, so that verification can fail.

torchvision's initialisers are meant for training, not for testing exports: GoogLeNet's std-0.01
truncated normals make activations vanish over its 57 convolutions (its output ignores its input),
BatchNorm's initial running statistics (mean 0, var 1) do not rescale anything in eval mode, and a
ResNet's logits are dominated by a per-class offset that every input shares (same top-1 for all).
A check that compares such outputs cannot detect a wrong export.

After torchvision's seeded init, a data-dependent initialisation on a seeded calibration set (the
calibration photos and seeded augmentations of them), in three passes, each one forward pass:

1. BatchNorm: running statistics recomputed on real activations (models with BatchNorm). Each
   channel is centred, and each layer scaled to unit variance as a whole: normalising every channel
   on its own would blow up near-constant channels, and with them rounding errors (the fp16
   error against PyTorch doubles). ResNet blocks end with their residual branch's BatchNorm scaled by
   0.2, as trained ResNets (and torchvision's `zero_init_residual`) keep deep branches small; a
   full-size branch in every one of 50 blocks makes the random network chaotic, and its rounding
   errors an order of magnitude larger, in fp32 and fp16 alike;
2. LSUV (Mishkin & Matas, 2016) for models without BatchNorm (AlexNet, VGG): every convolution
   and linear layer, in execution order, scaled so that its output has unit variance;
3. the classifier: logits centred per class and scaled to unit variance over the calibration set,
   so that what an input contributes, not a shared offset, decides its top-1.

Deterministic for a seed; the procedure is recorded in the export metadata.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch import nn

from cnn_deploy_core.images import sample_photos
from cnn_deploy_core.preprocess import Preprocessing, load_image, preprocess

PROCEDURE = "torchvision-init+residual-gain(0.2)+layerwise-bn-recalibration+lsuv(no-bn)+centred-unit-logits"
PROCEDURE_VERSION = 1
RESIDUAL_GAIN = 0.2
AUGMENTATIONS_PER_PHOTO = 6


def calibration_images(seed: int, per_photo: int = AUGMENTATIONS_PER_PHOTO) -> list[Image.Image]:
    """The calibration photos, each with `per_photo` seeded augmentations (crop, flip, colour)."""
    rng = np.random.default_rng(seed)
    images = []
    for path in sample_photos():
        photo = load_image(path)
        images.append(photo)
        w, h = photo.size
        for _ in range(per_photo):
            scale = rng.uniform(0.35, 1.0)
            cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = photo.crop((left, top, left + cw, top + ch))
            if rng.random() < 0.5:
                img = ImageOps.mirror(img)
            img = ImageEnhance.Color(img).enhance(rng.uniform(0.3, 1.7))
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
            images.append(img)
    return images


def calibration_batch(spec: Preprocessing, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess(img, spec) for img in calibration_images(seed)]))


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def damp_residual_branches(model: nn.Module, gain: float = RESIDUAL_GAIN) -> int:
    """Scale the last BatchNorm of every ResNet block's residual branch; returns how many."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    last = [b.bn2 for b in model.modules() if isinstance(b, BasicBlock)]
    last += [b.bn3 for b in model.modules() if isinstance(b, Bottleneck)]
    for bn in last:
        bn.weight.mul_(gain)
    return len(last)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Every BatchNorm's running statistics from real activations, in one pass: a pre-hook sets
    them from the input the layer is about to normalise (per-channel means, the layer's variance),
    so each layer sees its predecessors already recalibrated."""

    def set_statistics(bn: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        (t,) = inputs
        dims = [d for d in range(t.dim()) if d != 1]
        bn.running_mean.copy_(t.mean(dim=dims))
        bn.running_var.fill_(float(t.var(dim=dims, unbiased=False).mean()))

    model.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [bn.register_forward_pre_hook(set_statistics) for bn in norms]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def lsuv(model: nn.Module, x: torch.Tensor) -> None:
    """Scale each conv/linear layer so its output has unit variance, in execution order, in one
    pass: a forward hook rescales the layer and its output before the next layer sees it."""

    def rescale(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        std = float(output.std())
        if std > 0:
            module.weight.div_(std)
            if module.bias is not None:
                module.bias.div_(std)
            return output / std
        return output

    handles = [
        m.register_forward_hook(rescale) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def centre_logits(model: nn.Module, x: torch.Tensor) -> None:
    """The last linear layer: logits with zero mean per class and unit variance over `x`."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    logits = model(x)
    mean = logits.mean(dim=0)
    std = float((logits - mean).std())
    if head.bias is None:
        raise ValueError("the classifier has no bias to centre the logits with")
    head.bias.sub_(mean)
    if std > 0:
        head.weight.div_(std)
        head.bias.div_(std)


def data_dependent_init(model: nn.Module, spec: Preprocessing, seed: int) -> dict[str, object]:
    """Apply the three passes to a freshly initialised model in eval mode; returns what to record."""
    x = calibration_batch(spec, seed)
    model.eval()
    steps = []
    if _has_batchnorm(model):
        if damp_residual_branches(model):
            steps.append(f"residual-gain-{RESIDUAL_GAIN}")
        recalibrate_batchnorm(model, x)
        steps.append("layerwise-bn-recalibration")
    else:
        lsuv(model, x)
        steps.append("lsuv")
    centre_logits(model, x)
    steps.append("centred-unit-logits")
    return {
        "procedure": PROCEDURE,
        "procedure_version": PROCEDURE_VERSION,
        "steps": steps,
        "seed": seed,
        "calibration": f"{len(sample_photos())} photos x (1 + {AUGMENTATIONS_PER_PHOTO} augmentations)",
        "calibration_images": len(x),
    }
