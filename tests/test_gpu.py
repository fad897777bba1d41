"""GPU checks. Without a GPU: the one-line refusal (exit 2), and every gpu-check judge made to say
no on made-up measurements. With one (never in CI, never on these machines so far), `make
gpu-check`'s checks must all pass: TensorRT really ran (not a silent CUDA fallback), served from
the engine cache after a restart, and the GPU answers match the golden sets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from cnn_deploy.checks.gpu_torch import LECTURE_ARCHS, throughput_table
from cnn_deploy.checks.gpu_verdicts import (
    FAIL,
    OK,
    SKIPPED,
    Check,
    agreement_verdict,
    backend_lines,
    engine_cache_verdict,
    golden_verdict,
    memory_verdict,
    overall,
    registered_verdict,
    restart_verdict,
    served_providers_verdict,
    share_verdict,
)
from cnn_deploy_core.metrics import compare
from cnn_deploy_core.registry import FAMILIES, get
from tests.conftest import CI_ARCHS, INT8_ARCH, ROOT, _has_gpu, run_cli

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_2(tmp_path):
    result = run_cli("cnn_deploy", "gpu-check", "--output", str(tmp_path / "gpu.json"), home=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no GPU" in result.stderr
    assert not (tmp_path / "gpu.json").exists()


def test_tensorrt_is_recognised_in_an_onnx_runtime_profile(tmp_path):
    """The check that catches a silent CUDA fallback reads ORT's profile: test its parsing."""
    from cnn_deploy.checks.gpu import providers_that_ran

    profile = tmp_path / "ort.json"
    events = [
        {"cat": "Session", "name": "session_initialization", "dur": 5},
        {"cat": "Node", "name": "TRTKernel_graph_0_kernel_time", "dur": 90, "args": {"provider": TRT}},
        {"cat": "Node", "name": "Cast_0_kernel_time", "dur": 10, "args": {"provider": CUDA}},
        {"cat": "Node", "name": "Cast_0_fence_before", "dur": 1, "args": {"provider": CUDA}},
    ]
    profile.write_text(json.dumps(events))
    assert providers_that_ran(profile) == {TRT: 90.0, CUDA: 10.0}


def test_a_tensorrt_share_below_90_percent_fails():
    assert share_verdict({TRT: 95.0, CUDA: 5.0}, TRT) is None
    assert "60% of node time on TensorrtExecutionProvider, need >= 90%" in share_verdict(
        {TRT: 60, CUDA: 40}, TRT
    )
    assert "0% of node time" in share_verdict({}, TRT)


def test_a_provider_ort_did_not_register_fails():
    assert registered_verdict([TRT, CUDA, CPU], TRT) is None
    assert "fell back to ['CUDAExecutionProvider'" in registered_verdict([CUDA, CPU], TRT)


def test_answers_beyond_the_tolerance_fail():
    import numpy as np

    ref = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    assert golden_verdict(compare(ref, ref + 1e-4, atol=0, rtol=1e-3), "fp16") is None
    reason = golden_verdict(compare(ref, ref * 1.05, atol=0, rtol=1e-3), "fp16")
    assert reason.startswith("answers beyond the fp16 tolerance")


FALLBACK_LOG = "\n".join(
    [
        "W1202 onnxruntime: ... when using [('TensorrtExecutionProvider', {...})] "
        "Falling back to ['CUDAExecutionProvider']",
        'I1202 12:00:00.1 1 python_be.cc:1] "alexnet: ONNX Runtime 1.31.1 on '
        "['CUDAExecutionProvider', 'CPUExecutionProvider'], intra-op threads auto, spinning on\"",
        "I1202 12:00:00.2 1 python_be.cc:1] \"resnet18: ONNX Runtime 1.31.1 on ['TensorrtExecutionProvider', "
        "'CUDAExecutionProvider', 'CPUExecutionProvider'], intra-op threads auto, spinning on, "
        'TensorRT engine cache /c/r18"',
    ]
)


def test_providers_are_read_per_model_from_the_backends_own_line_not_a_log_grep():
    lines = backend_lines(FALLBACK_LOG)
    assert lines["resnet18"] == {"providers": [TRT, CUDA, CPU], "engine_cache": "/c/r18"}
    assert served_providers_verdict("resnet18", lines) is None
    # the log names TensorRT (ORT's fallback warning), yet alexnet runs on CUDA: that must fail
    assert "served on ['CUDAExecutionProvider'" in served_providers_verdict("alexnet", lines)
    assert "logged no" in served_providers_verdict("googlenet", lines)


