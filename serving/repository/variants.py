"""A model's variants beside it: the INT8 mirror, the preprocessing model and image ensemble, the
TensorRT-plan model, and the tiny identity model the load generator calibrates against.

    <repo>/<name>_int8/<v>/           with an INT8 export: model.int8.onnx (cpu config) with its own
                                      golden set as golden.npz, model.int8.s8s8.onnx (gpu config) with
                                      golden.int8.s8s8.npz
    <repo>/<name>_image/              an ensemble: encoded image bytes -> preprocessing -> <name>
    <repo>/preprocess_<spec>/         the preprocessing model (Python backend) for one spec
    <repo>/<name>_trt/...             with tensorrt=True: plans built by serving/triton_side/engines.py
"""

from __future__ import annotations

import json
from pathlib import Path

import cnn_deploy_core as core_package
from cnn_deploy_core import preprocess as core_preprocess
from cnn_deploy_core.fsutil import atomic_write_bytes, atomic_write_text, sha256_file
from cnn_deploy_core.golden import INT8_CROSS_RUNTIME
from cnn_deploy_core.layout import (
    GOLDEN_FILE,
    IDENTITY_MODEL,
    IMAGE_SUFFIX,
    INPUT_NAME,
    INT8_FILE,
    INT8_GOLDEN_FILE,
    INT8_S8S8_FILE,
    INT8_S8S8_GOLDEN_FILE,
    INT8_SUFFIX,
    LABELS_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    REPORT_FILE,
    TRT_SUFFIX,
)
from cnn_deploy_core.registry import Architecture
from serving import ServingError
from serving.config import CPU, GPU
from serving.repository.configs import (
    DEFAULT_CONFIG,
    INT8_SERVED,
    identity_config,
    image_config,
    int8_cpu_config,
    int8_gpu_config,
    preprocess_config,
    preprocess_model_name,
    trt_config,
    trt_int8,
)
from serving.repository.state import ModelState
from serving.repository.versions import Version, versions

PREPROCESS_TEMPLATE = Path(__file__).parent.parent / "triton_side" / "preprocess.py"


def place_int8(arch: Architecture, served: list[Version], repository: Path, state: ModelState) -> None:
    """`<name>_int8` mirrors every version directory of `<name>` that has an INT8 file, and its config
    serves the same versions as `<name>` (`served`: those of them with an INT8 file).

    With none (an export without --int8 served alone), the INT8 model is left as it is: it goes
    once no running server serves it (placement.prune_unit), never from under one."""
    if not served:
        return
    int8_dir = repository / (arch.name + INT8_SUFFIX)
    model_dir = repository / arch.name
    # Each INT8 file beside its own golden set, under the name its config gives it (INT8_SERVED).
    copies = {
        INT8_FILE: INT8_FILE,
        INT8_GOLDEN_FILE: INT8_SERVED[INT8_FILE][1],
        INT8_S8S8_FILE: INT8_S8S8_FILE,  # the gpu config's (TensorRT's) INT8 file
        INT8_S8S8_GOLDEN_FILE: INT8_SERVED[INT8_S8S8_FILE][1],
        REPORT_FILE: REPORT_FILE,
        LABELS_FILE: LABELS_FILE,
    }
    for number in versions(model_dir):
        source = model_dir / str(number)
        if not (source / INT8_FILE).is_file():
            continue
        for src_name, dst_name in copies.items():
            src, dst = source / src_name, int8_dir / str(number) / dst_name
            if src.is_file() and (not dst.is_file() or sha256_file(dst) != sha256_file(src)):
                atomic_write_bytes(dst, src.read_bytes())
    atomic_write_bytes(int8_dir / LABELS_FILE, (model_dir / LABELS_FILE).read_bytes())
    cpu_text = int8_cpu_config(arch, served, state.cpu).to_pbtxt()
    atomic_write_text(int8_dir / "configs" / f"{CPU}.pbtxt", cpu_text)
    # As for `<name>`: Triton reads config.pbtxt when --model-config-name names a config this model
    # lacks (`serving up --config-name tuned` with another model tuned), and plain tritonserver does.
    atomic_write_text(int8_dir / DEFAULT_CONFIG, cpu_text)
    # The gpu config serves the versions exported with TensorRT's file; an older export has none.
    gpu = int8_dir / "configs" / f"{GPU}.pbtxt"
    gpu_served = [v for v in served if INT8_S8S8_FILE in v.files]
    if gpu_served:
        atomic_write_text(gpu, int8_gpu_config(arch, gpu_served).to_pbtxt())
    else:
        gpu.unlink(missing_ok=True)


