"""Pure config builders: (architecture, served versions, plan) -> ModelConfig. No file is written here.

configs/cpu.pbtxt   KIND_CPU, ONNX Runtime threads that fit the cores
configs/gpu.pbtxt   KIND_GPU, ORT's TensorRT accelerator, FP16 model
<name>_int8         the same signature and batching, the INT8 file
<name>_trt          a tensorrt_plan model whose plans serving/triton_side/engines.py builds in the
                    Triton image
<name>_image        an ensemble: encoded image bytes -> preprocessing -> <name>
preprocess_<spec>   the preprocessing model (Python backend) for one spec
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from cnn_deploy_core.golden import GOLDEN_PARAM, INT8_CROSS_RUNTIME, TOLERANCE_PARAM
from cnn_deploy_core.layout import (
    FP16_FILE,
    GOLDEN_FILE,
    IDENTITY_MODEL,
    IMAGE_INPUT,
    IMAGE_SUFFIX,
    INPUT_NAME,
    INT8_FILE,
    INT8_S8S8_FILE,
    INT8_S8S8_GOLDEN_FILE,
    INT8_SUFFIX,
    LABELS_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    PARAM_PREFIX,
    TRT_SUFFIX,
)
from cnn_deploy_core.preprocess import MAX_PIXELS, Preprocessing
from cnn_deploy_core.registry import Architecture
from serving import ServingError
from serving.config import (
    EnsembleStep,
    ModelConfig,
    Tensor,
    TensorRTAccelerator,
    TensorRTProfile,
    export_parameters,
)
from serving.repository.versions import Version
from serving.threads import CORES_RESOURCE

TRT_CACHE_ROOT = "/trt-cache"  # a writable volume in docker-compose.yml
TRT_TIMING_CACHE = f"{TRT_CACHE_ROOT}/timing"  # one timing cache for every model on the volume
PREPROCESS_MAX_BATCH = 64  # the registry's largest max_batch_size: one preprocessing model serves all
PREPROCESS_INSTANCES = 1  # CPU processes decoding images (in the gpu config too: no GPU decoder here)
DEFAULT_CONFIG = "config.pbtxt"


@dataclass(frozen=True)
class CpuPlan:
    """How the CPU config spends the cores: instances x intra-op threads.

    threads 0 (the default): no count in the config; `serving up` gives each session its share
    of the cores among everything the server loads (serving/threads.py).
    """

    instances: int = 1
    threads: int = 0

    def __post_init__(self) -> None:
        if self.instances < 1 or self.threads < 0:
            raise ServingError("CPU instances must be >= 1 and threads >= 0 (0: a share of the cores)")


def _shared(arch: Architecture, served: list[Version], precision: str, queue_delay_us: int) -> dict:
    """What every config of one architecture has in common: signature, batching, warmup, provenance."""
    default = served[0]
    report = default.report
    described = {str(v.number): v.describe() for v in served}
    return {
        "inputs": (Tensor(INPUT_NAME, arch.input_shape, format="FORMAT_NCHW"),),
        "outputs": (Tensor(OUTPUT_NAME, (arch.num_classes,), label_filename=LABELS_FILE),),
        "max_batch_size": arch.max_batch_size,
        "queue_delay_us": queue_delay_us,
        "warmup_batch_sizes": (1, arch.max_batch_size),
        "versions": tuple(v.number for v in served),
        "parameters": export_parameters(
            {
                "architecture": report["architecture"],
                # The default version's (the newest served) provenance; every served version's
                # own is in `versions`.
                **{k: described[str(default.number)][k] for k in ("weights_source", "weights_random")},
                "precision": precision,
                "preprocessing": report["preprocessing"],
                "export_version": report["cnn_deploy_version"],
                "model_sha256": described[str(default.number)]["model_sha256"],
                "versions": described,
                **report.get("metadata", {}),
            }
        ),
    }


def cpu_config(arch: Architecture, served: list[Version], plan: CpuPlan) -> ModelConfig:
    shared = _shared(arch, served, "fp32", arch.cpu_queue_delay_us)
    # The native ORT backend's parameter names; our Python backend reads the same ones.
    shared["parameters"].update(intra_op_thread_count=str(plan.threads), inter_op_thread_count="1")
    return ModelConfig(
        name=arch.name,
        backend="onnxruntime",
        instance_kind="KIND_CPU",
        instance_count=plan.instances,
        default_model_filename=MODEL_FILE,
        # Sessions whose threads the server decides take turns on the cores (policy "turns");
        # a config with its own thread count (--cpu-threads, a tuner plan like 1x2) runs free.
        rate_limiter=() if plan.threads else ((CORES_RESOURCE, 1),),
        **shared,
    )


def gpu_sized(arch: Architecture) -> Architecture:
    """The architecture with the registry's GPU batch range (`arch.gpu`) in place of the CPU's."""
    return replace(arch, max_batch_size=arch.gpu.max_batch_size)


def tensorrt_accelerator(arch: Architecture, precision: str, name: str, *, cuda_graph: bool = False):
    """ONNX Runtime's TensorRT EP for one GPU config: engines and timings cached on the volume, one
    profile over the dynamic batcher's whole batch range (1..max_batch_size), so the warm-up (batch 1
    and max) builds the one engine before the model is READY and no later batch triggers a rebuild.
    The profile is tuned for the smallest preferred batch (`arch.gpu.opt_batch_size`)."""
    return TensorRTAccelerator(
        precision=precision,
        cache_path=f"{TRT_CACHE_ROOT}/{name}",
        timing_cache_path=TRT_TIMING_CACHE,
        cuda_graph=cuda_graph,
        # opt as the `_trt` plan's engine.json (serving/repository/variants.py): one rule for both.
        profile=TensorRTProfile(
            INPUT_NAME, arch.input_shape, arch.gpu.max_batch_size, arch.gpu.opt_batch_size
        ),
    )


def gpu_config(arch: Architecture, served: list[Version], *, cuda_graph: bool = False) -> ModelConfig:
    arch = gpu_sized(arch)
    return ModelConfig(
        name=arch.name,
        backend="onnxruntime",
        instance_kind="KIND_GPU",
        instance_count=arch.gpu.instances,
        preferred_batch_sizes=arch.gpu.preferred_batch_sizes,
        # The verified FP16 file: TensorRT (or CUDA, for nodes TensorRT declines) runs FP16,
        # within the FP16 tolerance the export measured against PyTorch.
        default_model_filename=FP16_FILE,
        accelerator=tensorrt_accelerator(arch, "FP16", arch.name, cuda_graph=cuda_graph),
        **_shared(arch, served, "fp16", arch.gpu_queue_delay_us),
    )


# `<name>_int8`'s two INT8 files (export/int8.py's SCHEMES) -> (scheme, the golden set that file made,
# as serving/repository/variants.py places it in the version folder). Each config names its file's own
# set (GOLDEN_PARAM), so `clients verify` checks a file against the answers it gave, never the other's.
INT8_SERVED = {
    INT8_FILE: ("u8s8", GOLDEN_FILE),  # the folder's default set, for clients that read no parameter
    INT8_S8S8_FILE: ("s8s8", INT8_S8S8_GOLDEN_FILE),
}


def _int8(config: ModelConfig, filename: str, accelerator: TensorRTAccelerator | None = None) -> ModelConfig:
    """`<name>_int8`: the same signature and batching, one INT8 file, its precision, scheme and golden
    set recorded."""
    scheme, golden = INT8_SERVED[filename]
    parameters = {
        **config.parameters,
        PARAM_PREFIX + "precision": "int8",
        PARAM_PREFIX + "int8_scheme": scheme,
        GOLDEN_PARAM: golden,
    }
    return replace(
        config,
        name=config.name + INT8_SUFFIX,
        default_model_filename=filename,
        parameters=parameters,
        accelerator=accelerator if config.accelerator else None,
    )


def int8_cpu_config(arch: Architecture, served: list[Version], plan: CpuPlan) -> ModelConfig:
    return _int8(cpu_config(arch, served, plan), INT8_FILE)  # u8s8: what ORT's CPU kernels run fastest


def int8_gpu_config(arch: Architecture, served: list[Version], *, cuda_graph: bool = False) -> ModelConfig:
    # TensorRT reads the QDQ graph as explicit quantization: INT8 kernels where the graph says so.
    # The signed, symmetric file (export/int8.py's s8s8 scheme): TensorRT builds no other form.
    # Its answers are held to the S8S8 golden set's cross-runtime INT8 tolerance: TensorRT rounds
    # differently from the ONNX Runtime kernels that made that set's outputs from the same file.
    # Untested: these machines have no GPU.
    accelerator = tensorrt_accelerator(arch, "INT8", arch.name + INT8_SUFFIX, cuda_graph=cuda_graph)
    config = _int8(gpu_config(arch, served), INT8_S8S8_FILE, accelerator)
    return replace(config, parameters={**config.parameters, TOLERANCE_PARAM: INT8_CROSS_RUNTIME})


def candidate_config(arch: Architecture, served: list[Version], tuned: dict) -> ModelConfig:
    """A CPU config with a tuner's settings: precision, instances x threads, batching."""
    arch = replace(arch, max_batch_size=tuned["max_batch_size"], cpu_queue_delay_us=tuned["queue_delay_us"])
    plan = CpuPlan(tuned["instances"], tuned["threads"])
    config = (int8_cpu_config if tuned["precision"] == "int8" else cpu_config)(arch, served, plan)
    preferred = tuple(b for b in tuned.get("preferred", ()) if b <= arch.max_batch_size)
    return replace(config, preferred_batch_sizes=preferred, warmup_batch_sizes=(1, arch.max_batch_size))


