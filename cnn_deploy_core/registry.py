"""The one registry of architectures: pure data, no torch import.

Export, repository generation, clients and the test matrix all iterate it.
Per-architecture facts (tolerances, serving defaults) live here as small
declarative entries, like optimum's ``TasksManager`` and torchvision's
``list_models``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cnn_deploy_core import UnknownArchitectureError


@dataclass(frozen=True)
class Tolerance:
    """``|ort - torch| <= atol + rtol * max|torch row|``: rtol is relative to the logit scale."""

    atol: float
    rtol: float

    def __post_init__(self) -> None:
        if self.atol < 0 or self.rtol < 0:
            raise ValueError("tolerances must be non-negative")


@dataclass(frozen=True)
class Int8Guard:
    """What INT8 may give up against the fp32 PyTorch reference, on inputs calibration never saw."""

    min_top1: float = 0.75  # share of inputs whose top-1 class is unchanged
    min_top5: float = 0.75  # mean overlap of the top-5 sets
    min_cosine: float = 0.98  # the least similar row of logits
    max_rel_err: float = 0.3  # max |int8 - fp32| in a row, / that row's largest |logit|


@dataclass(frozen=True)
class GpuSizing:
    """The GPU configs' batching and instances, sized for one H100/H200-class GPU (80-141 GB):
    batches big enough to fill its SMs, two instances so one batch's copies overlap another's
    compute. Reasoning and figures: docs/deploy-gpu.md."""

    max_batch_size: int = 128
    instances: int = 2
    preferred_batch_sizes: tuple[int, ...] = (64, 128)

    def __post_init__(self) -> None:
        sizes = self.preferred_batch_sizes
        if self.max_batch_size < 2 or self.instances < 1:
            raise ValueError("GPU max_batch_size must be >= 2 and instances >= 1")
        if (
            not sizes
            or list(sizes) != sorted(set(sizes))
            or not 1 <= sizes[0] <= sizes[-1] <= self.max_batch_size
        ):
            raise ValueError(f"GPU preferred batch sizes {sizes} must rise within 1..{self.max_batch_size}")

    @property
    def opt_batch_size(self) -> int:
        """The batch TensorRT tunes its kernels for: the smallest batch the batcher prefers to form."""
        return self.preferred_batch_sizes[0]


@dataclass(frozen=True)
class Architecture:
    """One lecture architecture and everything the pipeline needs to know about it."""

    name: str  # also the torchvision builder name and the Triton model name
    family: str  # alexnet | vgg | googlenet | resnet
    input_shape: tuple[int, int, int] = (3, 224, 224)
    num_classes: int = 1000
    builder_kwargs: Mapping[str, object] = field(default_factory=dict)
    fp32: Tolerance = Tolerance(atol=1e-5, rtol=1e-4)
    fp16: Tolerance = Tolerance(atol=1e-4, rtol=1e-2)
    # The INT8 graph against its own golden outputs (the same runtime on another CPU may round
    # differently); its accuracy against PyTorch is the guard's job.
    int8: Tolerance = Tolerance(atol=1e-3, rtol=2e-2)
    int8_guard: Int8Guard = Int8Guard()
    max_batch_size: int = 32  # the CPU configs' (and the image ensemble's); the GPU's: `gpu`
    gpu: GpuSizing = GpuSizing()
    # The dynamic batcher's max_queue_delay_microseconds, per device. CPU: none. A batch of N
    # costs about N batches of 1 there, so waiting for one to fill only idles the instance;
    # requests that arrive during a run still meet in the next batch (`make bench-serving`).
    # GPU: 2 ms, where a bigger batch costs little more than one image.
    cpu_queue_delay_us: int = 0
    gpu_queue_delay_us: int = 2000

    def __post_init__(self) -> None:
        if self.max_batch_size < 2:
            raise ValueError(f"{self.name}: max_batch_size must be >= 2")
        object.__setattr__(self, "builder_kwargs", MappingProxyType(dict(self.builder_kwargs)))

    @property
    def builder(self) -> str:
        return self.name


# VGG-19-BN and GoogLeNet have the largest FP16 error, relative to the logit scale, on weights
# whose outputs depend on their inputs (export.random_init; `python -m export build --all` prints
# it): well above the others'. Their FP16 tolerance is twice their error; FP32 errors stay
# a tenth of the default rtol everywhere.
LOOSE_FP16 = Tolerance(atol=1e-4, rtol=2e-2)


# GPU sizes by compute per image (GMACs, DESIGN.md): the lighter the model, the bigger the batch
# it takes to keep a large GPU busy. ResNet-50 (4.1 GMACs): 128, two instances.
LIGHT_GPU = GpuSizing(max_batch_size=256, preferred_batch_sizes=(128, 256))  # AlexNet, ResNet-18/34
MEDIUM_GPU = GpuSizing(max_batch_size=128, preferred_batch_sizes=(64, 128))  # GoogLeNet, ResNet-50
HEAVY_GPU = GpuSizing(max_batch_size=64, preferred_batch_sizes=(32, 64))  # VGG, ResNet-101/152


def _entries() -> list[Architecture]:
    # Variants are data: the VGG and ResNet depths differ only in name and serving defaults.
    entries = [Architecture("alexnet", "alexnet", max_batch_size=64, gpu=LIGHT_GPU)]
    for depth in (11, 13, 16, 19):
        for suffix in ("", "_bn"):
            fp16 = {"fp16": LOOSE_FP16} if suffix else {}
            entries.append(
                Architecture(f"vgg{depth}{suffix}", "vgg", max_batch_size=16, gpu=HEAVY_GPU, **fp16)
            )
    # The aux heads only train; transform_input is set by torchvision for pretrained weights.
    entries.append(
        Architecture(
            "googlenet",
            "googlenet",
            builder_kwargs={"aux_logits": False, "init_weights": True},
            fp16=LOOSE_FP16,
            gpu=MEDIUM_GPU,
        )
    )
    for depth in (18, 34, 50, 101, 152):
        gpu = LIGHT_GPU if depth <= 34 else MEDIUM_GPU if depth == 50 else HEAVY_GPU
        entries.append(
            Architecture(f"resnet{depth}", "resnet", max_batch_size=32 if depth <= 50 else 16, gpu=gpu)
        )
    return entries


ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType({a.name: a for a in _entries()})
FAMILIES = ("alexnet", "vgg", "googlenet", "resnet")


def names() -> list[str]:
    """All registered architecture names, in lecture order."""
    return list(ARCHITECTURES)


def get(name: str) -> Architecture:
    """Look up an architecture; an unknown name lists the known ones."""
    try:
        return ARCHITECTURES[name.lower()]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known: {', '.join(names())}"
        ) from None


def resolve(requested: list[str] | None, *, all_: bool = False) -> list[Architecture]:
    """Turn CLI arguments (names, or --all) into registry entries, keeping order, no duplicates."""
    if all_:
        return list(ARCHITECTURES.values())
    if not requested:
        raise UnknownArchitectureError(f"no architecture given; known: {', '.join(names())}")
    seen: dict[str, Architecture] = {}
    for name in requested:
        arch = get(name)
        seen.setdefault(arch.name, arch)
    return list(seen.values())
