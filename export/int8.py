"""INT8: ONNX Runtime's static quantization, and a guard on what accuracy it gave up.

QDQ format (QuantizeLinear/DequantizeLinear around each quantized op), per-channel INT8 weights,
activations calibrated with min/max on a seeded set: the calibration photos, seeded
augmentations of them, seeded random tensors, and any folder of images the user gives. The
tensors are there because verification sends such inputs too: calibrated on photos alone, a
network loses the top-1 class of held-out random tensors; with seeded tensors in the calibration
set it keeps them, and agrees better on the photos too.

QDQ because it is the faster format at the batch sizes a dynamic batcher builds (QOperator falls
behind at batch 8 on a VNNI CPU), and because TensorRT reads a QDQ graph as explicit quantization.

Two files from one calibration, one per runtime (SCHEMES):
- u8s8 (model.int8.onnx, the cpu config): UINT8 activations with a zero point, INT8 weights. ONNX
  Runtime's CPU kernels want it: they run U8S8 several times faster than FP32, S8S8 no faster
  (`make bench-int8`; docs/benchmarks.md, INT8). Its spatial mean is written as the
  GlobalAveragePool it is before quantizing (`spatial_means_as_pooling`), so ORT runs every op
  between the input's quantization and the logits' dequantization in INT8.
- s8s8 (model.int8.s8s8.onnx, the gpu config and the INT8 TensorRT plan): INT8 activations and
  weights, symmetric (zero point 0), per-channel weights, float bias. TensorRT builds explicitly
  quantized networks from nothing else; `tensorrt_violations` holds the file to that before it is
  written, and a graph breaking it stops the export with the node named.

The guard compares the INT8 graph with the fp32 PyTorch reference on inputs calibration never
saw: the held-out photos, seeded augmentations of them, and seeded tensors. Top-1 and top-5
agreement, the cosine similarity of the logits and the error relative to the logit scale must
meet the architecture's thresholds (registry), or the INT8 step fails with the figures.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cnn_deploy_core.images import held_out_photos, sample_photos
from cnn_deploy_core.layout import INPUT_NAME, INT8_FILE, INT8_S8S8_FILE
from cnn_deploy_core.metrics import topk
from cnn_deploy_core.preprocess import ImageError, Preprocessing, load_image, preprocess
from cnn_deploy_core.registry import Int8Guard
from export import ExportError
from export.random_init import calibration_images

CALIBRATION_SEED = 7
CALIBRATION_TENSORS = 8
HELD_OUT_AUGMENTATIONS = 4
SEEDED_INPUTS = 8
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class Calibration:
    inputs: np.ndarray  # preprocessed, NCHW float32
    described: dict  # recorded in the export metadata


def calibration_set(
    spec: Preprocessing, *, seed: int = CALIBRATION_SEED, folder: Path | None = None
) -> Calibration:
    """The calibration photos with seeded augmentations, plus every image in `folder`."""
    images = calibration_images(seed)
    user: list[str] = []
    if folder is not None:
        if not folder.is_dir():
            raise ExportError(f"--calibration {folder} is not a directory of images")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ExportError(f"--calibration {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        for path in paths:
            try:
                images.append(load_image(path))
            except ImageError as e:
                raise ExportError(f"calibration image {path}: {e}") from None
            user.append(path.name)
    tensors = np.random.default_rng(seed).standard_normal(
        (CALIBRATION_TENSORS, 3, spec.crop, spec.crop), dtype=np.float32
    )
    inputs = np.concatenate([np.stack([preprocess(img, spec) for img in images]), tensors])
    described = {
        "photos": [p.name for p in sample_photos()],
        "seed": seed,
        "images": len(images),
        "seeded_tensors": CALIBRATION_TENSORS,
        "user_folder": str(folder) if folder else None,
        "user_images": user,
        "method": "minmax",
    }
    return Calibration(inputs, described)


def held_out_inputs(spec: Preprocessing, *, seed: int = CALIBRATION_SEED + 1) -> tuple[np.ndarray, list[str]]:
    """Inputs calibration never saw: held-out photos, seeded augmentations of them, seeded tensors."""
    rng = np.random.default_rng(seed)
    rows, names = [], []
    for path in held_out_photos():
        photo = load_image(path)
        rows.append(preprocess(photo, spec))
        names.append(f"photo:{path.name}")
        w, h = photo.size
        for k in range(HELD_OUT_AUGMENTATIONS):
            scale = rng.uniform(0.5, 0.95)
            cw, ch = int(w * scale), int(h * scale)
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            rows.append(preprocess(photo.crop((left, top, left + cw, top + ch)), spec))
            names.append(f"crop{k}:{path.name}")
    tensors = rng.standard_normal((SEEDED_INPUTS, 3, spec.crop, spec.crop), dtype=np.float32)
    return np.concatenate([np.stack(rows), tensors]), names + [f"seeded-{i}" for i in range(SEEDED_INPUTS)]


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a preprocessed batch."""

    def __init__(self, inputs: np.ndarray, batch: int = 8):
        self._batches = iter([{INPUT_NAME: inputs[i : i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self):
        return next(self._batches, None)


@dataclass(frozen=True)
class Int8Scheme:
    """One INT8 form of the graph, and the runtime it is written for."""

    name: str  # u8s8 | s8s8
    filename: str
    serves: str  # the config that serves it: cpu | gpu
    signed_activations: bool  # INT8 activations with zero point 0, float bias (TensorRT's form)

    def describe(self) -> dict[str, str]:
        return {"int8_scheme": self.name, "serves": self.serves, "file": self.filename}


SCHEMES = {
    "u8s8": Int8Scheme("u8s8", INT8_FILE, "cpu", signed_activations=False),
    "s8s8": Int8Scheme("s8s8", INT8_S8S8_FILE, "gpu", signed_activations=True),
}


def quantize(
    model: Path, output: Path, calibration: Calibration, scheme: Int8Scheme = SCHEMES["u8s8"]
) -> None:
    """Static QDQ quantization of an fp32 ONNX file (ORT's pre-processing first), in `scheme`'s form."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if scheme.signed_activations:
        activations = QuantType.QInt8
        # TensorRT quantizes weights and activations only: a bias left in float stays float.
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    else:
        activations, extra = QuantType.QUInt8, {}
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared))
        if not scheme.signed_activations:
            import onnx

            graph = onnx.load(str(prepared))
            if spatial_means_as_pooling(graph):
                onnx.save(graph, str(prepared))
        quantize_static(
            str(prepared),
            str(output),
            _Reader(calibration.inputs),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=activations,
            weight_type=QuantType.QInt8,
            extra_options=extra,
        )


def spatial_means_as_pooling(model) -> int:
    """Rewrite each mean over H and W of an NCHW tensor (ReduceMean, keepdims) as the
    GlobalAveragePool it is; returns how many. The quantizer leaves ReduceMean in float, so ONNX
    Runtime would transpose the last block's output back to NCHW, dequantize it, average it in
    float and quantize it again for the classifier; a GlobalAveragePool it runs as
    QLinearGlobalAveragePool in NHWC, INT8 from the first convolution to the classifier."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*graph.input, *graph.value_info, *graph.output]
        if v.type.tensor_type.HasField("shape")
    }
    rewritten, axes_inputs = 0, set()
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")  # an attribute before opset 18, an input from 18
        if axes is None and len(node.input) > 1 and node.input[1] in consts:
            axes = consts[node.input[1]].tolist()
        if attrs.get("keepdims", 1) != 1 or axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        axes_inputs.update(node.input[1:])
        pool = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
        graph.node.remove(node)
        graph.node.insert(index, pool)
        rewritten += 1
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name in axes_inputs - used]:
        graph.initializer.remove(init)
    return rewritten


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def tensorrt_violations(model) -> list[str]:
    """What keeps TensorRT from building this QDQ graph as explicit quantization, one line per node:
    every Q/DQ node INT8 with zero point 0 (no UINT8, no INT32 bias), weights quantized per channel."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    for node in graph.node:  # a Constant node's value is a constant too
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            consts[node.output[0]] = node.attribute[0].t
    feeds_weighted = {i for n in graph.node if n.op_type in WEIGHTED_OPS for i in n.input}
    out = []
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        label = f"{node.op_type} {node.name or node.output[0]!r}"
        zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None and not (len(node.input) > 2 and node.input[2]):
            out.append(f"{label}: no zero point (ONNX's default is UINT8); TensorRT needs INT8, zero point 0")
            continue
        if zero is None:
            out.append(f"{label}: zero point {node.input[2]!r} is not a constant")
            continue
        if zero.data_type != TensorProto.INT8:
            kind = TensorProto.DataType.Name(zero.data_type)
            out.append(f"{label}: {kind} zero point; TensorRT needs INT8 with zero point 0")
            continue
        if numpy_helper.to_array(zero).any():
            out.append(f"{label}: non-zero zero point; TensorRT needs symmetric INT8 (zero point 0)")
            continue
        weight = consts.get(node.input[0])
        if node.op_type == "DequantizeLinear" and weight is not None and len(weight.dims) > 1:
            if node.output[0] in feeds_weighted:
                scale = consts.get(node.input[1])
                channels = weight.dims[_axis(node)]
                if scale is None or len(scale.dims) != 1 or scale.dims[0] != channels:
                    out.append(f"{label}: weight scale is not per channel ({channels} channels)")
    return out


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def check_tensorrt(model, filename: str) -> None:
    """Refuse a TensorRT-bound graph that breaks explicit quantization's rules: one line, the node named."""
    problems = tensorrt_violations(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ExportError(f"{filename} is not TensorRT explicit quantization: {problems[0]}{more}")


@contextlib.contextmanager
def _quiet():
    """The quantizer logs a line per tensor and warns about pre-processing: keep the bar clean."""
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


@dataclass(frozen=True)
class Int8Accuracy:
    samples: int
    top1_agreement: float
    top5_agreement: float  # mean overlap of the top-5 sets
    min_cosine: float
    max_rel_err: float  # max |int8 - fp32| over a row, / that row's largest |logit|

    def failures(self, guard: Int8Guard) -> list[str]:
        out = []
        if self.top1_agreement < guard.min_top1:
            out.append(f"top-1 agreement {self.top1_agreement:.0%} < {guard.min_top1:.0%}")
        if self.top5_agreement < guard.min_top5:
            out.append(f"top-5 agreement {self.top5_agreement:.0%} < {guard.min_top5:.0%}")
        if self.min_cosine < guard.min_cosine:
            out.append(f"cosine {self.min_cosine:.4f} < {guard.min_cosine}")
        if self.max_rel_err > guard.max_rel_err:
            out.append(f"max rel err {self.max_rel_err:.3f} > {guard.max_rel_err}")
        return out

    def describe(self) -> str:
        return (
            f"top-1 {self.top1_agreement:.0%}, top-5 {self.top5_agreement:.0%}, "
            f"cosine >= {self.min_cosine:.4f}, max rel err {self.max_rel_err:.3f} "
            f"over {self.samples} held-out inputs"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy(reference: np.ndarray, got: np.ndarray) -> Int8Accuracy:
    ref, out = reference.astype(np.float64), got.astype(np.float64)
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1) + 1e-30)
    rel = np.abs(out - ref).max(1) / np.maximum(np.abs(ref).max(1), 1e-30)
    k = min(5, ref.shape[1])
    overlap = [len(set(a) & set(b)) / k for a, b in zip(topk(ref, k), topk(out, k), strict=True)]
    return Int8Accuracy(
        samples=len(ref),
        top1_agreement=float(np.mean(ref.argmax(1) == out.argmax(1))),
        top5_agreement=float(np.mean(overlap)),
        min_cosine=float(cos.min()),
        max_rel_err=float(rel.max()),
    )


def reference_outputs(model: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(inputs)).numpy()
