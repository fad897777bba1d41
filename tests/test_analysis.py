"""Per-layer analysis (export.analysis) and the cross-architecture comparison (export.comparison)."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnn_deploy_core.registry import get, names
from export.analysis import Analysis, analyze, analyze_module, render_table
from export.comparison import ComparisonRow, compare_architectures, plot
from export.comparison import render_table as render_comparison
from export.models import load_model, weights_enum

# One architecture per family that builds in about a second; the rest are marked slow.
FAST = ("alexnet", "googlenet", "resnet18")
EVERY_ARCHITECTURE = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in names()]
LECTURE_LAYER_TYPES = {
    "Conv2d",
    "Linear",
    "BatchNorm2d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
}


@functools.cache
def _analysis(name: str, input_size: int = 224) -> Analysis:
    # Building VGG or ResNet-152 takes seconds: analyse each architecture once per session.
    return analyze(get(name), input_size=input_size)


def _text(renderable) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def test_alexnet_first_conv_matches_lecture_at_227():
    first = _analysis("alexnet", 227).layers[0]
    assert (first.name, first.type, first.output_shape) == ("features.0", "Conv2d", (64, 56, 56))
    assert first.activation_kb == 784.0  # 64*56*56 floats * 4 bytes / 1024
    assert first.params == 23_296  # 64*3*11*11 weights + 64 biases
    assert first.macs == 64 * 56 * 56 * 3 * 11 * 11 == 72_855_552


def test_alexnet_at_224_follows_torchvision_shapes():
    first = _analysis("alexnet").layers[0]
    assert first.output_shape == (64, 55, 55)  # floor((224 + 2*2 - 11) / 4) + 1
    assert _analysis("alexnet").input_size == 224


@pytest.mark.parametrize("name", EVERY_ARCHITECTURE)
def test_totals_match_torchvision_metadata(name):
    analysis = _analysis(name)
    meta = weights_enum(get(name)).meta
    assert analysis.total_params == meta["num_params"]
    # torchvision publishes GFLOPS (multiply-adds) rounded to 3 decimals.
    assert round(analysis.gflops, 3) == pytest.approx(meta["_ops"], abs=1e-9)


@pytest.mark.parametrize("name", EVERY_ARCHITECTURE)
def test_layers_account_for_every_parameter_and_multiply_add(name):
    analysis = _analysis(name)
    assert sum(layer.params for layer in analysis.layers) == analysis.total_params
    # Every multiply-add of these CNNs is in a conv or linear layer, so none hides in a skipped module.
    assert sum(layer.macs for layer in analysis.layers) == analysis.total_macs
    assert analysis.total_activation_kb == pytest.approx(
        sum(layer.activation_kb for layer in analysis.layers)
    )


def test_layers_skip_elementwise_modules():
    analysis = _analysis("alexnet")
    assert {layer.type for layer in analysis.layers} <= LECTURE_LAYER_TYPES
    # features.1 is a ReLU, classifier.0 a Dropout: element-wise, so not listed.
    assert "features.1" not in {layer.name for layer in analysis.layers}
    assert "classifier.0" not in {layer.name for layer in analysis.layers}
    assert [layer.type for layer in analysis.layers].count("Conv2d") == 5
    assert len(analysis.layers) == 12  # 5 conv + 3 max pool + 1 adaptive avg pool + 3 linear


def test_layers_are_listed_in_execution_order():
    layers = [layer.name for layer in _analysis("resnet18").layers]
    assert layers[:5] == ["conv1", "bn1", "maxpool", "layer1.0.conv1", "layer1.0.bn1"]
    assert layers[-2:] == ["avgpool", "fc"]
    # The downsample shortcut runs after the block's main path.
    assert layers.index("layer2.0.downsample.0") > layers.index("layer2.0.bn2")


def test_pooling_and_batch_norm_have_no_multiply_adds():
    for layer in _analysis("resnet18").layers:
        if layer.type in {"BatchNorm2d", "MaxPool2d", "AdaptiveAvgPool2d"}:
            assert layer.macs == 0, layer
        else:
            assert layer.macs > 0, layer


def test_layer_macs_equal_flop_counter_module_entries():
    # The per-call totals must agree with FlopCounterMode's own per-module accounting.
    model = load_model(get("alexnet"), "random").model
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 224, 224))
    counts = counter.get_flop_counts()
    for layer in _analysis("alexnet").layers:
        assert layer.macs * 2 == sum(counts.get(f"AlexNet.{layer.name}", {}).values()), layer.name


def test_activation_memory_is_fp32_output_of_one_image():
    for layer in _analysis("googlenet").layers:
        assert layer.activation_kb == math.prod(layer.output_shape) * 4 / 1024


class _SharedConv(nn.Module):
    """A leaf module called twice, as weight sharing does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, kernel_size=3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.conv(self.act(self.conv(x)))


