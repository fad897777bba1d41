"""Subtle damage to an exported ONNX graph, for proving that verification catches a wrong model.

Each mutation takes a model proto and returns a damaged copy; the original is left alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cnn_deploy_core.layout import INPUT_NAME


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _replace(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    inits = _initializers(model)
    inits[name].CopyFrom(
        numpy_helper.from_array(array.astype(numpy_helper.to_array(inits[name]).dtype), name)
    )


def _middle_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in _initializers(model)]
    assert convs, "no Conv with initializer weights"
    return convs[len(convs) // 2]


def scale_one_conv(model: onnx.ModelProto, factor: float = 1.05) -> onnx.ModelProto:
    """One convolution's weights scaled by 1.05."""
    model = copy.deepcopy(model)
    node = _middle_conv(model)
    weight = numpy_helper.to_array(_initializers(model)[node.input[1]])
    _replace(model, node.input[1], weight * factor)
    return model


def swap_two_channels(model: onnx.ModelProto) -> onnx.ModelProto:
    """Two output channels of one convolution swapped (weights and bias)."""
    model = copy.deepcopy(model)
    node = _middle_conv(model)
    inits = _initializers(model)
    order = np.arange(numpy_helper.to_array(inits[node.input[1]]).shape[0])
    order[[0, 1]] = order[[1, 0]]
    for name in node.input[1:3]:
        if name in inits:
            _replace(model, name, numpy_helper.to_array(inits[name])[order])
    return model


def drop_one_bias(model: onnx.ModelProto) -> onnx.ModelProto:
    """The bias of one Conv/Gemm removed: the one that matters most (largest norm)."""
    model = copy.deepcopy(model)
    inits = _initializers(model)
    candidates = [
        n
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] in inits
    ]
    node = max(candidates, key=lambda n: float(np.abs(numpy_helper.to_array(inits[n.input[2]])).sum()))
    del node.input[2]
    return model


def reverse_input_channels(model: onnx.ModelProto) -> onnx.ModelProto:
    """The input read as BGR instead of RGB: a Gather reversing the channel axis, before everything."""
    model = copy.deepcopy(model)
    reversed_name = INPUT_NAME + "_bgr"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == INPUT_NAME:
                node.input[i] = reversed_name
    model.graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "bgr_order"))
    model.graph.node.insert(0, helper.make_node("Gather", [INPUT_NAME, "bgr_order"], [reversed_name], axis=1))
    return model


MUTATIONS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "scale-conv-1.05": scale_one_conv,
    "swap-channels": swap_two_channels,
    "drop-bias": drop_one_bias,
    "rgb-to-bgr": reverse_input_channels,
}