def place_image_pipeline(arch: Architecture, default: Version, repository: Path) -> None:
    """The preprocessing model of this export's spec (shared by every model with that spec) and
    the `<name>_image` ensemble in front of the tensor model; the same in the cpu and gpu configs."""
    preprocessing = default.report["preprocessing"]
    name = preprocess_model_name(preprocessing)
    pre_dir = repository / name
    pre_text = preprocess_config(name, preprocessing, arch.input_shape).to_pbtxt()
    code = {
        "model.py": PREPROCESS_TEMPLATE.read_bytes(),
        # The clients' own preprocessing code, vendored: bit-identical tensors on any server.
        "cnn_deploy_core/__init__.py": Path(core_package.__file__).read_bytes(),
        "cnn_deploy_core/preprocess.py": Path(core_preprocess.__file__).read_bytes(),
    }
    for relative, data in code.items():
        atomic_write_bytes(pre_dir / "1" / relative, data)
    ens_dir = repository / (arch.name + IMAGE_SUFFIX)
    ens_text = image_config(arch, name, default).to_pbtxt()
    (ens_dir / "1").mkdir(parents=True, exist_ok=True)  # Triton wants a version directory, even empty
    atomic_write_bytes(ens_dir / LABELS_FILE, (repository / arch.name / LABELS_FILE).read_bytes())
    for config in (CPU, GPU):
        atomic_write_text(pre_dir / "configs" / f"{config}.pbtxt", pre_text)
        atomic_write_text(ens_dir / "configs" / f"{config}.pbtxt", ens_text)
    atomic_write_text(pre_dir / DEFAULT_CONFIG, pre_text)
    atomic_write_text(ens_dir / DEFAULT_CONFIG, ens_text)


def trt_engine_source(arch: Architecture, default: Version) -> dict:
    """What serving/triton_side/engines.py builds the plan from, and the golden set and tolerance it
    checks the plan against. INT8 (explicit quantization) from the S8S8 QDQ graph when the export has
    one, held to that graph's own cross-runtime tolerance; otherwise FP16 from the fp32 graph."""
    version = f"../{arch.name}/{default.number}"
    int8 = trt_int8(default)
    source, golden = (INT8_S8S8_FILE, INT8_S8S8_GOLDEN_FILE) if int8 else (MODEL_FILE, GOLDEN_FILE)
    precision, tolerance = ("int8", INT8_CROSS_RUNTIME) if int8 else ("fp16", "fp16")
    return {
        "source": f"{version}/{source}",
        "precision": precision,
        "check": {"golden": f"{version}/{golden}", "tolerance": tolerance},
    }


def place_trt(arch: Architecture, served: list[Version], repository: Path) -> None:
    trt_dir = repository / (arch.name + TRT_SUFFIX)
    default = served[0]
    atomic_write_text(trt_dir / "configs" / f"{GPU}.pbtxt", trt_config(arch, served).to_pbtxt())
    atomic_write_bytes(trt_dir / LABELS_FILE, (repository / arch.name / LABELS_FILE).read_bytes())
    engine = {**trt_engine_source(arch, default), "version": default.number, "input": INPUT_NAME}
    engine.update(
        input_dims=list(arch.input_shape),
        max_batch_size=arch.gpu.max_batch_size,
        opt_batch_size=arch.gpu.opt_batch_size,  # as the gpu configs' TensorRT profile
    )
    atomic_write_text(trt_dir / "engine.json", json.dumps(engine, indent=2) + "\n")


def identity_onnx(input_shape: tuple[int, ...] = (3, 224, 224), classes: int = 1000):
    """A trivial model with a classifier's wire format: image batch in, its first `classes` values out.

    The load generator measures its own capacity against it: same request and response sizes
    as the real models, next to no compute.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_in = int(np.prod(input_shape))
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
            helper.make_node("Slice", ["flat", "starts", "ends", "axes"], [OUTPUT_NAME]),
        ],
        IDENTITY_MODEL,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", classes])],
        initializer=[
            numpy_helper.from_array(np.array([v], dtype=np.int64), name)
            for name, v in (("starts", 0), ("ends", min(classes, n_in)), ("axes", 1))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="cnn-deploy")
    onnx.checker.check_model(model)
    return model


def place_identity(repository: Path, *, max_batch_size: int = 64) -> Path:
    """The `identity` model (see identity_onnx), CPU-only in both configs: it measures the client."""
    model_dir = repository / IDENTITY_MODEL
    config = identity_config(max_batch_size)
    try:
        atomic_write_bytes(model_dir / "1" / MODEL_FILE, identity_onnx().SerializeToString())
        for name in (CPU, GPU):
            atomic_write_text(model_dir / "configs" / f"{name}.pbtxt", config.to_pbtxt())
        atomic_write_text(model_dir / DEFAULT_CONFIG, config.to_pbtxt())
    except OSError as e:
        raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from e
    return model_dir
