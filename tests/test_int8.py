"""INT8: static quantization with an accuracy guard that can fail, served as <name>_int8."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnn_deploy_core.golden import INT8_CROSS_RUNTIME, GoldenSet
from cnn_deploy_core.preprocess import Preprocessing
from cnn_deploy_core.registry import get
from export import ExportError
from export import int8 as int8_module
from export.pipeline import ExportJob, run_export
from serving.config import parse_pbtxt
from tests.conftest import INT8_ARCH, run_cli


def test_int8_export_passes_its_guard_with_its_own_golden_outputs(models_dir):
    out = models_dir / INT8_ARCH
    report = json.loads((out / "export.json").read_text())
    steps = {s["step"]: s["status"] for s in report["steps"]}
    assert steps["int8"] == "OK"
    accuracy = report["int8"]["accuracy"]
    guard = report["int8"]["guard"]
    assert accuracy["top1_agreement"] >= guard["min_top1"] and accuracy["min_cosine"] >= guard["min_cosine"]
    assert report["int8"]["calibration"]["seeded_tensors"] > 0
    golden = GoldenSet.load(out / "golden.int8.npz")
    assert golden.outputs.shape == GoldenSet.load(out / "golden.npz").outputs.shape
    # "int8": the ONNX Runtime kernels that made these outputs; "int8_cross_runtime" (TensorRT): 2×
    # how much the same QDQ graph differs when ORT runs it unfused, in float
    assert set(golden.tolerances) == {"int8", INT8_CROSS_RUNTIME}
    cross = golden.tolerances[INT8_CROSS_RUNTIME]
    assert cross["measured_rel_err"] > 0 and cross["rtol"] == max(2 * cross["measured_rel_err"], 0.02)


def test_int8_is_served_as_its_own_model_on_the_cpu_and_gpu_configs(repository):
    int8 = repository / f"{INT8_ARCH}_int8"
    cpu = parse_pbtxt((int8 / "configs" / "cpu.pbtxt").read_text())
    gpu = parse_pbtxt((int8 / "configs" / "gpu.pbtxt").read_text())
    assert cpu.default_model_filename == gpu.default_model_filename == "model.int8.onnx"
    assert cpu.parameters["cnn_deploy.precision"].string_value == "int8"
    (accelerator,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["precision_mode"] == "INT8"
    assert (int8 / "1" / "model.int8.onnx").is_file() and (int8 / "1" / "golden.npz").is_file()


@pytest.mark.integration
def test_clients_verify_checks_the_int8_model(triton, repository):
    result = run_cli("clients", "verify", "--url", triton.grpc_url, "--repository", str(repository),
                     "--model", f"{INT8_ARCH}_int8", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (verdict,) = json.loads(result.stdout)
    assert verdict["passed"] and verdict["precision"] == "int8"


def test_a_broken_calibration_fails_the_guard_and_leaves_no_int8_behind(tmp_path, monkeypatch):
    real = int8_module.calibration_set

    def constant(spec: Preprocessing, **kwargs):  # every calibration image the same grey square
        grey = np.asarray(Image.new("RGB", (spec.crop, spec.crop), (128, 128, 128)), dtype=np.float32)
        calibration = real(spec, **kwargs)
        inputs = np.broadcast_to((grey / 255.0).transpose(2, 0, 1)[None], calibration.inputs.shape)
        return int8_module.Calibration(np.ascontiguousarray(inputs, dtype=np.float32), calibration.described)

    monkeypatch.setattr(int8_module, "calibration_set", constant)
    (tmp_path / "out").mkdir()
    job = ExportJob(get("resnet18"), tmp_path / "out", weights="random", fp16=False, int8=True)
    run_export(job)
    assert job.published and not job.succeeded
    assert job.error.startswith("int8: INT8 below the accuracy guard:")
    assert "top-1 agreement" in job.error and "held-out inputs" in job.error
    assert not (tmp_path / "out" / "resnet18" / "model.int8.onnx").exists()
    assert not (tmp_path / "out" / "resnet18" / "golden.int8.npz").exists()
    assert (tmp_path / "out" / "resnet18" / "model.onnx").is_file()


def test_a_calibration_folder_adds_its_images(tmp_path):
    spec = Preprocessing()
    base = int8_module.calibration_set(spec)
    for i in range(2):
        Image.new("RGB", (300, 200), (40 * i, 90, 200)).save(tmp_path / f"extra{i}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    more = int8_module.calibration_set(spec, folder=tmp_path)
    assert len(more.inputs) == len(base.inputs) + 2 and more.described["user_images"] == [
        "extra0.jpg",
        "extra1.jpg",
    ]
    with pytest.raises(ExportError, match="holds no image"):
        int8_module.calibration_set(
            spec, folder=tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None
        )
