"""Place exported models into a Triton model repository (`python -m serving repo`).

Layout, per model (Triton's `--model-config-name` picks the config):

    <repo>/<name>/configs/cpu.pbtxt   KIND_CPU, ONNX Runtime threads that fit the cores
    <repo>/<name>/configs/gpu.pbtxt   KIND_GPU, ORT's TensorRT accelerator, FP16 model
    <repo>/<name>/labels.txt          ImageNet labels: Triton's classification extension
    <repo>/<name>/<v>/model.onnx, model.fp16.onnx, golden.npz, export.json
    <repo>/<name>_trt/...             with tensorrt=True: a tensorrt_plan model whose
                                      plans serving/engines.py builds in the Triton image
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from export.fsutil import atomic_write_text, discard, sha256_file
from export.layout import (
    DEFAULT_REPOSITORY,
    FP16_FILE,
    GOLDEN_FILE,
    INPUT_NAME,
    LABELS_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    PARAM_PREFIX,
    REPORT_FILE,
    TRT_SUFFIX,
)
from export.registry import Architecture
from serving import ServingError
from serving.config import CPU, GPU, ModelConfig, Tensor, TensorRTAccelerator, export_parameters

VERSION_FILES = (MODEL_FILE, FP16_FILE, GOLDEN_FILE, REPORT_FILE)
TRT_CACHE_ROOT = "/trt-cache"  # a writable volume in docker-compose.yml


@dataclass(frozen=True)
class CpuPlan:
    """How the CPU config spends the cores: instances x intra-op threads <= cores."""

    instances: int = 1
    threads: int = max(1, os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if self.instances < 1 or self.threads < 1:
            raise ServingError("CPU instances and threads must be >= 1")


@dataclass
class Placed:
    name: str
    version: int
    new_version: bool
    path: Path
    weights_source: str

    def to_dict(self) -> dict:
        return {
            "model": self.name,
            "version": self.version,
            "new_version": self.new_version,
            "path": str(self.path),
            "weights_source": self.weights_source,
        }


def versions(model_dir: Path) -> list[int]:
    """Numeric version directories, ascending (Triton ignores the others)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _shared(arch: Architecture, report: dict, sha: str, precision: str) -> dict:
    """What every config of one architecture has in common: signature, batching, warmup, provenance."""
    return {
        "inputs": (Tensor(INPUT_NAME, arch.input_shape, format="FORMAT_NCHW"),),
        "outputs": (Tensor(OUTPUT_NAME, (arch.num_classes,), label_filename=LABELS_FILE),),
        "max_batch_size": arch.max_batch_size,
        "queue_delay_us": arch.queue_delay_us,
        "warmup_batch_sizes": (1, arch.max_batch_size),
        "parameters": export_parameters(
            {
                "architecture": report["architecture"],
                "weights_source": report["weights_source"],
                "weights_random": str(report["weights_random"]).lower(),
                "precision": precision,
                "preprocessing": report["preprocessing"],
                "export_version": report["cnn_deploy_version"],
                "model_sha256": sha,
                **report.get("metadata", {}),
            }
        ),
    }


def cpu_config(arch: Architecture, report: dict, sha: str, plan: CpuPlan) -> ModelConfig:
    shared = _shared(arch, report, sha, "fp32")
    # The native ORT backend's parameter names; our Python backend reads the same ones.
    shared["parameters"].update(intra_op_thread_count=str(plan.threads), inter_op_thread_count="1")
    return ModelConfig(
        name=arch.name,
        backend="onnxruntime",
        instance_kind="KIND_CPU",
        instance_count=plan.instances,
        default_model_filename=MODEL_FILE,
        **shared,
    )


def gpu_config(arch: Architecture, report: dict, sha: str) -> ModelConfig:
    return ModelConfig(
        name=arch.name,
        backend="onnxruntime",
        instance_kind="KIND_GPU",
        # The verified FP16 file: TensorRT (or CUDA, for nodes TensorRT declines) runs FP16,
        # within the FP16 tolerance the export measured against PyTorch.
        default_model_filename=FP16_FILE,
        accelerator=TensorRTAccelerator(precision="FP16", cache_path=f"{TRT_CACHE_ROOT}/{arch.name}"),
        **_shared(arch, report, sha, "fp16"),
    )


def trt_config(arch: Architecture, report: dict, sha: str) -> ModelConfig:
    return ModelConfig(
        name=arch.name + TRT_SUFFIX,
        platform="tensorrt_plan",
        instance_kind="KIND_GPU",
        versions_served=1,  # engines.py builds the plan of the latest export only
        **_shared(arch, report, sha, "fp16"),
    )


