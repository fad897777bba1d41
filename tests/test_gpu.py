"""GPU checks. Without a GPU only the refusal is tested; with one (never in CI, never on these
machines so far), `make gpu-check`'s checks must all pass: TensorRT really ran (not a silent CUDA
fallback) and the GPU answers match the golden sets at the FP16 tolerance."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import CI_ARCHS, _has_gpu, run_cli


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_2(tmp_path):
    result = run_cli("cnn_deploy", "gpu-check", "--output", str(tmp_path / "gpu.json"), home=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no NVIDIA GPU here" in result.stderr
    assert not (tmp_path / "gpu.json").exists()


def test_tensorrt_is_recognised_in_an_onnx_runtime_profile(tmp_path):
    """The check that catches a silent CUDA fallback reads ORT's profile: test its parsing."""
    from cnn_deploy.checks.gpu import providers_that_ran

    profile = tmp_path / "ort.json"
    events = [
        {"cat": "Session", "name": "session_initialization", "dur": 5},
        {
            "cat": "Node",
            "name": "TRTKernel_graph_0_kernel_time",
            "dur": 90,
            "args": {"provider": "TensorrtExecutionProvider"},
        },
        {
            "cat": "Node",
            "name": "Cast_0_kernel_time",
            "dur": 10,
            "args": {"provider": "CUDAExecutionProvider"},
        },
        {
            "cat": "Node",
            "name": "Cast_0_fence_before",
            "dur": 1,
            "args": {"provider": "CUDAExecutionProvider"},
        },
    ]
    profile.write_text(json.dumps(events))
    assert providers_that_ran(profile) == {"TensorrtExecutionProvider": 90.0, "CUDAExecutionProvider": 10.0}


@pytest.mark.gpu
@pytest.mark.integration
def test_gpu_check_passes_every_check_on_the_ci_models(repository, tmp_path):
    repo = tmp_path / "repo"
    for name in CI_ARCHS:
        shutil.copytree(repository / name, repo / name)
    report_path = tmp_path / "gpu-check.json"
    result = run_cli(
        "cnn_deploy", "gpu-check", "--repository", str(repo), "--output", str(report_path), timeout=600
    )
    report = json.loads(report_path.read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {(c["name"], c["model"]): c for c in report["checks"]}
    for name in CI_ARCHS:
        trt = checks[("ort-tensorrt", name)]
        assert trt["status"] == "OK" and trt["data"]["node_time_share"]["TensorrtExecutionProvider"] > 0.5
        assert checks[("ort-cuda", name)]["status"] == "OK"
    assert checks[("served-gpu-config", ",".join(CI_ARCHS))]["status"] == "OK"
