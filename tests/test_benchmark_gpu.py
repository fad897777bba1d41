"""`python -m export benchmark --device cuda`: every GPU backend side by side, the absent ones listed
with why. No GPU here: the one-line refusal (exit 2), and which backends a machine can run."""

from __future__ import annotations

import pytest

from export.benchmark_gpu import BACKENDS, GpuMeasurement, availability, table
from tests.conftest import _has_gpu, run_cli

CUDA, TRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_bench_export_on_cuda_without_a_gpu_says_so_in_one_line_and_exits_2(tmp_path):
    result = run_cli(
        "export", "benchmark", "resnet18", "--device", "cuda", "--output", str(tmp_path / "b.json")
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --device cuda: PyTorch sees no CUDA device here (no NVIDIA GPU or driver)"
    ]
    assert not (tmp_path / "b.json").exists()


def test_with_pytorch_alone_only_its_backends_run_and_the_others_say_why():
    reasons = availability(True, None, [], None)
    assert [b for b in BACKENDS if reasons[b] is None] == ["torch_eager_fp32", "torch_eager_fp16"]
    assert "pip install 'cnn-deploy[gpu]'" in reasons["ort_cuda_fp32"]
    assert "tensorrt" in reasons["tensorrt_plan_fp16"]


def test_a_cpu_onnxruntime_or_one_without_tensorrt_is_named_with_its_providers():
    cpu_only = availability(True, "1.32.0", ["CPUExecutionProvider"], "10.5.0")
    assert (
        cpu_only["ort_cuda_fp32"]
        == "ONNX Runtime 1.32.0 has no CUDAExecutionProvider (providers: CPUExecutionProvider)"
    )
    assert cpu_only["tensorrt_plan_fp16"] is None
    no_trt = availability(True, "1.31.1", [CUDA, "CPUExecutionProvider"], None)
    assert no_trt["ort_cuda_fp32"] is None and TRT in no_trt["ort_tensorrt_int8"]
    everything = availability(True, "1.31.1", [TRT, CUDA], "10.5.0")
    assert all(why is None for why in everything.values())
    assert all(why for why in availability(False, "1.31.1", [TRT, CUDA], "10.5.0").values())


def test_the_table_puts_backends_side_by_side_and_lists_the_absent_ones():
    rows = [
        GpuMeasurement("resnet50", "torch_eager_fp16", 8, 2000.0, 4.0, 50),
        GpuMeasurement("resnet50", "ort_tensorrt_int8", 8, 9000.0, 0.9, 200),
    ]
    reasons = {b: None for b in BACKENDS} | {"tensorrt_plan_fp16": "no tensorrt"}
    text = table(rows, reasons, {"resnet50": {"ort_cuda_fp32": "RuntimeError: boom"}}).splitlines()
    assert text[0].split() == ["model", "batch", "torch_eager_fp16", "ort_tensorrt_int8"]
    assert text[1].split() == ["resnet50", "8", "2000", "9000"]
    assert "absent: tensorrt_plan_fp16: no tensorrt" in text
    assert "failed: resnet50 ort_cuda_fp32: RuntimeError: boom" in text


@pytest.mark.parametrize("sync_each", [True, False])
def test_one_cuda_timing_loop_waits_after_each_call_or_once_at_the_end(sync_each):
    """bench-export's throughput (one wait) and gpu-check's latency rows (a wait per call) share one
    loop; a counting `sync` stands in for torch.cuda.synchronize, which needs a GPU."""
    from export.benchmark_gpu import cuda_seconds_per_call

    calls, syncs = [], []
    per_call, n = cuda_seconds_per_call(
        lambda: calls.append(1),
        seconds=0.0,
        sync_each=sync_each,
        min_calls=4,
        warmup=2,
        sync=lambda: syncs.append(1),
    )
    assert (len(calls), n) == (2 + 4, 4) and per_call >= 0
    # before the clock starts (the warm-up's work done), then after each call or once at the end
    assert len(syncs) == (1 + 4 if sync_each else 2)