def trt_int8(default: Version) -> bool:
    """`<name>_trt` is an INT8 plan when its export has TensorRT's S8S8 graph and that graph's golden
    set (export/int8.py); FP16 otherwise."""
    return INT8_S8S8_FILE in default.files and INT8_S8S8_GOLDEN_FILE in default.files


def trt_config(arch: Architecture, served: list[Version]) -> ModelConfig:
    # engines.py builds the plan of one export only, in the version directory of that export;
    # pinned (`specific`) like every variant, so a rollback reaches the plan too. An INT8 plan is
    # held to the fp32 golden set's cross-runtime INT8 tolerance (clients verify `<name>_trt` with it).
    int8 = trt_int8(served[0])
    shared = _shared(gpu_sized(arch), served[:1], "int8" if int8 else "fp16", arch.gpu_queue_delay_us)
    if int8:
        shared["parameters"][TOLERANCE_PARAM] = INT8_CROSS_RUNTIME
    return ModelConfig(
        name=arch.name + TRT_SUFFIX,
        platform="tensorrt_plan",
        instance_kind="KIND_GPU",
        instance_count=arch.gpu.instances,
        preferred_batch_sizes=arch.gpu.preferred_batch_sizes,
        **shared,
    )


def preprocess_model_name(preprocessing: dict) -> str:
    """One preprocessing model per distinct spec, named after it: preprocess_256_224_bilinear."""
    spec = Preprocessing.from_dict(preprocessing)
    name = f"preprocess_{spec.resize}_{spec.crop}_{spec.interpolation}"
    if (spec.mean, spec.std) != (Preprocessing().mean, Preprocessing().std):
        digest = hashlib.sha256(json.dumps([spec.mean, spec.std]).encode()).hexdigest()[:8]
        name += f"_{digest}"
    return name


