"""Cross-architecture comparison: cost (params, multiply-adds, memory, ONNX size) against accuracy.

Params, GFLOPs and accuracy are torchvision's published weights metadata (offline, exact);
activation memory comes from :func:`export.analysis.analyze`, which builds each model once.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from rich.table import Table

from cnn_deploy_core.fsutil import atomic_write_bytes
from cnn_deploy_core.layout import MODEL_FILE
from cnn_deploy_core.registry import FAMILIES, Architecture
from export.analysis import analyze
from export.models import weights_enum

FAMILY_COLOURS = dict(zip(FAMILIES, ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e"), strict=True))
BUBBLE_AREA_PER_MPARAM = 9.0  # points² per million parameters: VGG-19 (144M) ≈ 1,300 pt²
SIZE_KEY_MPARAMS = (10, 50, 100)


@dataclass(frozen=True)
class ComparisonRow:
    """One architecture's cost and accuracy, for one image at its default input size."""

    architecture: str
    family: str
    params: int
    gflops: float  # giga multiply-adds (torchvision's ``_ops``, the lecture's convention)
    activation_mb: float  # sum of the per-layer outputs of one fp32 image
    onnx_mb: float | None  # None when no exported model.onnx was found
    top1: float  # ImageNet-1K accuracy, %, of torchvision's DEFAULT weights
    top5: float

    def to_dict(self) -> dict:
        return asdict(self)


def _onnx_mb(models_dir: Path | None, name: str) -> float | None:
    if models_dir is None:
        return None
    path = models_dir / name / MODEL_FILE
    return path.stat().st_size / 2**20 if path.is_file() else None


def compare_architectures(
    archs: list[Architecture], *, models_dir: Path | None = None
) -> list[ComparisonRow]:
    """One row per architecture; ``models_dir`` is an export output directory (``<name>/model.onnx``)."""
    rows = []
    for arch in archs:
        meta = weights_enum(arch).meta
        accuracy = meta["_metrics"]["ImageNet-1K"]
        analysis = analyze(arch, input_size=arch.input_shape[-1])
        rows.append(
            ComparisonRow(
                architecture=arch.name,
                family=arch.family,
                params=int(meta["num_params"]),
                gflops=float(meta["_ops"]),
                activation_mb=analysis.total_activation_kb / 1024,
                onnx_mb=_onnx_mb(models_dir, arch.name),
                top1=float(accuracy["acc@1"]),
                top5=float(accuracy["acc@5"]),
            )
        )
    return rows


def render_table(rows: list[ComparisonRow]) -> Table:
    """The comparison as a table, one row per architecture."""
    table = Table(title="Architecture comparison (one image, fp32 activations)")
    table.add_column("architecture")
    table.add_column("family")
    for header in ("params (M)", "GFLOPs", "activations MB", "ONNX MB", "top-1 %", "top-5 %"):
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(
            row.architecture,
            row.family,
            f"{row.params / 1e6:,.1f}",
            f"{row.gflops:,.2f}",
            f"{row.activation_mb:,.1f}",
            "—" if row.onnx_mb is None else f"{row.onnx_mb:,.1f}",
            f"{row.top1:.1f}",
            f"{row.top5:.1f}",
        )
    table.caption = "GFLOPs are multiply-adds; params and accuracy from torchvision's weights metadata"
    return table


def _bubble_area(params: float) -> float:
    return params / 1e6 * BUBBLE_AREA_PER_MPARAM


def _overlap(box: Bbox, others: list[Bbox]) -> float:
    return sum(inter.width * inter.height for o in others if (inter := Bbox.intersection(box, o)) is not None)


def _label_bubbles(ax: Axes, rows: list[ComparisonRow]) -> None:
    # Bubbles of one family sit close together (vgg11 and vgg11_bn share an x): try each side of
    # a bubble and keep the position whose text covers the least of earlier labels and other
    # bubbles (labels weigh more: a covered label is unreadable, a covered bubble is not).
    renderer = ax.figure.canvas.get_renderer()
    radii_pt = [math.sqrt(_bubble_area(row.params) / math.pi) for row in rows]
    bubbles = []
    for row, r_pt in zip(rows, radii_pt, strict=True):
        x, y = ax.transData.transform((row.gflops, row.top1))
        r = r_pt * ax.figure.dpi / 72
        bubbles.append(Bbox.from_extents(x - r, y - r, x + r, y + r))
    placed: list[Bbox] = []
    for i, (row, r_pt) in enumerate(zip(rows, radii_pt, strict=True)):
        text = ax.annotate(
            row.architecture,
            (row.gflops, row.top1),
            xytext=(0, 0),
            textcoords="offset points",
            fontsize=8,
            zorder=4,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7},
        )
        other_bubbles = bubbles[:i] + bubbles[i + 1 :]
        best = None
        for offset, ha, va in (
            ((r_pt + 2, 0), "left", "center"),
            ((-r_pt - 2, 0), "right", "center"),
            ((0, r_pt + 2), "center", "bottom"),
            ((0, -r_pt - 2), "center", "top"),
        ):
            text.xyann = offset
            text.set(ha=ha, va=va)
            box = text.get_window_extent(renderer)
            cost = 4 * _overlap(box, placed) + _overlap(box, other_bubbles)
            if best is None or cost < best[0]:
                best = (cost, offset, ha, va, box)
        _, text.xyann, ha, va, box = best
        text.set(ha=ha, va=va)
        placed.append(box)


def plot(rows: list[ComparisonRow], path: Path) -> Path:
    """The lecture's chart: top-1 against GFLOPs, bubble area ∝ parameters. Written atomically."""
    if not rows:
        raise ValueError("no architectures to plot")
    # A bare Figure with the Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(10, 6.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for family in dict.fromkeys(row.family for row in rows):
        members = [row for row in rows if row.family == family]
        ax.scatter(
            [row.gflops for row in members],
            [row.top1 for row in members],
            s=[_bubble_area(row.params) for row in members],
            color=FAMILY_COLOURS.get(family, "grey"),
            alpha=0.45,
            edgecolors="black",
            linewidths=0.6,
            label=family,
            zorder=3,
        )
    ax.set_xscale("log")  # 0.7 to 20 GFLOPs: a linear axis would pile the small models together
    ax.set_xticks([0.5, 1, 2, 5, 10, 20])
    ax.xaxis.set_major_formatter("{x:g}")
    ax.set_xlabel("GFLOPs per image (multiply-adds, log scale)")
    ax.set_ylabel("ImageNet-1K top-1 accuracy (%, torchvision DEFAULT weights)")
    ax.set_title("Accuracy vs. compute of classic CNNs (bubble area ∝ parameters)")
    ax.grid(True, which="both", alpha=0.3, zorder=0)
    ax.margins(x=0.15, y=0.08)

    family_legend = ax.legend(title="family", loc="lower right", frameon=True)
    for handle in family_legend.legend_handles:  # colour key only: same-size markers
        handle.set_sizes([60])
    ax.add_artist(family_legend)
    # A size key: empty handles drawn at reference parameter counts.
    size_handles = [
        ax.scatter([], [], s=_bubble_area(m * 1e6), color="white", edgecolors="black", linewidths=0.6)
        for m in SIZE_KEY_MPARAMS
    ]
    ax.legend(
        size_handles,
        [f"{m}M params" for m in SIZE_KEY_MPARAMS],
        title="parameters",
        loc="upper left",
        labelspacing=2.2,
        borderpad=1.2,
        handletextpad=1.6,
        frameon=True,
    )
    # Labels are placed in pixels: settle the layout and axis limits first.
    fig.draw_without_rendering()
    _label_bubbles(ax, rows)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path