def _export_dir(models_dir: Path, arch: Architecture) -> tuple[Path, dict]:
    src = models_dir / arch.name
    missing = [f for f in (MODEL_FILE, GOLDEN_FILE, LABELS_FILE, REPORT_FILE) if not (src / f).is_file()]
    if missing:
        raise ServingError(
            f"no complete export of {arch.name} in {models_dir} (missing {', '.join(missing)}); "
            f"run: python -m export build {arch.name} --output {models_dir}"
        )
    try:
        report = json.loads((src / REPORT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ServingError(f"{src / REPORT_FILE} is unreadable: {e}") from e
    return src, report


def _place_version(src: Path, model_dir: Path, sha: str) -> tuple[int, bool]:
    existing = versions(model_dir)
    if existing:
        latest = model_dir / str(existing[-1]) / MODEL_FILE
        if latest.is_file() and sha256_file(latest) == sha:
            return existing[-1], False  # the same export again: no new version
    version = (existing[-1] + 1) if existing else 1
    staging = model_dir / f".{version}.staging-{os.getpid()}"  # non-numeric: Triton ignores it
    discard(staging)
    try:
        staging.mkdir(parents=True)
        for name in VERSION_FILES:
            if (src / name).is_file():
                # A copy, not a hard link: a served version must not change if someone
                # rewrites the export directory's file in place.
                shutil.copy2(src / name, staging / name)
        os.replace(staging, model_dir / str(version))
    finally:
        discard(staging)
    return version, True


def place_model(
    arch: Architecture,
    *,
    models_dir: Path,
    repository: Path,
    tensorrt: bool = False,
    cpu: CpuPlan = CpuPlan(),
) -> Placed:
    """Copy one export into the repository as a new version (or reuse an identical one)."""
    src, report = _export_dir(models_dir, arch)
    sha = sha256_file(src / MODEL_FILE)
    model_dir = repository / arch.name
    try:
        version, new = _place_version(src, model_dir, sha)
        atomic_write_text(model_dir / LABELS_FILE, (src / LABELS_FILE).read_text())
        atomic_write_text(
            model_dir / "configs" / f"{CPU}.pbtxt", cpu_config(arch, report, sha, cpu).to_pbtxt()
        )
        gpu_path = model_dir / "configs" / f"{GPU}.pbtxt"
        if (src / FP16_FILE).is_file():
            atomic_write_text(gpu_path, gpu_config(arch, report, sha).to_pbtxt())
        else:  # exported with --no-fp16: an older gpu config would point at a file this version lacks
            gpu_path.unlink(missing_ok=True)
        if tensorrt:
            _place_trt(arch, report, sha, repository, version)
    except OSError as e:
        raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from e
    return Placed(arch.name, version, new, model_dir / str(version), report["weights_source"])


def _place_trt(arch: Architecture, report: dict, sha: str, repository: Path, version: int) -> None:
    trt_dir = repository / (arch.name + TRT_SUFFIX)
    atomic_write_text(trt_dir / "configs" / f"{GPU}.pbtxt", trt_config(arch, report, sha).to_pbtxt())
    atomic_write_text(trt_dir / LABELS_FILE, (repository / arch.name / LABELS_FILE).read_text())
    engine = {
        "source": f"../{arch.name}/{version}/{MODEL_FILE}",
        "version": version,
        "input": INPUT_NAME,
        "input_dims": list(arch.input_shape),
        "max_batch_size": arch.max_batch_size,
        "opt_batch_size": max(1, arch.max_batch_size // 4),
        "precision": "fp16",
    }
    atomic_write_text(trt_dir / "engine.json", json.dumps(engine, indent=2) + "\n")


def place_models(
    archs: list[Architecture],
    *,
    models_dir: Path,
    repository: Path = DEFAULT_REPOSITORY,
    tensorrt: bool = False,
    cpu: CpuPlan = CpuPlan(),
    identity: bool = True,
    console: Console | None = None,
) -> list[Placed]:
    """Place each export; also the tiny `identity` model the load generator calibrates against."""
    console = console or Console(stderr=True)
    try:
        repository.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ServingError(f"cannot create model repository {repository}: {e.strerror or e}") from e
    placed = []
    for arch in archs:
        p = place_model(arch, models_dir=models_dir, repository=repository, tensorrt=tensorrt, cpu=cpu)
        what = "new version" if p.new_version else "unchanged, kept version"
        console.print(f"{p.name}: {what} {p.version} in {repository / p.name}", highlight=False)
        if p.weights_source.startswith("random"):
            console.print(f"[yellow]warning:[/] {p.name} has RANDOM weights ({p.weights_source})")
        placed.append(p)
    if identity:
        place_identity(repository)
    return placed


IDENTITY_MODEL = "identity"


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
    inputs = (Tensor(INPUT_NAME, (3, 224, 224), format="FORMAT_NCHW"),)
    outputs = (Tensor(OUTPUT_NAME, (1000,)),)
    config = ModelConfig(
        name=IDENTITY_MODEL,
        backend="onnxruntime",
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        instance_kind="KIND_CPU",
        instance_count=1,
        queue_delay_us=0,
        default_model_filename=MODEL_FILE,
        versions_served=1,
        warmup_batch_sizes=(1,),
        parameters={
            "intra_op_thread_count": "1",
            "inter_op_thread_count": "1",
            PARAM_PREFIX + "architecture": IDENTITY_MODEL,
        },
    )
    try:
        data = identity_onnx().SerializeToString()
        from export.fsutil import atomic_write_bytes

        atomic_write_bytes(model_dir / "1" / MODEL_FILE, data)
        for name in (CPU, GPU):
            atomic_write_text(model_dir / "configs" / f"{name}.pbtxt", config.to_pbtxt())
    except OSError as e:
        raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from e
    return model_dir
