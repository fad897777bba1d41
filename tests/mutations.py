"""Subtle damage to an exported ONNX graph, for proving that verification catches a wrong model.

Each mutation takes a model proto and returns a damaged copy; the original is left alone. They work
on the FP32, the FP16 and the INT8 (QDQ) graphs alike: in a QDQ graph a Conv's weights and bias come
through a DequantizeLinear, and the damage is done to its quantized tensor and scales.
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


def _array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(_initializers(model)[name])


def _replace(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    inits = _initializers(model)
    inits[name].CopyFrom(
        numpy_helper.from_array(array.astype(numpy_helper.to_array(inits[name]).dtype), name)
    )


class _Param:
    """One Conv input (weights or bias), stored as an initializer or behind a DequantizeLinear."""

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.model = model
        inits = _initializers(model)
        producer = next((n for n in model.graph.node if name in n.output), None)
        if name in inits:
            self.tensor, self.scale_name, self.zero_name = name, None, None
        elif producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in inits:
            self.tensor, self.scale_name = producer.input[0], producer.input[1]
            self.zero_name = producer.input[2] if len(producer.input) > 2 else None
        else:
            raise ValueError(f"{name} is neither an initializer nor a dequantized one")

    @classmethod
    def of(cls, model: onnx.ModelProto, name: str) -> _Param | None:
        try:
            return cls(model, name)
        except ValueError:
            return None

    def _per_channel(self, name: str | None) -> np.ndarray:
        if name is None:
            return np.zeros(1)
        value = _array(self.model, name)
        return (
            value.reshape(-1, *[1] * (_array(self.model, self.tensor).ndim - 1)) if value.size > 1 else value
        )

    def values(self) -> np.ndarray:
        raw = _array(self.model, self.tensor).astype(np.float64)
        if self.scale_name is None:
            return raw
        return (raw - self._per_channel(self.zero_name)) * self._per_channel(self.scale_name)

    def scale(self, factor: float) -> None:
        # Quantized: the scale, not the int8 values (which would clip at 127).
        target = self.scale_name or self.tensor
        _replace(self.model, target, _array(self.model, target) * factor)

    def permute(self, order: np.ndarray) -> None:
        for name in (self.tensor, self.scale_name, self.zero_name):
            if name is not None and _array(self.model, name).size > 1:
                _replace(self.model, name, _array(self.model, name)[order])

    def zero(self, channel: int) -> None:
        raw = _array(self.model, self.tensor).copy()
        zero_point = _array(self.model, self.zero_name).reshape(-1) if self.zero_name else np.zeros(1)
        raw[channel] = zero_point[channel if zero_point.size > 1 else 0]
        _replace(self.model, self.tensor, raw)


def _middle_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    convs = [n for n in model.graph.node if n.op_type == "Conv" and _Param.of(model, n.input[1])]
    assert convs, "no Conv with initializer weights"
    return convs[len(convs) // 2]


def scale_one_conv(model: onnx.ModelProto, factor: float = 1.05) -> onnx.ModelProto:
    """One convolution's weights scaled by 1.05."""
    model = copy.deepcopy(model)
    _Param(model, _middle_conv(model).input[1]).scale(factor)
    return model


def swap_two_channels(model: onnx.ModelProto) -> onnx.ModelProto:
    """Two output channels of one convolution swapped (weights and bias)."""
    model = copy.deepcopy(model)
    node = _middle_conv(model)
    weights = _Param(model, node.input[1])
    order = np.arange(weights.values().shape[0])
    order[[0, 1]] = order[[1, 0]]
    for name in node.input[1:3]:
        param = _Param.of(model, name)
        if param is not None:
            param.permute(order)
    return model


def zero_one_channel(model: onnx.ModelProto) -> onnx.ModelProto:
    """One output channel of a middle convolution zeroed (weights and bias): a dead filter."""
    model = copy.deepcopy(model)
    node = _middle_conv(model)
    for name in node.input[1:3]:
        param = _Param.of(model, name)
        if param is not None:
            param.zero(0)
    return model


def drop_one_bias(model: onnx.ModelProto) -> onnx.ModelProto:
    """The bias of one Conv/Gemm removed: the one that matters most (largest norm)."""
    model = copy.deepcopy(model)
    candidates = [
        (n, _Param.of(model, n.input[2]))
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2
    ]
    node, _ = max(
        ((n, p) for n, p in candidates if p is not None), key=lambda c: float(np.abs(c[1].values()).sum())
    )
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
    "zero-channel": zero_one_channel,
    "drop-bias": drop_one_bias,
    "rgb-to-bgr": reverse_input_channels,
}
