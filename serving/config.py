"""Triton model configuration as data: typed structures -> dict -> Triton's protobuf -> text.

Never string templates: the dict is parsed into `model_config_pb2.ModelConfig` (Triton's own
schema, shipped by tritonclient), so a wrong field fails here, not in the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from cnn_deploy_core.layout import PARAM_PREFIX
from serving import ServingError

CPU, GPU = "cpu", "gpu"
CONFIG_NAMES = (CPU, GPU)


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]
    data_type: str = "TYPE_FP32"
    format: str | None = None  # FORMAT_NCHW on image inputs (Triton's image_client reads it)
    label_filename: str | None = None  # enables Triton's classification extension

    def to_dict(self) -> dict:
        out: dict = {"name": self.name, "data_type": self.data_type, "dims": list(self.dims)}
        if self.format:
            out["format"] = self.format
        if self.label_filename:
            out["label_filename"] = self.label_filename
        return out


@dataclass(frozen=True)
class TensorRTProfile:
    """One TensorRT optimization profile over the batch dimension of one input: min 1, max the
    dynamic batcher's max_batch_size, opt the batch the engine is tuned for. Explicit, so TensorRT
    builds one engine for every batch the batcher can form instead of rebuilding when a larger
    batch first arrives."""

    input: str
    dims: tuple[int, ...]  # without the batch dimension
    max_batch: int
    opt_batch: int

    def __post_init__(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ServingError(f"TensorRT profile: opt batch {self.opt_batch} outside 1..{self.max_batch}")

    def shape(self, batch: int) -> str:
        return f"{self.input}:" + "x".join(str(d) for d in (batch, *self.dims))

    def to_params(self) -> dict[str, str]:
        return {
            "trt_profile_min_shapes": self.shape(1),
            "trt_profile_opt_shapes": self.shape(self.opt_batch),
            "trt_profile_max_shapes": self.shape(self.max_batch),
        }


@dataclass(frozen=True)
class TensorRTAccelerator:
    """ONNX Runtime's TensorRT execution provider, as the native ORT backend configures it (its
    README's parameter table); our Python backend maps the same keys to the same EP options."""

    precision: str = "FP16"
    workspace_bytes: int = 1 << 30
    cache_path: str | None = None  # engines, on a volume: a restart loads them instead of rebuilding
    timing_cache_path: str | None = None  # kernel timings, shared by every model on the volume
    # TensorRT's default (3): higher levels search longer (minutes per model) for a few percent.
    builder_optimization_level: int = 3
    # Off by default: a CUDA graph is captured per input shape, and the dynamic batcher forms any
    # batch from 1 to max, so its gain is unproven (`cuda_graph=True` turns it on).
    cuda_graph: bool = False
    profile: TensorRTProfile | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("FP32", "FP16", "INT8"):
            raise ServingError(f"TensorRT precision must be FP32, FP16 or INT8, not {self.precision!r}")
        if not 0 <= self.builder_optimization_level <= 5:
            raise ServingError("TensorRT builder optimization level must be 0..5")

    def to_dict(self) -> dict:
        params = {
            "precision_mode": self.precision,
            "max_workspace_size_bytes": str(self.workspace_bytes),
            "trt_builder_optimization_level": str(self.builder_optimization_level),
            "trt_cuda_graph_enable": "1" if self.cuda_graph else "0",
        }
        if self.cache_path:
            params.update(trt_engine_cache_enable="1", trt_engine_cache_path=self.cache_path)
        if self.timing_cache_path:
            params.update(trt_timing_cache_enable="1", trt_timing_cache_path=self.timing_cache_path)
        if self.profile:
            params.update(self.profile.to_params())
        return {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": params}]}


@dataclass(frozen=True)
class EnsembleStep:
    """One model of an ensemble: its inputs and outputs mapped to the ensemble's tensors."""

    model: str
    input_map: dict[str, str]  # the step model's input name -> ensemble tensor
    output_map: dict[str, str]  # the step model's output name -> ensemble tensor

    def to_dict(self) -> dict:
        # version -1: the step model's default version, so a rollback of the model carries over.
        return {
            "model_name": self.model,
            "model_version": -1,
            "input_map": dict(self.input_map),
            "output_map": dict(self.output_map),
        }


@dataclass(frozen=True)
class ModelConfig:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int
    backend: str | None = None
    platform: str | None = None
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    queue_delay_us: int = 2000
    default_model_filename: str | None = None
    # The version numbers served, explicitly (Triton's `specific` policy): the repository decides
    # which versions agree on labels and preprocessing (see serving.repository.served_versions).
    # Empty: Triton's default, the latest one.
    versions: tuple[int, ...] = ()
    warmup_batch_sizes: tuple[int, ...] = (1,)
    preferred_batch_sizes: tuple[int, ...] = ()
    accelerator: TensorRTAccelerator | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    ensemble_steps: tuple[EnsembleStep, ...] = ()  # with platform "ensemble"
    # Triton's rate limiter: resources (name, count) an execution of an instance holds while it
    # runs; honoured by a server started with --rate-limit=execution_count (serving/threads.py).
    rate_limiter: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if (self.backend is None) == (self.platform is None):
            raise ServingError(f"{self.name}: set exactly one of backend or platform")
        if self.max_batch_size < 1:
            raise ServingError(f"{self.name}: max_batch_size must be >= 1")
        if self.instance_count < 1:
            raise ServingError(f"{self.name}: instance count must be >= 1")
        for label, sizes in (("warmup", self.warmup_batch_sizes), ("preferred", self.preferred_batch_sizes)):
            bad = [b for b in sizes if not 1 <= b <= self.max_batch_size]
            if bad:
                raise ServingError(f"{self.name}: {label} batch sizes {bad} outside 1..{self.max_batch_size}")
        if (self.platform == "ensemble") != bool(self.ensemble_steps):
            raise ServingError(f"{self.name}: an ensemble needs steps, and only an ensemble has them")

    @property
    def is_ensemble(self) -> bool:
        return self.platform == "ensemble"

    def to_dict(self) -> dict:
        """Built section by section, as pytriton does, in Triton's JSON field names."""
        out: dict = {"name": self.name, "max_batch_size": self.max_batch_size}
        if self.backend:
            out["backend"] = self.backend
        if self.platform:
            out["platform"] = self.platform
        if self.versions:
            out["version_policy"] = {"specific": {"versions": sorted(self.versions)}}
        out["input"] = [t.to_dict() for t in self.inputs]
        out["output"] = [t.to_dict() for t in self.outputs]
        if self.is_ensemble:  # the scheduler runs the steps; they batch, instance and warm up
            out["ensemble_scheduling"] = {"step": [step.to_dict() for step in self.ensemble_steps]}
            if self.parameters:
                out["parameters"] = {k: {"string_value": v} for k, v in sorted(self.parameters.items())}
            return out
        out["instance_group"] = [{"kind": self.instance_kind, "count": self.instance_count}]
        if self.rate_limiter:
            resources = [{"name": name, "count": count} for name, count in self.rate_limiter]
            out["instance_group"][0]["rate_limiter"] = {"resources": resources}
        # A queue delay rather than preferred_batch_size by default: it adapts to the load
        # (DESIGN.md); the tuner may add preferred sizes where it measured them to help.
        out["dynamic_batching"] = {"max_queue_delay_microseconds": self.queue_delay_us}
        if self.preferred_batch_sizes:
            out["dynamic_batching"]["preferred_batch_size"] = list(self.preferred_batch_sizes)
        if self.default_model_filename:
            out["default_model_filename"] = self.default_model_filename
        if self.accelerator:
            out["optimization"] = {"execution_accelerators": self.accelerator.to_dict()}
        if self.warmup_batch_sizes:
            out["model_warmup"] = [self._warmup(b) for b in self.warmup_batch_sizes]
        if self.parameters:
            out["parameters"] = {k: {"string_value": v} for k, v in sorted(self.parameters.items())}
        return out

    def _warmup(self, batch: int) -> dict:
        inputs = {
            t.name: {"data_type": t.data_type, "dims": list(t.dims), "random_data": True} for t in self.inputs
        }
        return {"name": f"random_batch_{batch}", "batch_size": batch, "inputs": inputs}

    def to_proto(self) -> model_config_pb2.ModelConfig:
        try:
            return json_format.ParseDict(self.to_dict(), model_config_pb2.ModelConfig())
        except json_format.ParseError as e:
            raise ServingError(f"{self.name}: invalid Triton model config: {e}") from e

    def to_pbtxt(self) -> str:
        text = text_format.MessageToString(self.to_proto()) + "\n"
        parse_pbtxt(text)  # validated by parsing back, as the server will
        return text


def parse_pbtxt(text: str) -> model_config_pb2.ModelConfig:
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ServingError(f"invalid Triton model config: {e}") from e


def config_to_dict(config: model_config_pb2.ModelConfig) -> dict:
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def export_parameters(metadata: dict[str, object]) -> dict[str, str]:
    """Export metadata (weights source, preprocessing …) as `cnn_deploy.*` config parameters."""
    return {PARAM_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
