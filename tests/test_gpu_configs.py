"""The GPU configs' TensorRT options, set through Triton's protobuf: engine and
timing caches on the volume, FP16/INT8, builder level, CUDA graphs behind a switch, one explicit
profile over the dynamic batcher's range, and a warm-up that builds the engines before READY.

Golden files: tests/data/configs/resnet50.gpu.pbtxt (checked in tests/test_serving_config.py) and
resnet50_int8.gpu.pbtxt (here); regenerate with `UPDATE_GOLDEN_CONFIGS=1 python -m pytest
tests/test_serving_config.py tests/test_gpu_configs.py`."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from cnn_deploy_core.golden import GOLDEN_PARAM, INT8_CROSS_RUNTIME, TOLERANCE_PARAM
from cnn_deploy_core.registry import GpuSizing, get
from serving import ServingError
from serving.config import TensorRTAccelerator, TensorRTProfile, parse_pbtxt
from serving.repository import (
    CpuPlan,
    gpu_config,
    int8_cpu_config,
    int8_gpu_config,
    served_versions,
    trt_config,
)
from tests.test_serving_config import GOLDEN_DIR, _version_dir

REGENERATE = "UPDATE_GOLDEN_CONFIGS=1 python -m pytest tests/test_serving_config.py tests/test_gpu_configs.py"


def _served(tmp_path):
    _version_dir(tmp_path / "resnet50", 1)
    return served_versions(tmp_path / "resnet50")


def _tensorrt(config) -> dict[str, str]:
    (acc,) = parse_pbtxt(config.to_pbtxt()).optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    return dict(acc.parameters)


def test_the_int8_gpu_config_matches_its_golden_file(tmp_path):
    text = int8_gpu_config(get("resnet50"), _served(tmp_path)).to_pbtxt()
    golden = GOLDEN_DIR / "resnet50_int8.gpu.pbtxt"
    if os.environ.get("UPDATE_GOLDEN_CONFIGS"):
        golden.write_text(text)
    assert golden.is_file(), f"missing {golden}; regenerate with: {REGENERATE}"
    assert text == golden.read_text(), f"{golden.name} changed; review the diff, then: {REGENERATE}"


def test_gpu_config_caches_engines_and_timings_on_the_volume(tmp_path):
    params = _tensorrt(gpu_config(get("resnet50"), _served(tmp_path)))
    assert (
        params["trt_engine_cache_enable"] == "1" and params["trt_engine_cache_path"] == "/trt-cache/resnet50"
    )
    assert params["trt_timing_cache_enable"] == "1" and params["trt_timing_cache_path"] == "/trt-cache/timing"
    assert params["precision_mode"] == "FP16" and params["trt_builder_optimization_level"] == "3"


def test_the_profile_covers_every_batch_the_dynamic_batcher_can_form(tmp_path):
    arch = get("resnet50")
    config = gpu_config(arch, _served(tmp_path))
    params = _tensorrt(config)
    assert params["trt_profile_min_shapes"] == "input:1x3x224x224"
    assert params["trt_profile_max_shapes"] == f"input:{arch.gpu.max_batch_size}x3x224x224"
    # tuned for the smallest preferred batch, as the _trt plan's engine.json
    assert params["trt_profile_opt_shapes"] == f"input:{arch.gpu.opt_batch_size}x3x224x224"
    # the warm-up runs the smallest and the largest batch: the engine exists before READY
    assert [w.batch_size for w in parse_pbtxt(config.to_pbtxt()).model_warmup] == [1, arch.gpu.max_batch_size]


def test_gpu_configs_are_sized_for_a_large_gpu_from_the_registry(tmp_path):
    served = _served(tmp_path)
    for build in (gpu_config, int8_gpu_config):
        parsed = parse_pbtxt(build(get("resnet50"), served).to_pbtxt())
        assert parsed.max_batch_size == 128 and parsed.instance_group[0].count == 2
        assert list(parsed.dynamic_batching.preferred_batch_size) == [64, 128]
    # the CPU configs keep theirs
    assert get("resnet50").max_batch_size == 32
    light, heavy = get("resnet18").gpu, get("vgg16").gpu
    assert light.max_batch_size > get("resnet50").gpu.max_batch_size > heavy.max_batch_size


def test_gpu_sizing_checks_itself():
    with pytest.raises(ValueError, match=r"must rise within 1\.\.64"):
        GpuSizing(max_batch_size=64, preferred_batch_sizes=(32, 128))
    with pytest.raises(ValueError, match="must rise"):
        GpuSizing(max_batch_size=64, preferred_batch_sizes=(64, 32))
    with pytest.raises(ValueError, match="instances >= 1"):
        GpuSizing(instances=0)


def test_cuda_graphs_are_off_unless_switched_on(tmp_path):
    served = _served(tmp_path)
    assert _tensorrt(gpu_config(get("resnet50"), served))["trt_cuda_graph_enable"] == "0"
    assert _tensorrt(gpu_config(get("resnet50"), served, cuda_graph=True))["trt_cuda_graph_enable"] == "1"


def test_the_int8_gpu_config_is_explicit_int8_held_to_the_cross_runtime_tolerance(tmp_path):
    served = _served(tmp_path)
    config = int8_gpu_config(get("resnet50"), served)
    params = _tensorrt(config)
    assert (
        params["precision_mode"] == "INT8" and params["trt_engine_cache_path"] == "/trt-cache/resnet50_int8"
    )
    assert "int8_calibration_table_name" not in params  # QDQ graph: explicit quantization
    parsed = parse_pbtxt(config.to_pbtxt())
    assert parsed.parameters[TOLERANCE_PARAM].string_value == INT8_CROSS_RUNTIME
    assert parsed.default_model_filename == "model.int8.s8s8.onnx"  # the signed, symmetric file
    # verified against that file's own golden set, not the cpu config's (UINT8) one
    assert parsed.parameters[GOLDEN_PARAM].string_value == "golden.int8.s8s8.npz"
    cpu = parse_pbtxt(int8_cpu_config(get("resnet50"), served, CpuPlan()).to_pbtxt())
    assert cpu.default_model_filename == "model.int8.onnx"
    assert cpu.parameters[GOLDEN_PARAM].string_value == "golden.npz"


def test_the_trt_plan_is_int8_when_the_export_has_tensorrts_graph(tmp_path):
    (version,) = _served(tmp_path)
    fp16 = parse_pbtxt(trt_config(get("resnet50"), [version]).to_pbtxt())
    assert fp16.parameters["cnn_deploy.precision"].string_value == "fp16"
    assert TOLERANCE_PARAM not in fp16.parameters
    s8s8 = replace(version, files=(*version.files, "model.int8.s8s8.onnx", "golden.int8.s8s8.npz"))
    int8 = parse_pbtxt(trt_config(get("resnet50"), [s8s8]).to_pbtxt())
    assert int8.parameters["cnn_deploy.precision"].string_value == "int8"
    # clients verify the plan against the fp32 golden set's INT8 bound
    assert int8.parameters[TOLERANCE_PARAM].string_value == INT8_CROSS_RUNTIME
    assert int8.max_batch_size == get("resnet50").gpu.max_batch_size


def test_tensorrt_options_check_themselves():
    with pytest.raises(ServingError, match="precision"):
        TensorRTAccelerator(precision="FP8")
    with pytest.raises(ServingError, match="optimization level"):
        TensorRTAccelerator(builder_optimization_level=7)
    with pytest.raises(ServingError, match=r"opt batch 64 outside 1\.\.32"):
        TensorRTProfile("input", (3, 224, 224), max_batch=32, opt_batch=64)
