"""Place exported models into a Triton model repository (`python -m serving repo | rollback`).

Layout, per model (Triton's `--model-config-name` picks the config):

    <repo>/<name>/configs/cpu.pbtxt   KIND_CPU, ONNX Runtime threads that fit the cores
    <repo>/<name>/configs/gpu.pbtxt   KIND_GPU, ORT's TensorRT accelerator, FP16 model
    <repo>/<name>/labels.txt          the served versions' labels: Triton's classification extension
    <repo>/<name>/serving.json        how this model is served: CPU plan, pinned version (rollback)
    <repo>/<name>/<v>/                model.onnx, model.fp16.onnx, golden.npz, export.json, labels.txt
    <repo>/<name>_trt/, _int8/, _image/, preprocess_<spec>/   its variants (variants.py)

The modules, by job: state.py (serving.json), versions.py (version directories and which ones one
config serves), configs.py (pure config builders), placement.py (placing an export, pruning),
variants.py (INT8 mirror, image pipeline, TensorRT plans, identity model), rollback.py, units.py
(a model and its variants as one unit for versions; serving/live.py reloads a running server).
"""

from serving.repository.configs import (
    DEFAULT_CONFIG,
    PREPROCESS_INSTANCES,
    PREPROCESS_MAX_BATCH,
    TRT_CACHE_ROOT,
    CpuPlan,
    candidate_config,
    cpu_config,
    gpu_config,
    identity_config,
    image_config,
    int8_cpu_config,
    int8_gpu_config,
    preprocess_config,
    preprocess_model_name,
    trt_config,
)
from serving.repository.placement import (
    DEFAULT_KEEP,
    Placed,
    place_model,
    place_models,
    prune,
    prune_unit,
    write_configs,
)
from serving.repository.rollback import rollback
from serving.repository.state import STATE_FILE, ModelState
from serving.repository.variants import PREPROCESS_TEMPLATE, identity_onnx, place_identity
from serving.repository.versions import (
    REQUIRED_FILES,
    SERVED_VERSIONS,
    Version,
    read_version,
    served_versions,
    versions,
)

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_KEEP",
    "PREPROCESS_INSTANCES",
    "PREPROCESS_MAX_BATCH",
    "PREPROCESS_TEMPLATE",
    "REQUIRED_FILES",
    "SERVED_VERSIONS",
    "STATE_FILE",
    "TRT_CACHE_ROOT",
    "CpuPlan",
    "ModelState",
    "Placed",
    "Version",
    "candidate_config",
    "cpu_config",
    "gpu_config",
    "identity_config",
    "identity_onnx",
    "image_config",
    "int8_cpu_config",
    "int8_gpu_config",
    "place_identity",
    "place_model",
    "place_models",
    "preprocess_config",
    "preprocess_model_name",
    "prune",
    "prune_unit",
    "read_version",
    "rollback",
    "served_versions",
    "trt_config",
    "versions",
    "write_configs",
]
