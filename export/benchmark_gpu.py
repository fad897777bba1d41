"""`python -m export benchmark ARCH... --device cuda`: every GPU backend this machine has, side by side.

    torch_eager_fp32, torch_eager_fp16   PyTorch eager on CUDA
    ort_cuda_fp32                        ONNX Runtime, CUDA provider, the optimized fp32 graph
    ort_tensorrt_fp16                    ONNX Runtime, TensorRT provider, FP16 on the fp32 graph
    ort_tensorrt_int8                    ONNX Runtime, TensorRT provider, the S8S8 QDQ graph
                                         (export/int8.py's TensorRT form: explicit quantization)
    tensorrt_plan_fp16                   TensorRT's own builder and runtime on the fp32 graph, FP16

A backend that is not there (no onnxruntime-gpu, no TensorRT provider, no `tensorrt` module) is
listed with the reason instead of a figure; the report records every version. Without a CUDA
device the command stops before any work (NoCudaDevice: one line, exit 2).
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.layout import INPUT_NAME, OUTPUT_NAME
from cnn_deploy_core.machine import invoked_command, provenance
from cnn_deploy_core.registry import Architecture
from export import ExportError

NO_DEVICE_EXIT = 2
CUDA_PROVIDER, TRT_PROVIDER = "CUDAExecutionProvider", "TensorrtExecutionProvider"
BACKENDS = (
    "torch_eager_fp32",
    "torch_eager_fp16",
    "ort_cuda_fp32",
    "ort_tensorrt_fp16",
    "ort_tensorrt_int8",
    "tensorrt_plan_fp16",
)
MIN_ITERATIONS = 5


class NoCudaDevice(ExportError):
    """--device cuda on a machine where PyTorch sees no CUDA device."""


@dataclass
class GpuMeasurement:
    architecture: str
    backend: str
    batch_size: int
    images_per_s: float
    ms_per_batch: float
    iterations: int


def require_cuda() -> dict:
    """PyTorch's CUDA device and versions, or NoCudaDevice."""
    import torch

    if not torch.cuda.is_available():
        raise NoCudaDevice("--device cuda: PyTorch sees no CUDA device here (no NVIDIA GPU or driver)")
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0)}


def versions() -> tuple[dict, list[str], str | None]:
    """(versions, ONNX Runtime's providers, TensorRT's version) of what is installed; absent: None."""
    found: dict[str, str | None] = {"onnxruntime": None, "tensorrt": None}
    providers: list[str] = []
    try:
        import onnxruntime as ort

        from cnn_deploy_core.cuda import preload_cuda_libraries

        why = preload_cuda_libraries(ort)  # pip's CUDA/cuDNN libraries, before any session
        if why:
            print(f"export benchmark: {why}", file=sys.stderr)
        found["onnxruntime"] = ort.__version__
        providers = ort.get_available_providers()
    except ImportError:
        pass
    try:
        import tensorrt

        found["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return found, providers, found["tensorrt"]


def availability(torch_cuda: bool, ort_version: str | None, providers: list[str], trt: str | None) -> dict:
    """Each backend: None when it can run here, else the reason it cannot."""
    no_ort = "onnxruntime is not installed: pip install 'cnn-deploy[gpu]'"
    reasons: dict[str, str | None] = {}
    for name in BACKENDS:
        if not torch_cuda:
            reasons[name] = "PyTorch sees no CUDA device"
        elif name.startswith("torch_"):
            reasons[name] = None
        elif name.startswith("ort_"):
            wanted = CUDA_PROVIDER if name.startswith("ort_cuda") else TRT_PROVIDER
            if ort_version is None:
                reasons[name] = no_ort
            elif wanted not in providers:
                reasons[name] = (
                    f"ONNX Runtime {ort_version} has no {wanted} (providers: {', '.join(providers)})"
                )
            else:
                reasons[name] = None
        else:
            reasons[name] = None if trt else "the `tensorrt` Python module is not installed (NVIDIA's wheels)"
    return reasons


def cuda_seconds_per_call(
    run, *, seconds: float, sync_each: bool, min_calls: int = MIN_ITERATIONS, warmup: int = 1, sync=None
) -> tuple[float, int]:
    """Seconds per call of `run` on the GPU, and the calls timed: at least `min_calls` and `seconds`,
    after `warmup` calls. CUDA calls return before the GPU is done, so the clock stops only after a
    synchronize: `sync_each` waits after every call (each call's latency, as a lone request sees
    it: the gpu-check's rows); otherwise the calls queue back to back and one wait ends the run
    (throughput: this benchmark's). `sync` defaults to torch.cuda.synchronize."""
    if sync is None:
        import torch

        sync = torch.cuda.synchronize
    for _ in range(warmup):
        run()
    sync()
    n, start = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - start < seconds:
        run()
        n += 1
        if sync_each:
            sync()
    if not sync_each:
        sync()
    return (time.perf_counter() - start) / n, n


def _ort_session(path: Path, backend: str, cache: Path, max_batch: int):
    import onnxruntime as ort

    providers: list = [CUDA_PROVIDER]
    if backend.startswith("ort_tensorrt"):
        shape = lambda b: f"{INPUT_NAME}:{b}x3x224x224"  # noqa: E731
        options = {
            "trt_fp16_enable": True,
            "trt_int8_enable": backend.endswith("int8"),  # explicit quantization: the QDQ graph
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(max_batch),
            "trt_profile_max_shapes": shape(max_batch),
        }
        providers.insert(0, (TRT_PROVIDER, options))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers)


