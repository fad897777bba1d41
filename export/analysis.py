"""Per-layer analysis of a CNN, as in the "CNN architectures" lecture (EECS 498 / CS231n).

For every layer the lecture tabulates (conv, fully connected, batch norm, pooling) we record the
output shape, the activation memory of one image, the parameters and the multiply-adds. The
multiply-adds come from torch's own ``FlopCounterMode`` rather than hand-written formulas, so the
totals agree with torchvision's published ``_ops`` metadata.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnn_deploy_core.registry import Architecture
from export import ExportError
from export.models import load_model

BYTES_PER_ELEMENT = 4  # fp32 activations

# The kinds of layer the lecture lists. Everything else in these models is element-wise or a view
# (ReLU, Dropout, Identity, Flatten): no parameters, no multiply-adds, and the in-place ones reuse
# their input's memory, so listing them would double-count activations. A leaf module outside this
# list that owns parameters is still listed, so no parameter goes unaccounted for.
LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
)


@dataclass(frozen=True)
class LayerStats:
    """One call of one layer, for a single image."""

    name: str  # module path in the model, e.g. "features.0"
    type: str  # module class, e.g. "Conv2d"
    output_shape: tuple[int, ...]  # without the batch dim: (C, H, W) or (features,)
    activation_kb: float  # output elements * 4 bytes / 1024
    params: int  # the module's own weights and bias; 0 on a repeated call
    macs: int  # multiply-adds; 0 for layers FlopCounterMode does not count (pooling, BN)


@dataclass(frozen=True)
class Analysis:
    """Per-layer statistics of one architecture at one input size."""

    architecture: str
    input_size: int
    layers: list[LayerStats]
    total_params: int  # every parameter of the model
    total_macs: int  # FlopCounterMode's global count, in multiply-adds
    total_activation_kb: float  # sum over the listed layers

    @property
    def gflops(self) -> float:
        """Giga multiply-adds, the unit of torchvision's ``_ops`` and of the lecture."""
        return self.total_macs / 1e9

    @property
    def params_m(self) -> float:
        return self.total_params / 1e6

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [{**asdict(layer), "output_shape": list(layer.output_shape)} for layer in self.layers]
        d["gflops"] = self.gflops
        d["params_m"] = self.params_m
        d["total_activation_mb"] = self.total_activation_kb / 1024
        return d


def _is_listed(module: nn.Module) -> bool:
    return isinstance(module, LAYER_TYPES) or next(module.parameters(recurse=False), None) is not None


def analyze(arch: Architecture, *, input_size: int = 224) -> Analysis:
    """Run one image of ``input_size``² through ``arch`` and tabulate its layers."""
    # Random weights: shapes, parameter counts and multiply-adds do not depend on the values.
    model = load_model(arch, "random", calibrate=False).model
    return analyze_module(model, name=arch.name, input_size=input_size)


def analyze_module(model: nn.Module, *, name: str, input_size: int = 224) -> Analysis:
    """:func:`analyze` for any image model taking (1, 3, ``input_size``, ``input_size``)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    fqns = {mod: fqn for fqn, mod in model.named_modules()}
    layers: list[LayerStats] = []
    seen_params: set[int] = set()
    flops_before: dict[nn.Module, int] = {}

    # FlopCounterMode updates its counts as each op runs. Everything that runs between a leaf's
    # pre- and post-hook is that leaf's own work, so the change of the running total is exactly
    # what its per-module entry gains from this call. Taking the change per call (rather than
    # reading the entry afterwards) counts a module that runs twice as two layers, and does not
    # depend on how the tracker names a module shared by two parents.
    def pre_hook(module: nn.Module, _inputs) -> None:
        flops_before[module] = counter.get_total_flops()

    def post_hook(module: nn.Module, _inputs, output) -> None:
        flops = counter.get_total_flops() - flops_before.pop(module)
        new_params = [p for p in module.parameters(recurse=False) if id(p) not in seen_params]
        seen_params.update(id(p) for p in new_params)
        if isinstance(output, tuple):  # MaxPool2d(return_indices=True): the values are the activation
            output = output[0]
        shape = tuple(output.shape[1:])
        layers.append(
            LayerStats(
                name=fqns[module],
                type=type(module).__name__,
                output_shape=shape,
                activation_kb=math.prod(shape) * BYTES_PER_ELEMENT / 1024,
                params=sum(p.numel() for p in new_params),
                macs=flops // 2,  # FlopCounterMode counts a multiply-add as 2 FLOPs
            )
        )

    handles = []
    for module in model.modules():
        if next(module.children(), None) is None and _is_listed(module):
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook))
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, input_size, input_size))
    except RuntimeError as e:  # a feature map shrank below a kernel: the input is too small
        raise ExportError(f"{name} cannot take a {input_size}x{input_size} input: {e}") from None
    finally:
        for handle in handles:
            handle.remove()

    return Analysis(
        architecture=name,
        input_size=input_size,
        layers=layers,
        total_params=sum(p.numel() for p in model.parameters()),
        total_macs=counter.get_total_flops() // 2,
        total_activation_kb=sum(layer.activation_kb for layer in layers),
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


def render_table(analysis: Analysis) -> Table:
    """The lecture's per-layer table, with a totals row."""
    table = Table(
        title=f"{analysis.architecture} @ {analysis.input_size}×{analysis.input_size}",
        caption="MFLOPs are multiply-adds; memory is the fp32 output of one image",
    )
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output (C×H×W)", justify="right")
    table.add_column("memory KB", justify="right")
    table.add_column("params", justify="right")
    table.add_column("MFLOPs", justify="right")
    for i, layer in enumerate(analysis.layers):
        table.add_row(
            layer.name,
            layer.type,
            _shape(layer.output_shape),
            f"{layer.activation_kb:,.0f}",
            f"{layer.params:,}",
            f"{layer.macs / 1e6:,.1f}",
            end_section=i == len(analysis.layers) - 1,
        )
    table.add_row(
        "total",
        "",
        "",
        f"{analysis.total_activation_kb:,.0f}",
        f"{analysis.total_params:,}",
        f"{analysis.total_macs / 1e6:,.1f}",
        style="bold",
    )
    return table
