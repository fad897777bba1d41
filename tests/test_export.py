"""The export pipeline on real models (random weights), and its errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from cnn_deploy_core.golden import GoldenSet
from cnn_deploy_core.images import all_photos
from cnn_deploy_core.metrics import sensitivity
from cnn_deploy_core.registry import Tolerance, get
from cnn_deploy_core.steps import Status
from export.models import load_model, preprocessing_for
from export.pipeline import ExportJob, run_export
from export.random_init import data_dependent_init
from export.verify import GOLDEN_SEEDED_ROWS, session
from tests.conftest import CI_ARCHS, INT8_ARCH, run_cli


@pytest.mark.parametrize("name", CI_ARCHS)
def test_export_writes_model_fp16_golden_labels_and_report(models_dir, name):
    out = models_dir / name
    int8 = ["golden.int8.npz", "model.int8.onnx", "golden.int8.s8s8.npz", "model.int8.s8s8.onnx"]
    int8 = int8 if name == INT8_ARCH else []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["export.json", "golden.npz", "labels.txt", "model.fp16.onnx", "model.onnx", *int8]
    )
    report = json.loads((out / "export.json").read_text())
    steps = {s["step"]: s["status"] for s in report["steps"]}  # publish writes the report itself
    assert list(steps) == ["weights", "export", "optimize", "verify", "fp16", "int8", "golden"]
    assert steps.pop("int8") == ("OK" if int8 else "SKIPPED") and set(steps.values()) == {"OK"}
    assert len((out / "labels.txt").read_text().splitlines()) == 1000


@pytest.mark.parametrize("name", CI_ARCHS)
def test_export_verifies_batch_1_2_max_and_photos_in_both_precisions(models_dir, name):
    report = json.loads((models_dir / name / "export.json").read_text())
    expected = sorted({1, 2, get(name).max_batch_size})
    for precision in ("fp32", "fp16"):
        cases = report["verification"][precision]
        assert [c["batch"] for c in cases if c["case"].startswith("random/")] == expected
        assert any(c["case"].startswith("photos/") for c in cases)
        assert all(c["passed"] for c in cases), cases


@pytest.mark.parametrize("name", CI_ARCHS)
def test_exported_graph_is_optimized_with_dynamic_batch(models_dir, name):
    model = onnx.load(str(models_dir / name / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"BatchNormalization", "Identity", "Dropout", "Shape", "Expand", "CastLike"}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    report = json.loads((models_dir / name / "export.json").read_text())
    assert report["graph"]["after"]["nodes"] < report["graph"]["before"]["nodes"]


def test_export_records_weights_source_in_model_metadata(models_dir):
    from export.convert import read_metadata

    meta = read_metadata(models_dir / "resnet18" / "model.onnx")
    assert meta["weights_source"] == "random(seed=0)"
    assert meta["weights_random"] == "true"
    assert meta["precision"] == "fp32"
    assert json.loads(meta["preprocessing"])["crop"] == 224
    assert read_metadata(models_dir / "resnet18" / "model.fp16.onnx")["precision"] == "fp16"


def test_onnx_matches_pytorch_at_an_unverified_batch_size(models_dir):
    """Dynamic batch for real: batch 5 was never an example or a verified size."""
    model = load_model(get("resnet18"), "random").model
    x = np.random.default_rng(5).standard_normal((5, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = session(models_dir / "resnet18" / "model.onnx").run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_golden_set_holds_every_photo_and_seeded_inputs_with_tolerances(models_dir):
    golden = GoldenSet.load(models_dir / "alexnet" / "golden.npz")
    photos = [n for n in golden.case_names if n.startswith("photo:")]
    assert len(photos) == len(all_photos()) and len(golden.case_names) == len(photos) + GOLDEN_SEEDED_ROWS
    assert golden.inputs.shape == (len(golden.case_names), 3, 224, 224)
    assert set(golden.tolerances) == {"fp32", "fp16"}
    assert golden.meta["weights_source"] == "random(seed=0)"


@pytest.mark.parametrize("name", CI_ARCHS)
def test_random_weights_tell_the_golden_inputs_apart(models_dir, name):
    """The guard's figures, recomputed from the golden set the clients verify against."""
    golden = GoldenSet.load(models_dir / name / "golden.npz")
    guard = sensitivity(golden.outputs)
    assert guard.passed, guard.describe()
    report = json.loads((models_dir / name / "export.json").read_text())
    assert report["sensitivity"]["distinct_top1"] == guard.distinct_top1
    init = json.loads(report["metadata"]["random_init"])
    assert init["seed"] == 0 and "centred-unit-logits" in init["steps"]
    assert report["weights_source"] == "random(seed=0)"  # still clearly random


