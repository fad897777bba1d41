"""gpu-check's PyTorch CUDA rows: what a GPU host measures when all it has is PyTorch with CUDA
(no onnxruntime-gpu, no TensorRT), and a baseline beside them when it has more.

For each lecture architecture (seeded random weights, export.models): eager FP32, eager TF32,
eager FP16 and a CUDA graph replaying the FP16 model, at batch 1 to 256. Each row says what ran it
(PyTorch and CUDA versions, the GPU), its images per second per batch, and how far its answers are
from eager FP32 on the same inputs; the judge is gpu_verdicts.agreement_verdict.
"""

from __future__ import annotations

import copy

from cnn_deploy.checks.gpu_verdicts import Check, agreement_verdict, memory_verdict, status_of
from cnn_deploy_core.registry import get
from export.benchmark_gpu import cuda_seconds_per_call

LECTURE_ARCHS = ("alexnet", "vgg16", "googlenet", "resnet18", "resnet50")
MODES = ("eager-fp32", "eager-tf32", "eager-fp16", "cuda-graph-fp16")
BATCHES = (1, 8, 32, 128, 256)
AGREEMENT_BATCH = 8  # seeded inputs compared with eager FP32
MIN_SECONDS = 0.25  # timed per batch size, after the warm-up
MIN_RUNS = 5


def torch_inventory() -> dict | None:
    """PyTorch's view of the GPU, or None when it has no CUDA device (or no PyTorch)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(0),
    }


def _ran_by(mode: str, inventory: dict) -> str:
    return f"PyTorch {inventory['torch']} CUDA {inventory['cuda']} {mode} on {inventory['device']}"


def _set_tf32(on: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def _runner(model, mode: str, x):
    """A no-argument call that runs `model` on `x` the way `mode` says, and its output tensor."""
    import torch

    if mode != "cuda-graph-fp16":
        return lambda: model(x)
    static = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up on a side stream before capture, as PyTorch asks
        for _ in range(2):
            model(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(static)
    return lambda: (graph.replay(), out)[1]


def measure_arch(name: str, inventory: dict, *, batches=BATCHES, modes=MODES) -> list[Check]:
    """One row per mode for one architecture."""
    import numpy as np
    import torch

    from export.models import load_model

    arch = get(name)
    rtol = arch.fp16.rtol  # TF32 and FP16 keep 10 mantissa bits: the registry's FP16 bound for both
    model32 = load_model(arch, "random", seed=0).model.eval().cuda()
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn((AGREEMENT_BATCH, *arch.input_shape), generator=generator).cuda()
    checks, model16 = [], None
    with torch.inference_mode():
        _set_tf32(False)
        reference = model32(probe).float().cpu().numpy()
        for mode in modes:
            half = mode.endswith("fp16")
            if half and model16 is None:
                model16 = copy.deepcopy(model32).half()
            model = model16 if half else model32
            _set_tf32(mode == "eager-tf32")
            dtype = torch.float16 if half else torch.float32
            got = _runner(model, mode, probe.to(dtype))().float().cpu().numpy()
            err = float((np.abs(got - reference).max(1) / np.abs(reference).max(1)).max())
            rates, oom = {}, []
            for batch in batches:
                x = torch.randn((batch, *arch.input_shape), generator=generator).cuda().to(dtype)
                try:
                    seconds, _ = cuda_seconds_per_call(
                        _runner(model, mode, x),
                        seconds=MIN_SECONDS,
                        sync_each=True,
                        min_calls=MIN_RUNS,
                        warmup=2,
                    )
                    rates[batch] = round(batch / seconds, 1)
                except torch.cuda.OutOfMemoryError:
                    oom.append(batch)
                finally:
                    del x
                    torch.cuda.empty_cache()
            problems = [
                p
                for p in (agreement_verdict(mode, err, rtol), memory_verdict(oom, arch.gpu.max_batch_size))
                if p
            ]
            rates_text = ", ".join(f"b{b} {r:.0f}" for b, r in rates.items())
            detail = "; ".join(problems) or f"img/s {rates_text}; max rel err vs eager fp32 {err:.1e}"
            data = {
                "ran_by": _ran_by(mode, inventory),
                "img_per_s": rates,
                "out_of_memory": oom,
                "max_rel_err_vs_fp32": err,
                "rtol": rtol,
            }
            checks.append(Check(f"torch-cuda-{mode}", name, status_of(problems), detail, data=data))
        _set_tf32(False)
    del model32, model16
    torch.cuda.empty_cache()
    return checks


def throughput_table(checks: list[Check]) -> str:
    """One line per architecture and mode: images per second at each batch size."""
    rows = [c for c in checks if c.name.startswith("torch-cuda-") and c.data.get("img_per_s")]
    if not rows:
        return ""
    batches = sorted({int(b) for c in rows for b in c.data["img_per_s"]})
    head = f"{'model':10s} {'run by':18s} " + " ".join(f"{'b' + str(b):>8s}" for b in batches)
    lines = [head]
    for c in rows:
        rates = {int(b): r for b, r in c.data["img_per_s"].items()}
        cells = " ".join(f"{rates[b]:8.0f}" if b in rates else f"{'-':>8s}" for b in batches)
        lines.append(f"{c.model:10s} {c.name.removeprefix('torch-cuda-'):18s} {cells}")
    return "\n".join(lines)
