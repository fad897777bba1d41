"""torch -> ONNX (dynamic batch) -> optimized graph -> FP16 variant."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections import Counter
from dataclasses import dataclass

import onnx
import onnx_ir
import onnxscript
import torch
from onnxruntime.transformers import float16

from cnn_deploy_core.layout import INPUT_NAME, OUTPUT_NAME, PARAM_PREFIX
from cnn_deploy_core.registry import Architecture
from export import ExportError, __version__

# Opset 18 is the dynamo exporter's native opset and is read by every ONNX Runtime that
# Triton 24.x+ ships (ORT >= 1.16), and by TensorRT 10's ONNX parser.
OPSET = 18
# A batch-1 example lets the exporter specialize the batch dim to 1 (see DESIGN pitfalls).
EXAMPLE_BATCH = 2


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    size_bytes: int
    op_counts: dict[str, int]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphStats:
        return cls(
            nodes=len(model.graph.node),
            size_bytes=model.ByteSize(),
            op_counts=dict(Counter(n.op_type for n in model.graph.node).most_common()),
        )


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress banners and warnings; our progress bar replaces them."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels, strict=False):
            lg.setLevel(level)


def to_onnx(model: torch.nn.Module, arch: Architecture) -> onnx.ModelProto:
    """Export with the dynamo exporter, only the batch dimension dynamic, unoptimized."""
    example = torch.randn(EXAMPLE_BATCH, *arch.input_shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                optimize=False,  # the optimize step does it, so we can report before/after
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    except Exception as e:
        raise ExportError(f"{arch.name}: torch.onnx.export failed: {e.__class__.__name__}: {e}") from e
    proto = program.model_proto
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if not dims[0].dim_param:
        raise ExportError(f"{arch.name}: exported batch dimension is static ({dims[0].dim_value})")
    return proto


def optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, BatchNorm folded into Conv, dead/identity/shape-only nodes removed.

    onnxscript's optimizer is the ONNX project's maintained pass pipeline (the one
    torch.onnx itself runs); it emits standard ONNX ops only, so the result stays portable
    to TensorRT and any ONNX Runtime, unlike ORT's saved "extended" graphs.
    """
    with _quiet():
        optimized = onnxscript.optimizer.optimize(model)
    onnx.checker.check_model(optimized, full_check=True)
    return optimized


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and compute, FP32 input/output, so both variants share one Triton signature."""
    with _quiet():
        half = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    # The converter appends the input Cast nodes at the end of the graph; ONNX requires
    # topological order (ORT tolerates it, the checker and TensorRT's parser do not).
    ir_model = onnx_ir.from_proto(half)
    ir_model.graph.sort()
    half = onnx_ir.to_proto(ir_model)
    onnx.checker.check_model(half)
    return half


def stamp_metadata(model: onnx.ModelProto, arch: Architecture, metadata: dict[str, object]) -> None:
    """Record provenance in the model itself, so no one serves random weights unknowingly."""
    fields = {
        "version": __version__,
        "architecture": arch.name,
        "opset": str(OPSET),
        "exporter": f"torch.onnx(dynamo) torch=={torch.__version__}",
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()},
    }
    del model.metadata_props[:]
    for key, value in sorted(fields.items()):
        model.metadata_props.add(key=PARAM_PREFIX + key, value=value)
    model.producer_name = "cnn-deploy"
    model.producer_version = __version__
    model.doc_string = f"{arch.name} exported by cnn-deploy, weights {metadata.get('weights_source')}"


def read_metadata(path) -> dict[str, str]:
    """The cnn_deploy.* metadata of an ONNX file, without loading its weights."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        p.key.removeprefix(PARAM_PREFIX): p.value
        for p in model.metadata_props
        if p.key.startswith(PARAM_PREFIX)
    }
