"""pip's CUDA libraries for ONNX Runtime: the one place that loads them (gpu-check, the GPU
benchmark, and our Triton backend on a KIND_GPU instance).

onnxruntime-gpu's `cuda`/`cudnn` extras install CUDA and cuDNN as nvidia-* wheels, which the
dynamic loader does not search; `onnxruntime.preload_dlls()` loads them from site-packages, and it
must run before the first session, or the CUDA provider finds no libraries (without
LD_LIBRARY_PATH) and ONNX Runtime drops it with only a log line. The module is passed in: the
core imports no ONNX Runtime of its own."""

from __future__ import annotations


def preload_cuda_libraries(ort) -> str | None:
    """Load pip's CUDA/cuDNN libraries for `ort` (the onnxruntime module); None when done, else why
    not in one line (an older onnxruntime without `preload_dlls`, or the call failed): the caller
    says it, and a missing library then shows as a missing provider."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        version = getattr(ort, "__version__", "?")
        return f"ONNX Runtime {version} has no preload_dlls: CUDA comes from LD_LIBRARY_PATH"
    try:
        preload()
    except Exception as e:  # any failure is reported, never fatal here
        return f"onnxruntime.preload_dlls() failed: {e}"
    return None
