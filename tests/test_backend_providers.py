"""Our ONNX Runtime backend refuses a GPU instance that would run elsewhere.

Triton itself refuses KIND_GPU on a machine without a GPU ("has kind KIND_GPU but no GPUs are
available"), so these tests drive the backend's own code: the pure provider check, and the real
`initialize` with the real (CPU) onnxruntime and a real exported model, with Triton's Python
utilities replaced by a stand-in (they only exist inside the backend stub).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from serving.triton import BACKEND_SOURCE
from tests.conftest import _has_gpu

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


class _ModelException(Exception):
    pass


@pytest.fixture(scope="module")
def backend():
    """serving/triton_side/onnxruntime/model.py, imported beside a stand-in triton_python_backend_utils."""
    logged: list[tuple[str, str]] = []
    fake = types.ModuleType("triton_python_backend_utils")
    fake.TritonModelException = _ModelException
    fake.Logger = types.SimpleNamespace(
        log_info=lambda m: logged.append(("info", m)), log_warn=lambda m: logged.append(("warn", m))
    )
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = fake
    try:
        spec = importlib.util.spec_from_file_location("cnn_deploy_ort_backend", BACKEND_SOURCE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = saved
    module.logged = logged
    return module


def test_a_gpu_instance_asks_for_cuda_and_tensorrt_when_configured(backend):
    assert backend.requested_providers("GPU", True) == [TRT, CUDA, CPU]
    assert backend.requested_providers("GPU", False) == [CUDA, CPU]
    assert backend.requested_providers("CPU", True) == [CPU]


def test_a_gpu_instance_without_cuda_is_refused_naming_the_provider_and_the_fix(backend):
    reason = backend.check_providers([CUDA, CPU], [CPU], "GPU", allow_fallback=False)
    assert "ONNX Runtime has no CUDAExecutionProvider" in reason
    assert "would run on CPUExecutionProvider" in reason
    assert "install the gpu extra" in reason and "allow_provider_fallback" in reason
    both = backend.check_providers([TRT, CUDA, CPU], [CPU], "GPU", allow_fallback=False)
    assert "has no CUDAExecutionProvider" in both  # the root cause, not TensorRT


def test_a_missing_tensorrt_is_refused_too_not_dropped_silently(backend):
    reason = backend.check_providers([TRT, CUDA, CPU], [CUDA, CPU], "GPU", allow_fallback=False)
    assert "no TensorrtExecutionProvider" in reason and "would run on CUDAExecutionProvider" in reason
    assert "TensorRT libraries" in reason


def test_the_fallback_parameter_allows_it_and_a_complete_list_passes(backend):
    assert backend.check_providers([TRT, CUDA, CPU], [CPU], "GPU", allow_fallback=True) is None
    assert backend.check_providers([TRT, CUDA, CPU], [TRT, CUDA, CPU], "GPU", allow_fallback=False) is None
    assert backend.check_providers([CPU], [CPU], "CPU", allow_fallback=False) is None


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A one-node ONNX model in a version folder: the provider check does not care what it computes."""
    import onnx
    from onnx import TensorProto, helper

    root = tmp_path_factory.mktemp("tiny")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "1").mkdir()
    onnx.save(model, str(root / "1" / "model.onnx"))
    return root


def _args(root: Path, kind: str, **parameters: str) -> dict:
    """What Triton hands the backend for a GPU config with ONNX Runtime's TensorRT accelerator."""
    from google.protobuf import json_format

    from serving.config import ModelConfig, Tensor, TensorRTAccelerator

    config = ModelConfig(
        name="tiny",
        inputs=(Tensor("input", (4,)),),
        outputs=(Tensor("logits", (4,)),),
        max_batch_size=8,
        backend="onnxruntime",
        instance_kind=f"KIND_{kind}",
        accelerator=TensorRTAccelerator(precision="FP16", cache_path=str(root / "trt-cache")),
        parameters=dict(parameters),
    )
    as_json = json_format.MessageToDict(config.to_proto(), preserving_proto_field_name=True)
    return {
        "model_config": json.dumps(as_json),
        "model_name": "tiny",
        "model_instance_kind": kind,
        "model_instance_device_id": "0",
        "model_repository": str(root),
        "model_version": "1",
    }


@pytest.mark.skipif(_has_gpu(), reason="this machine's onnxruntime has CUDA")
def test_the_backend_refuses_to_load_a_gpu_instance_with_a_cpu_onnxruntime(backend, tiny_model):
    model = backend.TritonPythonModel()
    with pytest.raises(
        _ModelException, match="tiny: KIND_GPU instance refused: ONNX Runtime has no CUDA"
    ) as e:
        model.initialize(_args(tiny_model, "GPU"))
    assert "Fix: " in str(e.value) and not hasattr(model, "session")


@pytest.mark.skipif(_has_gpu(), reason="this machine's onnxruntime has CUDA")
def test_with_fallback_allowed_a_gpu_instance_loads_on_cpu_and_says_so(backend, tiny_model):
    model = backend.TritonPythonModel()
    model.initialize(_args(tiny_model, "GPU", allow_provider_fallback="true"))
    assert model.providers == [CPU]
    warnings = [m for level, m in backend.logged if level == "warn"]
    assert any("tiny: KIND_GPU instance asked for" in m and "serving on ['CPUExecutionProvider']" in m
               for m in warnings)  # fmt: skip
    assert any(m.startswith("tiny: ONNX Runtime ") and " on ['CPUExecutionProvider']" in m
               for level, m in backend.logged if level == "info")  # fmt: skip


def test_a_cpu_instance_of_the_same_config_loads_on_cpu_without_a_warning(backend, tiny_model):
    backend.logged.clear()
    model = backend.TritonPythonModel()
    model.initialize(_args(tiny_model, "CPU"))
    assert model.providers == [CPU] and not [m for level, m in backend.logged if level == "warn"]


def test_the_backend_maps_the_generated_tensorrt_options_like_the_native_one(backend, tmp_path):
    """Every TensorRT option the GPU config sets reaches the TensorRT EP with the right type."""
    from cnn_deploy_core.registry import get
    from serving.repository.configs import tensorrt_accelerator

    accelerator = tensorrt_accelerator(get("resnet18"), "FP16", "resnet18", cuda_graph=True)
    params = accelerator.to_dict()["gpu_execution_accelerator"][0]["parameters"]
    params.update(trt_engine_cache_path=str(tmp_path / "engines"), trt_timing_cache_path=str(tmp_path / "t"))
    config = {"optimization": {"execution_accelerators": accelerator.to_dict()}}
    config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]["parameters"] = params
    options = backend._tensorrt_options(config, "resnet18")
    assert options["trt_fp16_enable"] is True and options["trt_int8_enable"] is False
    assert options["trt_engine_cache_enable"] is True and options["trt_engine_cache_path"] == str(
        tmp_path / "engines"
    )
    assert options["trt_timing_cache_enable"] is True and options["trt_timing_cache_path"] == str(
        tmp_path / "t"
    )
    assert options["trt_cuda_graph_enable"] is True and options["trt_builder_optimization_level"] == 3
    assert options["trt_profile_min_shapes"] == "input:1x3x224x224"
    # One profile over the GPU batcher's range, tuned for its smallest preferred batch (GpuSizing).
    sizing = get("resnet18").gpu
    assert options["trt_profile_max_shapes"] == f"input:{sizing.max_batch_size}x3x224x224"
    assert options["trt_profile_opt_shapes"] == f"input:{sizing.opt_batch_size}x3x224x224"
