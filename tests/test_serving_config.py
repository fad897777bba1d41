"""Triton configs: generated through Triton's protobuf, checked against golden files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from export.registry import get
from serving import ServingError
from serving.config import ModelConfig, Tensor, parse_pbtxt
from serving.repository import CpuPlan, cpu_config, gpu_config, place_models, trt_config, versions

GOLDEN_DIR = Path(__file__).parent / "data" / "configs"
REGENERATE = "UPDATE_GOLDEN_CONFIGS=1 python -m pytest tests/test_serving_config.py"
REPORT = {  # what export.json says, trimmed to the fields the configs use
    "architecture": "resnet50",
    "weights_source": "imagenet:ResNet50_Weights.IMAGENET1K_V2",
    "weights_random": False,
    "preprocessing": {
        "resize": 232,
        "crop": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
    },
    "cnn_deploy_version": "0.1.0",
    "metadata": {},
}
SHA = "0" * 64


def _configs() -> dict[str, ModelConfig]:
    arch = get("resnet50")
    return {
        "resnet50.cpu.pbtxt": cpu_config(arch, REPORT, SHA, CpuPlan(instances=1, threads=2)),
        "resnet50.gpu.pbtxt": gpu_config(arch, REPORT, SHA),
        "resnet50_trt.gpu.pbtxt": trt_config(arch, REPORT, SHA),
    }


@pytest.mark.parametrize("filename", sorted(_configs()))
def test_generated_config_matches_golden_file(filename):
    text = _configs()[filename].to_pbtxt()
    golden = GOLDEN_DIR / filename
    if os.environ.get("UPDATE_GOLDEN_CONFIGS"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"missing {golden}; regenerate with: {REGENERATE}"
    assert text == golden.read_text(), (
        f"{filename} changed; review the diff, then regenerate with: {REGENERATE}"
    )


def test_cpu_config_has_everything_the_issue_asks_for():
    cfg = parse_pbtxt(_configs()["resnet50.cpu.pbtxt"].to_pbtxt())
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == get("resnet50").max_batch_size
    assert cfg.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert cfg.output[0].label_filename == "labels.txt"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert not cfg.dynamic_batching.preferred_batch_size
    assert [w.batch_size for w in cfg.model_warmup] == [1, cfg.max_batch_size]
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"
    assert cfg.parameters["cnn_deploy.weights_source"].string_value.startswith("imagenet:")
    assert json.loads(cfg.parameters["cnn_deploy.preprocessing"].string_value)["resize"] == 232
    assert cfg.version_policy.latest.num_versions == 2


def test_gpu_config_uses_tensorrt_fp16_with_engine_cache_on_the_fp16_model():
    cfg = parse_pbtxt(_configs()["resnet50.gpu.pbtxt"].to_pbtxt())
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert acc.parameters["trt_engine_cache_enable"] == "1"
    assert cfg.default_model_filename == "model.fp16.onnx"
    assert cfg.parameters["cnn_deploy.precision"].string_value == "fp16"


def test_trt_variant_is_a_tensorrt_plan_with_the_same_signature():
    cfg = parse_pbtxt(_configs()["resnet50_trt.gpu.pbtxt"].to_pbtxt())
    assert cfg.name == "resnet50_trt" and cfg.platform == "tensorrt_plan" and not cfg.backend
    assert cfg.input[0].name == "input" and cfg.output[0].name == "logits"


def test_config_rejects_a_field_triton_does_not_know():
    class Bad(ModelConfig):
        def to_dict(self):
            return {**super().to_dict(), "max_batch": 4}

    bad = Bad(
        name="x",
        backend="onnxruntime",
        inputs=(Tensor("in", (3,)),),
        outputs=(Tensor("out", (3,)),),
        max_batch_size=4,
    )
    with pytest.raises(ServingError, match="invalid Triton model config"):
        bad.to_pbtxt()


def test_config_checks_itself_on_creation():
    with pytest.raises(ServingError, match="exactly one of backend or platform"):
        ModelConfig(name="x", inputs=(), outputs=(), max_batch_size=4)
    with pytest.raises(ServingError, match="warmup batch sizes"):
        ModelConfig(
            name="x", backend="onnxruntime", inputs=(), outputs=(), max_batch_size=4, warmup_batch_sizes=(8,)
        )


# --- repository placement: versions for rollback --------------------------------------------


def _fake_export(models: Path, name: str, payload: bytes) -> None:
    """An export directory as `export build` leaves it (the file contents don't matter here)."""
    d = models / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(payload)
    (d / "model.fp16.onnx").write_bytes(payload[::-1])
    (d / "golden.npz").write_bytes(b"golden")
    (d / "labels.txt").write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    (d / "export.json").write_text(json.dumps({**REPORT, "architecture": name}))


def test_reexport_adds_a_version_and_identical_export_does_not(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _fake_export(models, "resnet50", b"first export")
    (p1,) = place_models([get("resnet50")], models_dir=models, repository=repo)
    (again,) = place_models([get("resnet50")], models_dir=models, repository=repo)
    _fake_export(models, "resnet50", b"second export")
    (p2,) = place_models([get("resnet50")], models_dir=models, repository=repo)
    assert (p1.version, p1.new_version) == (1, True)
    assert (again.version, again.new_version) == (1, False)
    assert (p2.version, p2.new_version) == (2, True)
    assert versions(repo / "resnet50") == [1, 2]
    assert (repo / "resnet50" / "1" / "model.onnx").read_bytes() == b"first export"  # kept for rollback
    assert not [p for p in (repo / "resnet50").iterdir() if p.name.startswith(".")]  # no staging left


def test_repository_with_tensorrt_writes_engine_recipe(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _fake_export(models, "resnet50", b"model")
    place_models([get("resnet50")], models_dir=models, repository=repo, tensorrt=True)
    recipe = json.loads((repo / "resnet50_trt" / "engine.json").read_text())
    assert recipe["source"] == "../resnet50/1/model.onnx" and recipe["max_batch_size"] == 32
    assert (repo / "resnet50_trt" / "labels.txt").is_file()
    assert (
        parse_pbtxt((repo / "resnet50_trt" / "configs" / "gpu.pbtxt").read_text()).platform == "tensorrt_plan"
    )


def test_repository_without_export_says_how_to_make_one(tmp_path):
    with pytest.raises(ServingError, match="python -m export build alexnet"):
        place_models([get("alexnet")], models_dir=tmp_path / "models", repository=tmp_path / "repo")