def _trt_plan(path: Path, max_batch: int):
    """TensorRT's builder on the ONNX file (FP16, one profile 1..max_batch) and an execution context."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # TensorRT 8; 10: always
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(path.read_bytes()):
        raise ExportError(f"TensorRT could not parse {path.name}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, 3, 224, 224), (max_batch, 3, 224, 224), (max_batch, 3, 224, 224))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT built no engine (see its log above)")
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    return engine.create_execution_context()


def _runner(backend: str, handle, model, x: np.ndarray):
    import torch

    if backend.startswith("torch_"):
        xt = torch.from_numpy(x).cuda()
        xt = xt.half() if backend.endswith("fp16") else xt
        return lambda: model(xt)
    if backend.startswith("ort_"):
        return lambda: handle.run([OUTPUT_NAME], {INPUT_NAME: x})
    xt = torch.from_numpy(x).cuda().contiguous()
    out = torch.empty((len(x), 1000), dtype=torch.float32, device="cuda")
    handle.set_input_shape(INPUT_NAME, tuple(xt.shape))
    handle.set_tensor_address(INPUT_NAME, xt.data_ptr())
    handle.set_tensor_address(OUTPUT_NAME, out.data_ptr())
    stream = torch.cuda.current_stream().cuda_stream
    return lambda: handle.execute_async_v3(stream)


def benchmark_arch_cuda(
    arch: Architecture, *, batch_sizes: list[int], seconds: float, reasons: dict, progress=None
) -> tuple[list[GpuMeasurement], dict[str, str]]:
    """Every available backend at every batch size; a backend that fails is reported, not fatal."""
    import copy

    import onnx
    import torch

    from export.convert import optimize, to_onnx
    from export.models import load_model

    loaded = load_model(arch, "random")
    results, failed = [], {}
    max_batch = max(batch_sizes)
    # fp32 means fp32: PyTorch lets cuDNN convolutions use TF32 unless told otherwise
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        onnx.save(optimize(to_onnx(loaded.model, arch)), fp32)  # on the CPU, outside inference mode
        with torch.inference_mode():
            models = {"torch_eager_fp32": loaded.model.eval().cuda()}
            models["torch_eager_fp16"] = copy.deepcopy(models["torch_eager_fp32"]).half()
            for backend in (b for b in BACKENDS if reasons.get(b) is None):
                if progress:
                    progress(f"{arch.name}: {backend}")
                try:
                    handle = None
                    if backend == "ort_tensorrt_int8":
                        from export.int8 import SCHEMES, calibration_set, quantize

                        int8 = Path(tmp) / SCHEMES["s8s8"].filename
                        quantize(fp32, int8, calibration_set(loaded.preprocessing), SCHEMES["s8s8"])
                        handle = _ort_session(int8, backend, Path(tmp) / backend, max_batch)
                    elif backend.startswith("ort_"):
                        handle = _ort_session(fp32, backend, Path(tmp) / backend, max_batch)
                    elif backend.startswith("tensorrt_plan"):
                        handle = _trt_plan(fp32, max_batch)
                    rng = np.random.default_rng(0)
                    for bs in batch_sizes:
                        x = rng.standard_normal((bs, *arch.input_shape), dtype=np.float32)
                        per_batch, n = cuda_seconds_per_call(
                            _runner(backend, handle, models.get(backend), x), seconds=seconds, sync_each=False
                        )
                        results.append(
                            GpuMeasurement(arch.name, backend, bs, bs / per_batch, per_batch * 1e3, n)
                        )
                except Exception as e:  # one backend's failure must not hide the others
                    failed[backend] = f"{e.__class__.__name__}: {e}".splitlines()[0][:300]
    return results, failed


def run_benchmark_cuda(
    archs: list[Architecture],
    *,
    batch_sizes: list[int],
    seconds: float,
    output: Path,
    as_json: bool,
    out,
    console,
) -> dict:
    """The `--device cuda` run: NoCudaDevice before any work when there is no GPU."""
    device = require_cuda()
    found, providers, trt = versions()
    reasons = availability(True, found["onnxruntime"], providers, trt)
    results: list[GpuMeasurement] = []
    failed: dict[str, dict[str, str]] = {}
    for arch in archs:
        got, bad = benchmark_arch_cuda(
            arch,
            batch_sizes=batch_sizes,
            seconds=seconds,
            reasons=reasons,
            progress=lambda msg: console.print(f"bench-export: {msg}", highlight=False),
        )
        results += got
        if bad:
            failed[arch.name] = bad
    report = {
        "command": invoked_command(),  # as run, every option (provenance has it too)
        "machine": {"python": platform.python_version(), **device, **found, "providers": providers},
        "absent": {name: why for name, why in reasons.items() if why},
        "failed": failed,
        "results": [asdict(r) for r in results],
    }
    report["provenance"] = provenance()
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        out.print(table(results, reasons, failed), highlight=False, markup=False)
        out.print(f"JSON: {output}", highlight=False)
    return report


def table(results: list[GpuMeasurement], reasons: dict, failed: dict[str, dict[str, str]]) -> str:
    """img/s per backend and batch; then the backends that are absent or failed, with why."""
    keys = list(dict.fromkeys((r.architecture, r.batch_size) for r in results))
    ran = [b for b in BACKENDS if any(r.backend == b for r in results)]
    lines = ["model        batch " + " ".join(f"{b:>19s}" for b in ran)]
    for arch, bs in keys:
        row = {r.backend: r.images_per_s for r in results if (r.architecture, r.batch_size) == (arch, bs)}
        cells = " ".join(f"{row[b]:19.0f}" if b in row else f"{'-':>19s}" for b in ran)
        lines.append(f"{arch:12s} {bs:5d} {cells}")
    lines += [f"absent: {name}: {why}" for name, why in reasons.items() if why]
    lines += [f"failed: {arch} {name}: {why}" for arch, bad in failed.items() for name, why in bad.items()]
    return "\n".join(lines)
