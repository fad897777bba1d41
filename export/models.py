"""Build a torchvision model with the requested weights: imagenet, random (seeded) or a checkpoint."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torchvision.models import get_model_weights

from cnn_deploy_core.fsutil import sha256_file
from cnn_deploy_core.preprocess import Preprocessing
from cnn_deploy_core.registry import Architecture
from export import ExportError

DEFAULT_SEED = 0
DOWNLOAD_TIMEOUT_S = 30


class WeightsError(ExportError):
    """The requested weights could not be loaded."""


@dataclass
class LoadedModel:
    model: torch.nn.Module | None  # released once the export is done
    weights_source: str  # recorded in the ONNX metadata: "random(seed=0)", "imagenet:…", "checkpoint:…"
    is_random: bool
    preprocessing: Preprocessing
    categories: list[str]
    meta: dict[str, str] = field(default_factory=dict)


def weights_enum(arch: Architecture):
    return get_model_weights(arch.builder).DEFAULT


def preprocessing_for(arch: Architecture) -> Preprocessing:
    """The preprocessing torchvision publishes for this architecture's default weights."""
    t = weights_enum(arch).transforms()
    return Preprocessing(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        interpolation=t.interpolation.value,
    )


def categories_for(arch: Architecture) -> list[str]:
    """ImageNet class names from torchvision's weights metadata (available offline)."""
    return list(weights_enum(arch).meta["categories"])


def _hub_checkpoint_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _build_imagenet(arch: Architecture) -> tuple[torch.nn.Module, str]:
    weights = weights_enum(arch)
    cached = _hub_checkpoint_path(weights.url)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a blackholed network must not hang the export
    try:
        # No builder_kwargs: they describe a fresh model (GoogLeNet: aux_logits=False,
        # init_weights=True), which torchvision rejects with weights; its pretrained builders set
        # what the weights need themselves (GoogLeNet drops the aux heads, turns on transform_input).
        model = torchvision.models.get_model(arch.builder, weights=weights)
    except Exception as e:  # urllib/HTTP/hash errors all mean "not available here"
        raise WeightsError(
            f"cannot get ImageNet weights for {arch.name} ({weights.url}): {e.__class__.__name__}: {e}. "
            f"Offline, place the file at {cached} or use --weights random or --weights PATH"
        ) from e
    finally:
        socket.setdefaulttimeout(old_timeout)
    return model, f"imagenet:{weights}"


def _build_random(arch: Architecture, seed: int) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch.builder, weights=None, **arch.builder_kwargs)
    return model, f"random(seed={seed})"


def _calibrate_random(model: torch.nn.Module, arch: Architecture, seed: int) -> dict[str, str]:
    """torchvision's init alone gives outputs that (nearly) ignore the input; see random_init."""
    from export.random_init import data_dependent_init

    info = data_dependent_init(model, preprocessing_for(arch), seed)
    return {"random_init": json.dumps(info, sort_keys=True)}


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"checkpoint {path} is not a readable PyTorch state_dict: {e}") from e
    # Training scripts often wrap the weights: {"state_dict": …} or {"model": …}.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"checkpoint {path} does not hold a state_dict of tensors")
    # DataParallel checkpoints prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _build_checkpoint(arch: Architecture, path: Path) -> tuple[torch.nn.Module, str]:
    state = _read_state_dict(path)
    model = torchvision.models.get_model(arch.builder, weights=None, **arch.builder_kwargs)
    if arch.family == "googlenet":  # aux heads are not exported (training-only)
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise WeightsError(f"checkpoint {path} does not fit {arch.name}: " + ", ".join(parts))
    model.load_state_dict(state, strict=True)
    return model, f"checkpoint:{path.name}:sha256={sha256_file(path)[:16]}"


def load_model(
    arch: Architecture, weights: str = "random", *, seed: int = DEFAULT_SEED, calibrate: bool = True
) -> LoadedModel:
    """Build ``arch`` in eval mode. ``weights`` is "imagenet", "random" or a checkpoint path.

    Random weights get the data-dependent init (``calibrate``) unless only shapes matter (analysis).
    """
    meta = {}
    if weights == "imagenet":
        model, source = _build_imagenet(arch)
    elif weights == "random":
        model, source = _build_random(arch, seed)
        if calibrate:
            meta.update(_calibrate_random(model, arch, seed))
    else:
        model, source = _build_checkpoint(arch, Path(weights))
    model.eval()
    if arch.family == "googlenet":
        meta["transform_input"] = str(bool(getattr(model, "transform_input", False)))
    return LoadedModel(
        model=model,
        weights_source=source,
        is_random=weights == "random",
        preprocessing=preprocessing_for(arch),
        categories=categories_for(arch),
        meta=meta,
    )