def preprocess_config(name: str, preprocessing: dict, input_shape: tuple[int, ...]) -> ModelConfig:
    return ModelConfig(
        name=name,
        backend="python",
        inputs=(Tensor(IMAGE_INPUT, (1,), data_type="TYPE_STRING"),),
        outputs=(Tensor(INPUT_NAME, input_shape),),
        max_batch_size=PREPROCESS_MAX_BATCH,
        instance_kind="KIND_CPU",
        instance_count=PREPROCESS_INSTANCES,
        # No queue delay: each image is decoded on its own, so waiting for a batch saves nothing but
        # a message to the backend, and costs a lone request the wait (0.6 ms at p50, ResNet-50's
        # images at c=1; under load requests still batch while the instance is busy).
        queue_delay_us=0,
        warmup_batch_sizes=(),  # Triton's random warmup bytes are not an image
        parameters=export_parameters(
            {"preprocessing": preprocessing, "max_pixels": str(MAX_PIXELS), "role": "preprocessing"}
        ),
    )


def image_config(arch: Architecture, preprocess: str, default: Version) -> ModelConfig:
    """`<name>_image`: encoded image bytes -> the preprocessing model -> the model's logits."""
    return ModelConfig(
        name=arch.name + IMAGE_SUFFIX,
        platform="ensemble",
        inputs=(Tensor(IMAGE_INPUT, (1,), data_type="TYPE_STRING"),),
        outputs=(Tensor(OUTPUT_NAME, (arch.num_classes,), label_filename=LABELS_FILE),),
        max_batch_size=arch.max_batch_size,
        warmup_batch_sizes=(),
        ensemble_steps=(
            EnsembleStep(preprocess, {IMAGE_INPUT: IMAGE_INPUT}, {INPUT_NAME: "preprocessed"}),
            EnsembleStep(arch.name, {INPUT_NAME: "preprocessed"}, {OUTPUT_NAME: OUTPUT_NAME}),
        ),
        parameters=export_parameters(
            {
                "architecture": arch.name,
                "preprocessing": default.report["preprocessing"],
                "tensor_model": arch.name,
                "preprocess_model": preprocess,
            }
        ),
    )


def identity_config(max_batch_size: int = 64) -> ModelConfig:
    """The `identity` model's config, CPU-only in both configs: it measures the client."""
    return ModelConfig(
        name=IDENTITY_MODEL,
        backend="onnxruntime",
        inputs=(Tensor(INPUT_NAME, (3, 224, 224), format="FORMAT_NCHW"),),
        outputs=(Tensor(OUTPUT_NAME, (1000,)),),
        max_batch_size=max_batch_size,
        instance_kind="KIND_CPU",
        instance_count=1,
        queue_delay_us=0,
        default_model_filename=MODEL_FILE,
        warmup_batch_sizes=(1,),
        parameters={
            "intra_op_thread_count": "1",
            "inter_op_thread_count": "1",
            PARAM_PREFIX + "architecture": IDENTITY_MODEL,
        },
    )