def test_an_empty_engine_cache_fails_even_when_the_volume_exists(tmp_path):
    assert engine_cache_verdict("resnet18", str(tmp_path), {}) is not None
    assert engine_cache_verdict("resnet18", str(tmp_path), {"/c/a.engine": 1.0}) is None


def test_a_restart_that_rebuilds_an_engine_fails():
    first = {"/c/a.engine": 1.0}
    assert restart_verdict("m", first, dict(first)) is None
    assert "rebuilt 1 engine" in restart_verdict("m", first, {"/c/a.engine": 2.0})
    assert "rebuilt 1 engine" in restart_verdict("m", first, {**first, "/c/b.engine": 3.0})
    assert "nothing to reuse" in restart_verdict("m", {}, {})


def test_skipped_is_never_a_pass_and_nothing_checked_exits_2():
    ok, failed, skipped = (Check("c", "m", s, "") for s in (OK, FAIL, SKIPPED))
    assert overall([ok, ok])[0] == 0
    assert overall([ok, failed])[0] == 1
    code, line = overall([ok, skipped])
    assert code == 1 and "a skipped check is not a pass" in line
    assert overall([skipped, skipped])[0] == 2 and overall([])[0] == 2


def test_a_pytorch_mode_that_strays_from_eager_fp32_fails():
    assert agreement_verdict("eager-fp16", 3e-3, 1e-2) is None
    assert "eager-fp16 answers differ from eager fp32 by 5.00e-02" in agreement_verdict(
        "eager-fp16", 0.05, 1e-2
    )
    assert agreement_verdict("eager-tf32", float("nan"), 1e-2)  # NaN answers never pass


def test_running_out_of_memory_fails_only_within_the_served_batch_range():
    assert memory_verdict([256], max_batch_size=128) is None  # beyond what the GPU config serves
    assert memory_verdict([128, 256], max_batch_size=128) == (
        "out of GPU memory at batch 128 (the GPU config serves up to 128)"
    )


def test_the_pytorch_rows_cover_every_lecture_family_and_say_what_ran_them():
    assert {get(a).family for a in LECTURE_ARCHS} == set(FAMILIES)
    rows = [
        Check("torch-cuda-eager-fp16", "resnet50", OK, "", data={"img_per_s": {1: 410.0, 256: 9000.0}}),
        Check("torch-cuda-cuda-graph-fp16", "resnet50", OK, "", data={"img_per_s": {1: 900.0}}),
        Check("ort-tensorrt-fp16", "resnet50", OK, ""),
    ]
    lines = throughput_table(rows).splitlines()
    assert lines[0].split() == ["model", "run", "by", "b1", "b256"]
    assert lines[1].split() == ["resnet50", "eager-fp16", "410", "9000"]
    assert lines[2].split() == ["resnet50", "cuda-graph-fp16", "900", "-"]
    assert throughput_table(rows[2:]) == ""


def test_make_gpu_check_runs_in_its_own_venv_with_the_gpu_extra():
    # --no-print-directory: run under `make test`, make would print where it enters and leaves
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "gpu-check"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    installs = [ln for ln in dry.stdout.splitlines() if "pip install" in ln and "-e" in ln]
    (install,) = installs
    extras = set(install.split("'.[")[1].split("]")[0].split(","))
    assert "gpu" in extras and "cpu" not in extras  # both install the `onnxruntime` module
    assert dry.stdout.strip().splitlines()[-1] == ".venv-gpu/bin/python -m cnn_deploy gpu-check"
    assert install.startswith(".venv-gpu/bin/python -m pip")