def test_guard_fails_an_export_whose_output_ignores_its_input(tmp_path):
    """torchvision's own GoogLeNet init as a checkpoint: its output does not depend on the input."""
    import torchvision

    torch.manual_seed(0)
    ckpt = tmp_path / "googlenet-torchvision-init.pth"
    torch.save(
        torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).state_dict(), ckpt
    )
    job = ExportJob(get("googlenet"), tmp_path / "out", weights=str(ckpt), fp16=False)
    (tmp_path / "out").mkdir()
    run_export(job)
    assert not job.succeeded and job.error.startswith(
        "verify: verification cannot detect errors for this model"
    )
    assert "distinct top-1" in job.error and "variation" in job.error
    assert list((tmp_path / "out").iterdir()) == []


def test_failed_verification_leaves_no_model_behind(tmp_path):
    strict = dataclasses.replace(get("resnet18"), fp32=Tolerance(atol=0.0, rtol=0.0))
    job = ExportJob(strict, tmp_path, weights="random")
    results = run_export(job)
    status = {r.name: r.status for r in results}
    assert status["verify"] is Status.FAIL and status["publish"] is Status.SKIPPED
    assert "fp32 verification failed" in job.error and "max abs err" in job.error
    assert list(tmp_path.iterdir()) == []  # no model, no staging directory


def test_checkpoint_export_records_its_source(tmp_path):
    ckpt = tmp_path / "resnet18-finetuned.pth"  # weights that respond to their input, like trained ones
    torch.save({"state_dict": load_model(get("resnet18"), "random", seed=7).model.state_dict()}, ckpt)
    job = ExportJob(get("resnet18"), tmp_path / "out", weights=str(ckpt), fp16=False)
    (tmp_path / "out").mkdir()
    run_export(job)
    assert job.succeeded, job.error
    assert job.status_of("fp16") is Status.SKIPPED
    report = json.loads((tmp_path / "out" / "resnet18" / "export.json").read_text())
    assert report["weights_source"].startswith("checkpoint:resnet18-finetuned.pth:sha256=")
    assert report["weights_random"] is False


# --- the CLI's errors: one clear line, non-zero exit ---------------------------------------


def _one_error_line(result) -> str:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_cli_rejects_unknown_architecture_listing_known_ones():
    line = _one_error_line(run_cli("export", "build", "lenet5"))
    assert "unknown architecture 'lenet5'" in line and "resnet152" in line


def test_cli_rejects_missing_checkpoint(tmp_path):
    line = _one_error_line(
        run_cli(
            "export",
            "build",
            "alexnet",
            "--weights",
            str(tmp_path / "nope.pth"),
            "--output",
            str(tmp_path / "out"),
        )
    )
    assert "checkpoint not found" in line
    assert not (tmp_path / "out" / "alexnet").exists()


def test_cli_rejects_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 garbage, not a checkpoint")
    line = _one_error_line(
        run_cli("export", "build", "alexnet", "--weights", str(bad), "--output", str(tmp_path / "out"))
    )
    assert "not a readable PyTorch state_dict" in line


def test_cli_rejects_checkpoint_of_another_architecture(tmp_path):
    import torchvision

    ckpt = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    line = _one_error_line(
        run_cli("export", "build", "alexnet", "--weights", str(ckpt), "--output", str(tmp_path / "out"))
    )
    assert "does not fit alexnet" in line and "missing" in line and "unexpected" in line


def test_cli_rejects_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = _one_error_line(run_cli("export", "build", "alexnet", "--output", str(blocker / "models")))
    assert "is not writable" in line


def test_cli_imagenet_weights_offline_fail_clearly(tmp_path):
    import os
    import subprocess
    import sys

    # A proxy on a closed port makes the download fail at once, whatever this machine's network.
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "hub"),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "PYTHONPATH": str(__import__("tests.conftest").conftest.ROOT),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "build",
            "alexnet",
            "--weights",
            "imagenet",
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    line = _one_error_line(result)
    assert "cannot get ImageNet weights for alexnet" in line and "--weights random" in line
    assert str(tmp_path / "hub") in line  # tells where to put the file offline


def test_imagenet_weights_from_the_torch_hub_cache_export_googlenet_without_aux_heads(tmp_path, monkeypatch):
    """`--weights imagenet` offline: torchvision reads a checkpoint already in the hub cache.

    The cached file here holds random values in the published checkpoint's layout (aux heads
    included); what is checked is the path the real weights take, not their accuracy.
    """
    import torchvision
    from torchvision.models import GoogLeNet_Weights

    weights = GoogLeNet_Weights.DEFAULT
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(3)
    published = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    data_dependent_init(published, preprocessing_for(get("googlenet")), seed=3)  # so the guard passes
    torch.save(published.state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    job = ExportJob(get("googlenet"), tmp_path / "out", weights="imagenet", fp16=False)
    (tmp_path / "out").mkdir()
    run_export(job)
    assert job.succeeded, job.error
    report = json.loads((tmp_path / "out" / "googlenet" / "export.json").read_text())
    assert report["weights_source"] == f"imagenet:{weights}"
    assert report["weights_random"] is False
    assert report["metadata"]["transform_input"] == "True"  # torchvision's choice for these weights
    model = onnx.load(str(tmp_path / "out" / "googlenet" / "model.onnx"))
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 1000  # no aux outputs
    assert len(model.graph.output) == 1
