"""Triton configs: generated through Triton's protobuf, checked against golden files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from cnn_deploy_core.registry import get
from serving import ServingError
from serving.config import ModelConfig, Tensor, parse_pbtxt
from serving.repository import (
    CpuPlan,
    ModelState,
    cpu_config,
    gpu_config,
    place_models,
    read_version,
    rollback,
    served_versions,
    trt_config,
    versions,
)

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


def _version_dir(root: Path, number: int, payload: bytes = b"model", report: dict = REPORT) -> Path:
    """A repository version directory as `serving repo` writes it (file contents don't matter here)."""
    d = root / str(number)
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(payload)
    (d / "model.fp16.onnx").write_bytes(payload[::-1])
    (d / "golden.npz").write_bytes(b"golden")
    (d / "labels.txt").write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    (d / "export.json").write_text(json.dumps(report))
    return d


def _configs(tmp_path: Path) -> dict[str, ModelConfig]:
    model_dir = tmp_path / "resnet50"
    _version_dir(model_dir, 1)
    served = served_versions(model_dir)
    arch = get("resnet50")
    return {
        "resnet50.cpu.pbtxt": cpu_config(arch, served, CpuPlan(instances=1, threads=2)),
        "resnet50.gpu.pbtxt": gpu_config(arch, served),
        "resnet50_trt.gpu.pbtxt": trt_config(arch, served),
    }


@pytest.mark.parametrize("filename", ["resnet50.cpu.pbtxt", "resnet50.gpu.pbtxt", "resnet50_trt.gpu.pbtxt"])
def test_generated_config_matches_golden_file(filename, tmp_path):
    text = _configs(tmp_path)[filename].to_pbtxt()
    golden = GOLDEN_DIR / filename
    if os.environ.get("UPDATE_GOLDEN_CONFIGS"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"missing {golden}; regenerate with: {REGENERATE}"
    assert text == golden.read_text(), (
        f"{filename} changed; review the diff, then regenerate with: {REGENERATE}"
    )


def test_cpu_config_has_everything_the_issue_asks_for(tmp_path):
    cfg = parse_pbtxt(_configs(tmp_path)["resnet50.cpu.pbtxt"].to_pbtxt())
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == get("resnet50").max_batch_size
    assert cfg.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert cfg.output[0].label_filename == "labels.txt"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.HasField("dynamic_batching")  # no delay on the CPU: a batch is what queued during a run
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert not cfg.dynamic_batching.preferred_batch_size
    assert [w.batch_size for w in cfg.model_warmup] == [1, cfg.max_batch_size]
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"
    assert cfg.parameters["cnn_deploy.weights_source"].string_value.startswith("imagenet:")
    assert json.loads(cfg.parameters["cnn_deploy.preprocessing"].string_value)["resize"] == 232
    assert list(cfg.version_policy.specific.versions) == [1]
    per_version = json.loads(cfg.parameters["cnn_deploy.versions"].string_value)
    assert per_version["1"]["weights_source"].startswith("imagenet:")


def test_gpu_config_uses_tensorrt_fp16_with_engine_cache_on_the_fp16_model(tmp_path):
    cfg = parse_pbtxt(_configs(tmp_path)["resnet50.gpu.pbtxt"].to_pbtxt())
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000  # a bigger batch is nearly free there
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert acc.parameters["trt_engine_cache_enable"] == "1"
    assert cfg.default_model_filename == "model.fp16.onnx"
    assert cfg.parameters["cnn_deploy.precision"].string_value == "fp16"


def test_trt_variant_is_a_tensorrt_plan_with_the_same_signature(tmp_path):
    cfg = parse_pbtxt(_configs(tmp_path)["resnet50_trt.gpu.pbtxt"].to_pbtxt())
    assert cfg.name == "resnet50_trt" and cfg.platform == "tensorrt_plan" and not cfg.backend
    assert cfg.input[0].name == "input" and cfg.output[0].name == "logits"
    # pinned like every variant: a rollback reaches the plan too (Triton's default is "latest")
    assert list(cfg.version_policy.specific.versions) == [1]


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


# --- repository placement: versions that describe themselves, pruning, rollback ---------------


def _fake_export(models: Path, name: str, payload: bytes, **report) -> None:
    """An export directory as `export build` leaves it (the file contents don't matter here)."""
    d = models / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(payload)
    (d / "model.fp16.onnx").write_bytes(payload[::-1])
    (d / "golden.npz").write_bytes(report.pop("golden", b"golden"))
    labels = report.pop("labels", [f"class {i}" for i in range(1000)])
    (d / "labels.txt").write_text("\n".join(labels) + "\n")
    (d / "export.json").write_text(json.dumps({**REPORT, "architecture": name, **report}))


def _place(models: Path, repo: Path, **kwargs):
    (placed,) = place_models([get("resnet50")], models_dir=models, repository=repo, identity=False, **kwargs)
    return placed


def _cpu(repo: Path):
    return parse_pbtxt((repo / "resnet50" / "configs" / "cpu.pbtxt").read_text())


def test_reexport_adds_a_version_and_identical_export_does_not(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _fake_export(models, "resnet50", b"first export")
    p1 = _place(models, repo)
    again = _place(models, repo)
    _fake_export(models, "resnet50", b"second export")
    p2 = _place(models, repo)
    assert (p1.version, p1.new_version) == (1, True)
    assert (again.version, again.new_version) == (1, False)
    assert (p2.version, p2.new_version) == (2, True)
    assert versions(repo / "resnet50") == [1, 2]
    assert (repo / "resnet50" / "1" / "model.onnx").read_bytes() == b"first export"  # kept for rollback
    assert not [p for p in (repo / "resnet50").iterdir() if p.name.startswith(".")]  # no staging left


def test_a_re_export_that_differs_only_in_step_durations_is_the_same_version(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _fake_export(models, "resnet50", b"model", steps=[{"step": "export", "status": "OK", "seconds": 1.5}])
    _place(models, repo)
    _fake_export(models, "resnet50", b"model", steps=[{"step": "export", "status": "OK", "seconds": 9.0}])
    assert _place(models, repo).new_version is False
    _fake_export(models, "resnet50", b"model", steps=[{"step": "export", "status": "FAIL", "seconds": 9.0}])
    assert _place(models, repo).new_version is True


def test_reuse_compares_every_file_not_only_the_model(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _fake_export(models, "resnet50", b"same model")
    _place(models, repo)
    _fake_export(models, "resnet50", b"same model", golden=b"a new golden set")
    placed = _place(models, repo)
    assert (placed.version, placed.new_version) == (2, True)
    assert (repo / "resnet50" / "2" / "golden.npz").read_bytes() == b"a new golden set"


def test_versions_that_agree_are_served_together_each_with_its_own_provenance(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _fake_export(models, "resnet50", b"v1", weights_source="random(seed=0)", weights_random=True)
    _place(models, repo)
    _fake_export(models, "resnet50", b"v2")
    placed = _place(models, repo)
    cfg = _cpu(repo)
    assert placed.served == [2, 1] and list(cfg.version_policy.specific.versions) == [1, 2]
    per_version = json.loads(cfg.parameters["cnn_deploy.versions"].string_value)
    assert (
        per_version["1"]["weights_source"] == "random(seed=0)"
        and per_version["1"]["weights_random"] == "true"
    )
    assert per_version["2"]["weights_source"].startswith("imagenet:")
    assert per_version["1"]["model_sha256"] != per_version["2"]["model_sha256"]
    assert cfg.parameters["cnn_deploy.weights_source"].string_value.startswith("imagenet:")  # the default


@pytest.mark.parametrize(
    "change",
    [
        {"labels": [f"other {i}" for i in range(1000)]},
        {"preprocessing": {**REPORT["preprocessing"], "resize": 256}},
    ],
    ids=["labels", "preprocessing"],
)
def test_versions_that_differ_in_labels_or_preprocessing_are_not_served_together(tmp_path, change):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _fake_export(models, "resnet50", b"v1")
    _place(models, repo)
    _fake_export(models, "resnet50", b"v2", **change)
    placed = _place(models, repo)
    assert placed.served == [2] and list(_cpu(repo).version_policy.specific.versions) == [2]
    assert (repo / "resnet50" / "labels.txt").read_bytes() == (
        repo / "resnet50" / "2" / "labels.txt"
    ).read_bytes()


def test_a_version_without_the_fp16_file_is_not_served_beside_one_with_it(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _fake_export(models, "resnet50", b"v1")
    (models / "resnet50" / "model.fp16.onnx").unlink()  # exported with --no-fp16
    _place(models, repo)
    assert not (repo / "resnet50" / "configs" / "gpu.pbtxt").exists()
    _fake_export(models, "resnet50", b"v2")
    placed = _place(models, repo)
    gpu = parse_pbtxt((repo / "resnet50" / "configs" / "gpu.pbtxt").read_text())
    assert placed.served == [2] and list(gpu.version_policy.specific.versions) == [2]


def test_keep_prunes_old_versions_but_never_a_served_one(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    for i in range(4):
        _fake_export(models, "resnet50", f"export {i}".encode())
        placed = _place(models, repo, keep=None)
    assert versions(repo / "resnet50") == [1, 2, 3, 4]
    placed = _place(models, repo, keep=1)  # the same export again: version 4, served with 3
    assert placed.pruned == [1, 2]
    assert versions(repo / "resnet50") == sorted(placed.served)  # the served ones survive keep=1
    assert not [p for p in (repo / "resnet50").iterdir() if p.name.startswith(".")]


def test_rollback_serves_the_previous_version_alone_until_the_next_placement(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _fake_export(models, "resnet50", b"v1", labels=[f"old {i}" for i in range(1000)])
    _place(models, repo)
    _fake_export(models, "resnet50", b"v2")
    _place(models, repo)
    assert rollback(get("resnet50"), repo) == (2, 1)
    assert list(_cpu(repo).version_policy.specific.versions) == [1]
    assert (repo / "resnet50" / "labels.txt").read_text().startswith("old 0")  # v1's own labels
    assert ModelState.load(repo / "resnet50").pinned == 1
    with pytest.raises(ServingError, match="oldest there is"):
        rollback(get("resnet50"), repo)
    with pytest.raises(ServingError, match="no version 7"):
        rollback(get("resnet50"), repo, to=7)
    placed = _place(models, repo)  # placing an export rolls forward again
    assert placed.served == [2] and ModelState.load(repo / "resnet50").pinned is None


def test_read_version_refuses_an_incomplete_directory(tmp_path):
    (tmp_path / "resnet50" / "3").mkdir(parents=True)
    with pytest.raises(ServingError, match="incomplete"):
        read_version(tmp_path / "resnet50", 3)


def test_repository_with_tensorrt_writes_engine_recipe(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _fake_export(models, "resnet50", b"model")
    _place(models, repo, tensorrt=True)
    recipe = json.loads((repo / "resnet50_trt" / "engine.json").read_text())
    assert recipe["source"] == "../resnet50/1/model.onnx" and recipe["max_batch_size"] == 128  # the GPU's
    assert (repo / "resnet50_trt" / "labels.txt").is_file()
    assert (
        parse_pbtxt((repo / "resnet50_trt" / "configs" / "gpu.pbtxt").read_text()).platform == "tensorrt_plan"
    )


def test_repository_without_export_says_how_to_make_one(tmp_path):
    with pytest.raises(ServingError, match="python -m export build alexnet"):
        place_models([get("alexnet")], models_dir=tmp_path / "models", repository=tmp_path / "repo")
