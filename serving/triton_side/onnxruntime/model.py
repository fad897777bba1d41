"""A Python-based Triton backend named "onnxruntime", for the CPU-only tritonserver binary.

The `nvidia-pytriton` wheel ships the real tritonserver with the Python backend but no
native ONNX Runtime backend. Triton loads `<backend-dir>/onnxruntime/model.py` through the
Python backend when `libtriton_onnxruntime.so` is absent, so a config that says
`backend: "onnxruntime"` is served here by this file, and by the native backend in the NGC
container. It reads the same config fields as the native backend (thread counts,
default_model_filename, the TensorRT accelerator) so one config means the same thing in both.

Runs inside the backend stub process, whose interpreter is the environment's own python3
(serving.triton puts it first on PATH): numpy, onnxruntime, Triton's utils and cnn_deploy_core.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from cnn_deploy_core.cores import CoreGate
from cnn_deploy_core.cuda import preload_cuda_libraries
from cnn_deploy_core.dtypes import config_to_kserve, kserve_to_numpy
from cnn_deploy_core.layout import (
    ENV_ORT_GATE,
    ENV_ORT_NARROW,
    ENV_ORT_SPINNING,
    ENV_ORT_THREADS,
    SPINNING_MODES,
)


def _numpy_dtype(config_type: str) -> np.dtype:
    return kserve_to_numpy(config_to_kserve(config_type))


def _param(config: dict, key: str, default: str | None = None) -> str | None:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


_TRUE = ("1", "true", "True")
# Config keys the native backend passes to the TensorRT EP under the same name (its README's table).
_TRT_BOOL = ("trt_timing_cache_enable", "trt_cuda_graph_enable", "trt_force_sequential_engine_build")
_TRT_INT = ("trt_builder_optimization_level", "trt_max_partition_iterations", "trt_min_subgraph_size")
_TRT_STR = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")


def _tensorrt_options(config: dict, model_name: str) -> dict | None:
    """The native backend's `gpu_execution_accelerator { name: "tensorrt" }`, as TRT EP options."""
    accelerators = config.get("optimization", {}).get("execution_accelerators", {})
    for acc in accelerators.get("gpu_execution_accelerator", []):
        if acc.get("name") != "tensorrt":
            continue
        params = acc.get("parameters", {})
        precision = params.get("precision_mode", "FP32").upper()
        # INT8: a QDQ graph, explicit quantization (no calibration table); FP16 where it is not INT8.
        options = {"trt_fp16_enable": precision in ("FP16", "INT8"), "trt_int8_enable": precision == "INT8"}
        if "max_workspace_size_bytes" in params:
            options["trt_max_workspace_size"] = int(params["max_workspace_size_bytes"])
        if params.get("trt_engine_cache_enable") in _TRUE:
            options["trt_engine_cache_enable"] = True
            options["trt_engine_cache_path"] = _writable_cache(
                params.get("trt_engine_cache_path"), model_name
            )
        options.update({k: params[k] in _TRUE for k in _TRT_BOOL if k in params})
        options.update({k: int(params[k]) for k in _TRT_INT if k in params})
        options.update({k: params[k] for k in _TRT_STR if k in params})
        if options.get("trt_timing_cache_enable"):
            path = params.get("trt_timing_cache_path")
            options["trt_timing_cache_path"] = _writable_cache(path, "timing-cache")
        return options
    return None


def _writable_cache(path: str | None, model_name: str) -> str:
    """The configured engine cache (a docker volume in production), or a temp dir on a laptop
    where that path (/trt-cache/...) cannot be created."""
    for candidate in (path, os.path.join(tempfile.gettempdir(), "cnn-deploy-trt-cache", model_name)):
        if candidate:
            try:
                os.makedirs(candidate, exist_ok=True)
                return candidate
            except OSError:
                continue
    raise pb_utils.TritonModelException(f"{model_name}: no writable TensorRT engine cache directory")


CPU_EP, CUDA_EP, TRT_EP = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# A config parameter: "true" lets a GPU instance serve on whatever ONNX Runtime has (with a warning)
# instead of refusing to load. Off by default: a GPU deployment quietly on the CPU is the worst case.
ALLOW_FALLBACK = "allow_provider_fallback"
FIXES = {
    CUDA_EP: "install the gpu extra (pip install 'cnn-deploy[gpu]'; uninstall the CPU onnxruntime package, "
    "which shadows onnxruntime-gpu) on a host with an NVIDIA driver",
    TRT_EP: "install the TensorRT libraries this onnxruntime-gpu was built for (libnvinfer on the library "
    "path; the NGC Triton image has them), or drop the tensorrt accelerator from the config",
}


def requested_providers(kind: str, tensorrt: bool) -> list[str]:
    """What a config asks for: a GPU instance wants CUDA (and TensorRT first when configured)."""
    if kind != "GPU":
        return [CPU_EP]
    return [*([TRT_EP] if tensorrt else []), CUDA_EP, CPU_EP]