@pytest.mark.gpu
@pytest.mark.integration
def test_gpu_check_passes_every_check_on_the_ci_models(repository, tmp_path):
    repo = tmp_path / "repo"
    for name in (*CI_ARCHS, f"{INT8_ARCH}_int8"):
        shutil.copytree(repository / name, repo / name)
    report_path = tmp_path / "gpu-check.json"
    result = run_cli(
        "cnn_deploy", "gpu-check", "--repository", str(repo), "--output", str(report_path), timeout=600
    )
    report = json.loads(report_path.read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {(c["name"], c["model"]): c for c in report["checks"]}
    for name in CI_ARCHS:
        trt = checks[("ort-tensorrt-fp16", name)]
        assert trt["status"] == "OK" and trt["data"]["node_time_share"]["TensorrtExecutionProvider"] >= 0.9
        for check in ("ort-cuda-fp16", "served-gpu-config", "served-restart", "trtexec-plan"):
            assert checks[(check, name)]["status"] == "OK", checks[(check, name)]
    assert checks[("ort-tensorrt-int8", f"{INT8_ARCH}_int8")]["status"] == "OK"


# What onnxruntime-gpu 1.31.1's wheel asks for in its `cuda` and `cudnn` extras (its METADATA,
# Provides-Extra): CUDA 13 and cuDNN 9 for CUDA 13, the libraries `preload_dlls()` loads.
ORT_GPU_EXTRAS = {
    "cuda": (
        "nvidia-cuda-nvrtc~=13.0",
        "nvidia-cuda-runtime~=13.0",
        "nvidia-cufft~=12.0",
        "nvidia-curand~=10.0",
    ),
    "cudnn": ("nvidia-cudnn-cu13~=9.0",),
}


def test_the_gpu_extra_brings_onnxruntimes_cuda_libraries_pinned_as_pytorch_has_them():
    """The gpu extra installs onnxruntime-gpu with its CUDA and cuDNN wheels; constraints.txt pins
    each at a version both onnxruntime-gpu and PyTorch accept, so the gpu-check venv holds one copy
    of each library, which PyTorch loads first and preload_dlls() then finds loaded."""
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (gpu,) = (Requirement(r) for r in extras["gpu"])
    assert gpu.name == "onnxruntime-gpu" and gpu.extras == set(ORT_GPU_EXTRAS)
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.split("#")[0].strip():
            pin = Requirement(line.split("#")[0])
            if pin.marker is None or pin.marker.evaluate():
                pins[pin.name.lower()] = str(pin.specifier).removeprefix("==")
    for wanted in (Requirement(r) for extra in ORT_GPU_EXTRAS.values() for r in extra):
        assert wanted.name in pins, f"{wanted.name} is not pinned in constraints.txt"
        assert pins[wanted.name] in wanted.specifier, f"{wanted.name}=={pins[wanted.name]} breaks {wanted}"


def test_the_gpu_check_loads_pytorchs_cuda_libraries_before_onnxruntimes(monkeypatch):
    """Importing the check loads neither; its inventory asks PyTorch first, then ONNX Runtime (whose
    preload_dlls() then finds the CUDA and cuDNN libraries of the same wheels already loaded)."""
    from cnn_deploy.checks import gpu
    from serving import gpus

    probe = "import sys, cnn_deploy.checks.gpu; print(sorted({'torch', 'onnxruntime'} & set(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert loaded.stdout.strip() == "[]"
    calls = []
    monkeypatch.setattr(
        gpus, "nvidia_gpus", lambda: calls.append("nvidia-smi") or (["H100, 560.35, 81559 MiB"], "")
    )
    monkeypatch.setattr(gpu, "torch_inventory", lambda: calls.append("torch"))
    monkeypatch.setattr(
        gpu, "onnxruntime_gpu", lambda: calls.append("onnxruntime") or (None, "no onnxruntime-gpu")
    )
    assert gpu.gpu_inventory()["gpus"] == ["H100, 560.35, 81559 MiB"]
    assert calls == ["nvidia-smi", "torch", "onnxruntime"]


def test_a_gpu_is_what_nvidia_smi_lists():
    from serving.gpus import listed

    assert listed(0, "NVIDIA H100 80GB HBM3, 560.35.03, 81559 MiB\n\n") == [
        "NVIDIA H100 80GB HBM3, 560.35.03, 81559 MiB"
    ]
    assert listed(9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver") == []
    assert listed(0, "") == []


def test_pips_cuda_libraries_are_loaded_in_one_place_and_a_failure_is_one_line():
    """gpu-check, the GPU benchmark and our backend (KIND_GPU) all call cnn_deploy_core.cuda."""
    import types

    from cnn_deploy_core.cuda import preload_cuda_libraries

    loaded = []
    assert preload_cuda_libraries(types.SimpleNamespace(preload_dlls=lambda: loaded.append(1))) is None
    assert loaded == [1]

    def broken():
        raise OSError("libcudnn.so.9: cannot open shared object file")

    why = preload_cuda_libraries(types.SimpleNamespace(preload_dlls=broken, __version__="1.31.1"))
    assert "libcudnn.so.9" in why and "\n" not in why
    assert "no preload_dlls" in preload_cuda_libraries(types.SimpleNamespace(__version__="1.18.0"))
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    callers = ("cnn_deploy/checks/gpu.py", "export/benchmark_gpu.py")
    callers += ("serving/triton_side/onnxruntime/model.py",)
    for caller in callers:
        text = (root / caller).read_text()
        assert "preload_cuda_libraries(ort)" in text and "ort.preload_dlls()" not in text, caller