def test_repeated_leaf_module_counts_every_call_and_its_parameters_once():
    analysis = analyze_module(_SharedConv(), name="shared", input_size=8)
    assert [layer.name for layer in analysis.layers] == ["conv", "conv"]
    per_call = 3 * 8 * 8 * 3 * 3 * 3
    assert [layer.macs for layer in analysis.layers] == [per_call, per_call]
    assert [layer.params for layer in analysis.layers] == [84, 0]
    assert analysis.total_params == 84
    assert analysis.total_macs == 2 * per_call


def test_analysis_to_dict_is_json_with_totals():
    d = json.loads(json.dumps(_analysis("alexnet", 227).to_dict()))
    assert d["architecture"] == "alexnet" and d["input_size"] == 227
    assert d["total_params"] == 61_100_840 and d["params_m"] == pytest.approx(61.10084)
    assert d["gflops"] == pytest.approx(d["total_macs"] / 1e9)
    assert d["layers"][0]["output_shape"] == [64, 56, 56]
    assert d["total_activation_kb"] == pytest.approx(sum(layer["activation_kb"] for layer in d["layers"]))


def test_render_table_shows_layers_and_a_totals_row_with_separators():
    text = _text(render_table(_analysis("alexnet", 227)))
    assert "64×56×56" in text and "23,296" in text and "72.9" in text
    last_row = [line for line in text.splitlines() if "total" in line][-1]
    assert "61,100,840" in last_row and "2,339" in last_row


@pytest.fixture(scope="module")
def rows() -> list[ComparisonRow]:
    return compare_architectures([get(n) for n in FAST])


def test_comparison_rows_agree_with_the_independent_analysis(rows):
    """Params and GFLOPs come from torchvision's metadata; the analysis counts them itself."""
    assert [row.architecture for row in rows] == list(FAST)
    for row in rows:
        analysis = _analysis(row.architecture)
        assert row.params == analysis.total_params
        assert row.gflops == pytest.approx(analysis.gflops, abs=5e-4)  # published to 3 decimals
        assert 50 < row.top5 < 100 and row.top1 < row.top5
        assert row.family == get(row.architecture).family
        assert row.onnx_mb is None  # no models_dir given
        assert row.activation_mb == pytest.approx(analysis.total_activation_kb / 1024)
    by_name = {row.architecture: row for row in rows}
    assert by_name["resnet18"].top1 > by_name["alexnet"].top1  # the lecture's point: deeper, cheaper, better


def test_comparison_reports_onnx_size_only_where_exported(tmp_path):
    (tmp_path / "alexnet").mkdir()
    (tmp_path / "alexnet" / "model.onnx").write_bytes(b"\0" * 3 * 2**20)
    (tmp_path / "resnet18").mkdir()  # an export directory without a model
    rows = compare_architectures([get("alexnet"), get("resnet18")], models_dir=tmp_path)
    assert [row.onnx_mb for row in rows] == [3.0, None]


def test_comparison_to_dict_is_json(rows):
    d = json.loads(json.dumps([row.to_dict() for row in rows]))
    assert set(d[0]) == {
        "architecture",
        "family",
        "params",
        "gflops",
        "activation_mb",
        "onnx_mb",
        "top1",
        "top5",
    }


def test_comparison_table_lists_every_architecture(rows):
    text = _text(render_comparison(rows))
    for name in FAST:
        assert name in text
    assert "61.1" in text  # AlexNet's millions of parameters


def test_comparison_plot_writes_png(rows, tmp_path):
    path = tmp_path / "charts" / "comparison.png"
    assert plot(rows, path) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["comparison.png"]  # no temp file left behind


def test_comparison_plot_rejects_no_rows(tmp_path):
    with pytest.raises(ValueError, match="no architectures"):
        plot([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()