def check_providers(
    requested: list[str], available: list[str], kind: str, allow_fallback: bool
) -> str | None:
    """Why this instance must not load (None: it may). Pure, so it is unit-tested without a GPU.

    `available` is ONNX Runtime's list before the session, or `session.get_providers()` after it:
    ORT drops a provider whose libraries fail to load and runs the graph on the next one silently.
    """
    missing = [p for p in requested if p not in available]
    if not missing or allow_fallback:
        return None
    # No CUDA is the root cause when TensorRT is missing too: name it, with its fix.
    first = CUDA_EP if CUDA_EP in missing else missing[0]
    fallback = next((p for p in requested if p in available), CPU_EP)
    return (
        f"KIND_{kind} instance refused: ONNX Runtime has no {first} (it has {available}), so it would "
        f"run on {fallback}. Fix: {FIXES.get(first, 'install it')}; or, to serve on {fallback} anyway, "
        f'set parameters {{ key: "{ALLOW_FALLBACK}" value: {{ string_value: "true" }} }}'
    )


# Runs beside another model's before the narrow twin is built: more than Triton's warmup makes
# (one run per warmup sample, two here), which overlaps the neighbours' loading, not their load.
# Built on the first such run, warm-up alone would build every model's twin at start: the server
# would hold hundreds of MB more for load that may never come.
TWIN_AFTER_RUNS = 3


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.narrow: ort.InferenceSession | None = None  # "adapt" only, once built
        self.gate: CoreGate | None = None
        self._twin: tuple | None = None  # what the narrow twin is built from
        self._builder: threading.Thread | None = None
        self._beside_runs = 0
        self.max_batch = int(config.get("max_batch_size", 0))
        (inp,) = config["input"]
        (out,) = config["output"]
        self.input_name, self.output_name = inp["name"], out["name"]
        self.input_dims = tuple(int(d) for d in inp["dims"])
        self.input_dtype = _numpy_dtype(inp["data_type"])
        self.output_dtype = _numpy_dtype(out["data_type"])

        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{self.name}: model file not found: {path}")

        opts = ort.SessionOptions()
        # The config's own count, else the share `serving up` decided (serving/threads.py), else
        # ORT's default (a thread per core: the native backend's behaviour).
        threads = int(_param(config, "intra_op_thread_count", "0") or 0)
        opts.intra_op_num_threads = threads or int(os.environ.get(ENV_ORT_THREADS, "0") or 0)
        spinning = os.environ.get(ENV_ORT_SPINNING)
        if spinning == "0":
            # Other sessions share these cores: an idle worker sleeps rather than spin on them.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif spinning == "run":
            # Spin within a run, stop the moment it returns ("adapt": a wide run has the cores to
            # itself): the next run of another model finds no worker of this one spinning on them.
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        opts.inter_op_num_threads = int(_param(config, "inter_op_thread_count", "0"))
        opts.log_severity_level = 3
        kind = str(args.get("model_instance_kind", "CPU"))
        trt = _tensorrt_options(config, self.name) if kind == "GPU" else None
        requested = requested_providers(kind, trt is not None)
        if kind == "GPU":  # before the first session: pip's CUDA libraries (cnn_deploy_core/cuda.py)
            why = preload_cuda_libraries(ort)
            if why:
                pb_utils.Logger.log_warn(f"{self.name}: {why}")
        allow = (_param(config, ALLOW_FALLBACK, "false") or "").strip().lower() in ("1", "true", "yes")
        # Refuse before loading (the CPU onnxruntime package on a GPU host) and after (ORT drops a
        # provider whose libraries fail to load, e.g. TensorRT, and only logs it).
        self._refuse(check_providers(requested, ort.get_available_providers(), kind, allow))
        providers = self._providers(args, requested, trt)
        try:
            self.session = ort.InferenceSession(path, opts, providers=providers)
        except Exception as e:  # corrupt or truncated file: this model only goes UNAVAILABLE
            raise pb_utils.TritonModelException(
                f"{self.name}: cannot load {path} with ONNX Runtime: {e}"
            ) from e
        self.providers = self.session.get_providers()
        self._refuse(check_providers(requested, self.providers, kind, allow))
        if any(p not in self.providers for p in requested):  # only with the fallback allowed
            pb_utils.Logger.log_warn(
                f"{self.name}: KIND_{kind} instance asked for {requested}, serving on {self.providers} "
                f"({ALLOW_FALLBACK} is set)"
            )
        # "adapt": a narrow twin of the session runs while another model computes (the gate says).
        # Built in the background once it is needed (until then such runs are wide, as with
        # "cores"): a model never busy beside another costs no second copy of its weights.
        wide, narrow = opts.intra_op_num_threads, int(os.environ.get(ENV_ORT_NARROW, "0") or 0)
        gate = os.environ.get(ENV_ORT_GATE)  # set by `serving up` with the narrow count
        if kind == "CPU" and not threads and 0 < narrow < wide and gate:
            self.gate = CoreGate(gate)
            opts.intra_op_num_threads = narrow  # the wide session has its own copy of the options
            self._twin = (path, opts, providers)
        cache = trt.get("trt_engine_cache_path") if trt and TRT_EP in self.providers else None
        # gpu-check reads this line per model (cnn_deploy/checks/gpu_verdicts.py): keep
        # "<model>: ONNX Runtime <version> on [<providers>]" and ", TensorRT engine cache <path>".
        pb_utils.Logger.log_info(
            f"{self.name}: ONNX Runtime {ort.__version__} on {self.providers}, "
            f"intra-op threads {wide or 'auto'}"
            + (f" alone, {narrow} beside another run" if self.gate else "")
            + f", spinning {SPINNING_MODES.get(spinning or '1', spinning)}"
            + (f", TensorRT engine cache {cache}" if cache else "")
        )

    def _refuse(self, problem: str | None) -> None:
        if problem:  # Triton marks this model UNAVAILABLE with this reason
            raise pb_utils.TritonModelException(f"{self.name}: {problem}")

    def _providers(self, args: dict, requested: list[str], trt: dict | None) -> list:
        available = ort.get_available_providers()
        device = {"device_id": int(args.get("model_instance_device_id", 0))}
        options = {TRT_EP: {**device, **(trt or {})}, CUDA_EP: device}
        return [(p, options[p]) if p in options else p for p in requested if p in available]

    def _validate(self, array: np.ndarray) -> str | None:
        # Triton checks shapes and dtypes against the config before we are called; this
        # guards the batch we build, and gives the same clear message if it ever gets through.
        if array.dtype != self.input_dtype:
            expected = np.dtype(self.input_dtype).name
            return f"input {self.input_name!r}: expected {expected}, got {array.dtype.name}"
        if array.ndim != len(self.input_dims) + 1 or tuple(array.shape[1:]) != self.input_dims:
            return (
                f"input {self.input_name!r}: expected shape [N, {', '.join(map(str, self.input_dims))}], "
                f"got {list(array.shape)}"
            )
        if self.max_batch and not 1 <= array.shape[0] <= self.max_batch:
            return f"batch size {array.shape[0]} outside 1..{self.max_batch}"
        return None

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        arrays, owners = [], []
        for i, request in enumerate(requests):
            array = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            problem = self._validate(array)
            if problem:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.name}: {problem}")
                )
            else:
                arrays.append(array)
                owners.append(i)
        if arrays:
            # One ORT run for the whole dynamic batch: that is what dynamic batching buys.
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            try:
                logits = self._run(batch)
            except Exception as e:
                if len(arrays) == 1:
                    responses[owners[0]] = self._error(e)
                    return responses
                # One bad request must not fail the neighbours it was batched with: re-run them one
                # by one, so only the request that fails on its own gets the error.
                pb_utils.Logger.log_warn(
                    f"{self.name}: a batch of {len(arrays)} requests failed in ONNX Runtime ({e}); "
                    "re-running them one by one"
                )
                for i, array in zip(owners, arrays, strict=True):
                    try:
                        responses[i] = self._response(self._run(array))
                    except Exception as single:
                        responses[i] = self._error(single)
                return responses
            start = 0
            for i, array in zip(owners, arrays, strict=True):
                end = start + len(array)
                responses[i] = self._response(logits[start:end])
                start = end
        return responses

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.gate is None:
            (logits,) = self.session.run([self.output_name], {self.input_name: batch})
        else:
            with self.gate.run() as alone:
                session = self.session if alone else self._beside()
                (logits,) = session.run([self.output_name], {self.input_name: batch})
        return logits.astype(self.output_dtype, copy=False)

    def _beside(self) -> ort.InferenceSession:
        """The session for a run beside another model's: the narrow twin once it is built."""
        if self.narrow is not None:
            return self.narrow
        self._beside_runs += 1
        if self._builder is None and self._beside_runs > TWIN_AFTER_RUNS:  # once: a failure logs why
            self._builder = threading.Thread(target=self._build_twin, name="narrow-twin", daemon=True)
            self._builder.start()
        return self.session

    def _build_twin(self) -> None:
        path, opts, providers = self._twin
        try:
            twin = ort.InferenceSession(path, opts, providers=providers)
            dims = [d if d > 0 else 1 for d in self.input_dims]  # warm before it serves
            twin.run(None, {self.input_name: np.zeros([1, *dims], self.input_dtype)})
        except Exception as e:  # never the request's failure: the wide session answers instead
            pb_utils.Logger.log_warn(f"{self.name}: no narrow twin ({e}); runs beside others stay wide")
            return
        self.narrow = twin
        pb_utils.Logger.log_info(
            f"{self.name}: narrow twin ready ({opts.intra_op_num_threads} intra-op threads), "
            "for runs beside another model's"
        )

    def _response(self, logits: np.ndarray):
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, logits)])

    def _error(self, error: Exception):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(f"{self.name}: ONNX Runtime failed: {error}")
        )

    def finalize(self) -> None:
        self.session = self.narrow = None
        if self.gate is not None:
            self.gate.close()
