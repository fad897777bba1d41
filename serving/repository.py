"""Place exported models into a Triton model repository (`python -m serving repo | rollback`).

Layout, per model (Triton's `--model-config-name` picks the config):

    <repo>/<name>/configs/cpu.pbtxt   KIND_CPU, ONNX Runtime threads that fit the cores
    <repo>/<name>/configs/gpu.pbtxt   KIND_GPU, ORT's TensorRT accelerator, FP16 model
    <repo>/<name>/labels.txt          the served versions' labels: Triton's classification extension
    <repo>/<name>/serving.json        how this model is served: CPU plan, pinned version (rollback)
    <repo>/<name>/<v>/                model.onnx, model.fp16.onnx, golden.npz, export.json, labels.txt
    <repo>/<name>_trt/...             with tensorrt=True: a tensorrt_plan model whose
                                      plans serving/engines.py builds in the Triton image
    <repo>/<name>_int8/<v>/           with an INT8 export: model.int8.onnx and its own golden set
    <repo>/<name>_image/              an ensemble: encoded image bytes -> preprocessing -> <name>
    <repo>/preprocess_<spec>/         the preprocessing model (Python backend) for one spec

Every version directory describes itself (its export.json and labels.txt). Triton keeps one config
and one label file per model, so a config serves several versions only when they agree on labels,
preprocessing and files: a client asking for version N then gets N's preprocessing and labels.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console

import cnn_deploy_core as core_package
from cnn_deploy_core import preprocess as core_preprocess
from cnn_deploy_core.fsutil import atomic_write_bytes, atomic_write_text, discard, sha256_file
from cnn_deploy_core.layout import (
    FP16_FILE,
    GOLDEN_FILE,
    IDENTITY_MODEL,
    IMAGE_INPUT,
    IMAGE_SUFFIX,
    INPUT_NAME,
    INT8_FILE,
    INT8_GOLDEN_FILE,
    INT8_SUFFIX,
    LABELS_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    PARAM_PREFIX,
    REPORT_FILE,
    TRT_SUFFIX,
    VERSION_FILES,
)
from cnn_deploy_core.preprocess import MAX_PIXELS, Preprocessing
from cnn_deploy_core.registry import Architecture
from serving import ServingError
from serving.config import CPU, GPU, EnsembleStep, ModelConfig, Tensor, TensorRTAccelerator, export_parameters

TRT_CACHE_ROOT = "/trt-cache"  # a writable volume in docker-compose.yml
PREPROCESS_TEMPLATE = Path(__file__).parent / "models" / "preprocess.py"
PREPROCESS_MAX_BATCH = 64  # the registry's largest max_batch_size: one preprocessing model serves all
PREPROCESS_INSTANCES = 1  # CPU processes decoding images (in the gpu config too: no GPU decoder here)

SERVED_VERSIONS = 2  # the latest and, when compatible, the one before it (for rollback by version)
DEFAULT_KEEP = 3  # version directories kept on disk by `serving repo` (served ones always stay)
STATE_FILE = "serving.json"
DEFAULT_CONFIG = "config.pbtxt"
REQUIRED_FILES = (MODEL_FILE, GOLDEN_FILE, LABELS_FILE, REPORT_FILE)


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


@dataclass
class ModelState:
    """`<repo>/<name>/serving.json`: what a regenerated config must keep (rollback re-writes configs)."""

    cpu: CpuPlan = field(default_factory=CpuPlan)
    tensorrt: bool = False
    pinned: int | None = None  # set by rollback: serve only this version
    tuned: dict | None = None  # set by `serving tune`: the winner, regenerated with every placement

    @classmethod
    def load(cls, model_dir: Path) -> ModelState:
        path = model_dir / STATE_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(
                cpu=CpuPlan(**data["cpu"]),
                tensorrt=bool(data["tensorrt"]),
                pinned=data["pinned"],
                tuned=data.get("tuned"),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ServingError(f"{path} is unreadable ({e}); delete it to start from the defaults") from e

    def save(self, model_dir: Path) -> None:
        atomic_write_text(model_dir / STATE_FILE, json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class Version:
    """One version directory, read back: what it was exported from and what it holds."""

    number: int
    path: Path
    report: dict  # its export.json
    files: tuple[str, ...]  # which of VERSION_FILES it holds

    @property
    def labels(self) -> Path:
        return self.path / LABELS_FILE

    def interface(self) -> tuple:
        """What must agree for two versions to share one config and one label file."""
        labels = hashlib.sha256(self.labels.read_bytes()).hexdigest() if self.labels.is_file() else None
        return (
            labels,
            json.dumps(self.report.get("preprocessing"), sort_keys=True),
            tuple(self.report.get("input_shape") or ()),
            FP16_FILE in self.files,
        )

    def describe(self) -> dict[str, str]:
        """Per-version provenance, as served in the config's `cnn_deploy.versions` parameter."""
        return {
            "weights_source": str(self.report.get("weights_source")),
            "weights_random": str(self.report.get("weights_random")).lower(),
            "model_sha256": sha256_file(self.path / MODEL_FILE),
            "export_version": str(self.report.get("cnn_deploy_version")),
        }


@dataclass
class Placed:
    name: str
    version: int
    new_version: bool
    path: Path
    weights_source: str
    served: list[int] = field(default_factory=list)
    pruned: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.name,
            "version": self.version,
            "new_version": self.new_version,
            "path": str(self.path),
            "weights_source": self.weights_source,
            "served_versions": self.served,
            "pruned_versions": self.pruned,
        }


def versions(model_dir: Path) -> list[int]:
    """Numeric version directories, ascending (Triton ignores the others)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def read_version(model_dir: Path, number: int) -> Version:
    path = model_dir / str(number)
    missing = [f for f in (MODEL_FILE, REPORT_FILE) if not (path / f).is_file()]
    if missing:
        raise ServingError(f"{path} is incomplete (missing {', '.join(missing)})")
    try:
        report = json.loads((path / REPORT_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ServingError(f"{path / REPORT_FILE} is unreadable: {e}") from e
    return Version(number, path, report, tuple(f for f in VERSION_FILES if (path / f).is_file()))


def served_versions(
    model_dir: Path, pinned: int | None = None, count: int = SERVED_VERSIONS
) -> list[Version]:
    """The versions one config serves, newest first: the pinned one alone, else the latest and up to
    `count - 1` older ones that share its labels, preprocessing and files."""
    numbers = versions(model_dir)
    if not numbers:
        raise ServingError(f"{model_dir} has no version directory")
    if pinned is not None:
        if pinned not in numbers:
            raise ServingError(f"{model_dir.name}: pinned version {pinned} no longer exists")
        return [read_version(model_dir, pinned)]
    latest = read_version(model_dir, numbers[-1])
    served = [latest]
    for number in reversed(numbers[:-1]):
        if len(served) == count:
            break
        try:
            older = read_version(model_dir, number)
        except ServingError:
            continue  # a damaged old version is not served
        if older.interface() == latest.interface():
            served.append(older)
    return served


def _shared(arch: Architecture, served: list[Version], precision: str) -> dict:
    """What every config of one architecture has in common: signature, batching, warmup, provenance."""
    default = served[0]
    report = default.report
    described = {str(v.number): v.describe() for v in served}
    return {
        "inputs": (Tensor(INPUT_NAME, arch.input_shape, format="FORMAT_NCHW"),),
        "outputs": (Tensor(OUTPUT_NAME, (arch.num_classes,), label_filename=LABELS_FILE),),
        "max_batch_size": arch.max_batch_size,
        "queue_delay_us": arch.queue_delay_us,
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
    shared = _shared(arch, served, "fp32")
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


def gpu_config(arch: Architecture, served: list[Version]) -> ModelConfig:
    return ModelConfig(
        name=arch.name,
        backend="onnxruntime",
        instance_kind="KIND_GPU",
        # The verified FP16 file: TensorRT (or CUDA, for nodes TensorRT declines) runs FP16,
        # within the FP16 tolerance the export measured against PyTorch.
        default_model_filename=FP16_FILE,
        accelerator=TensorRTAccelerator(precision="FP16", cache_path=f"{TRT_CACHE_ROOT}/{arch.name}"),
        **_shared(arch, served, "fp16"),
    )


def _int8(config: ModelConfig, accelerator: TensorRTAccelerator | None = None) -> ModelConfig:
    """`<name>_int8`: the same signature and batching, the INT8 file, its precision recorded."""
    parameters = {**config.parameters, PARAM_PREFIX + "precision": "int8"}
    return replace(
        config,
        name=config.name + INT8_SUFFIX,
        default_model_filename=INT8_FILE,
        parameters=parameters,
        accelerator=accelerator if config.accelerator else None,
    )


def int8_cpu_config(arch: Architecture, served: list[Version], plan: CpuPlan) -> ModelConfig:
    return _int8(cpu_config(arch, served, plan))


def int8_gpu_config(arch: Architecture, served: list[Version]) -> ModelConfig:
    # TensorRT reads the QDQ graph as explicit quantization: INT8 kernels where the graph says so.
    # Untested: these machines have no GPU.
    cache = f"{TRT_CACHE_ROOT}/{arch.name}{INT8_SUFFIX}"
    return _int8(gpu_config(arch, served), TensorRTAccelerator(precision="INT8", cache_path=cache))


def candidate_config(arch: Architecture, served: list[Version], tuned: dict) -> ModelConfig:
    """A CPU config with a tuner's settings: precision, instances x threads, batching."""
    arch = replace(arch, max_batch_size=tuned["max_batch_size"], queue_delay_us=tuned["queue_delay_us"])
    plan = CpuPlan(tuned["instances"], tuned["threads"])
    config = (int8_cpu_config if tuned["precision"] == "int8" else cpu_config)(arch, served, plan)
    preferred = tuple(b for b in tuned.get("preferred", ()) if b <= arch.max_batch_size)
    return replace(config, preferred_batch_sizes=preferred, warmup_batch_sizes=(1, arch.max_batch_size))


def trt_config(arch: Architecture, served: list[Version]) -> ModelConfig:
    shared = _shared(arch, served[:1], "fp16")  # engines.py builds the plan of one export only
    shared["versions"] = ()  # the plan's own version directory: Triton's default, the latest
    return ModelConfig(
        name=arch.name + TRT_SUFFIX, platform="tensorrt_plan", instance_kind="KIND_GPU", **shared
    )


def _export_dir(models_dir: Path, arch: Architecture) -> tuple[Path, dict]:
    src = models_dir / arch.name
    missing = [f for f in REQUIRED_FILES if not (src / f).is_file()]
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


def _without_durations(value):
    if isinstance(value, dict):
        return {k: _without_durations(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_durations(v) for v in value]
    return value


def _file_digest(path: Path) -> str:
    """sha256 of a file; of export.json without its step durations, which differ on every run."""
    if path.name != REPORT_FILE:
        return sha256_file(path)
    try:
        report = _without_durations(json.loads(path.read_text()))
    except (OSError, ValueError):
        return sha256_file(path)
    return hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()


def _fingerprint(directory: Path) -> dict[str, str]:
    """A digest of every version file a directory holds: two exports are the same only if all match."""
    return {name: _file_digest(directory / name) for name in VERSION_FILES if (directory / name).is_file()}


def _place_version(src: Path, model_dir: Path) -> tuple[int, bool]:
    existing = versions(model_dir)
    wanted = _fingerprint(src)
    if existing and _fingerprint(model_dir / str(existing[-1])) == wanted:
        return existing[-1], False  # the same export again, every file: no new version
    version = (existing[-1] + 1) if existing else 1
    staging = model_dir / f".{version}.staging-{os.getpid()}"  # non-numeric: Triton ignores it
    discard(staging)
    try:
        staging.mkdir(parents=True)
        for name in wanted:
            # A copy, not a hard link: a served version must not change if someone
            # rewrites the export directory's file in place.
            shutil.copy2(src / name, staging / name)
        os.replace(staging, model_dir / str(version))
    finally:
        discard(staging)
    return version, True


def prune(model_dir: Path, keep: int, protect: set[int]) -> list[int]:
    """Delete all but the newest `keep` version directories, never one in `protect` (served)."""
    if keep < 1:
        raise ServingError(f"--keep must be >= 1, got {keep}")
    numbers = versions(model_dir)
    doomed = [n for n in numbers[: max(0, len(numbers) - keep)] if n not in protect]
    for n in doomed:
        # Renamed first (Triton ignores non-numeric names), so no half-deleted version is ever seen.
        trash = model_dir / f".{n}.deleted-{os.getpid()}"
        os.replace(model_dir / str(n), trash)
        discard(trash)
    return doomed


def write_configs(arch: Architecture, model_dir: Path, state: ModelState) -> list[Version]:
    """(Re)write a model's configs and label file from its version directories; returns the served."""
    served = served_versions(model_dir, state.pinned)
    labels = served[0].labels if served[0].labels.is_file() else model_dir / LABELS_FILE
    if not labels.is_file():
        raise ServingError(f"{model_dir}: no {LABELS_FILE} in version {served[0].number}")
    atomic_write_bytes(model_dir / LABELS_FILE, labels.read_bytes())
    cpu_text = cpu_config(arch, served, state.cpu).to_pbtxt()
    atomic_write_text(model_dir / "configs" / f"{CPU}.pbtxt", cpu_text)
    # Triton falls back to config.pbtxt when --model-config-name names a config a model lacks
    # (a `tuned` config exists for the tuned model only); plain tritonserver reads it too.
    atomic_write_text(model_dir / DEFAULT_CONFIG, cpu_text)
    gpu_path = model_dir / "configs" / f"{GPU}.pbtxt"
    if all(FP16_FILE in v.files for v in served):
        atomic_write_text(gpu_path, gpu_config(arch, served).to_pbtxt())
    else:  # exported with --no-fp16: a gpu config would point at a file these versions lack
        gpu_path.unlink(missing_ok=True)
    if state.tensorrt:
        _place_trt(arch, served, model_dir.parent)
    int8_served = [v for v in served if INT8_FILE in v.files]
    _place_int8(arch, int8_served, model_dir.parent, state)
    _place_image_pipeline(arch, served[0], model_dir.parent)
    if state.tuned:
        int8 = state.tuned["precision"] == "int8"
        if int8 and not int8_served:
            state.tuned = None  # the tuned precision is gone with this export: back to the cpu config
        else:
            target = model_dir.parent / (arch.name + (INT8_SUFFIX if int8 else "")) / "configs"
            text = candidate_config(arch, int8_served if int8 else served, state.tuned).to_pbtxt()
            atomic_write_text(target / f"{state.tuned['config_name']}.pbtxt", text)
    return served


def _place_int8(arch: Architecture, served: list[Version], repository: Path, state: ModelState) -> None:
    """`<name>_int8` mirrors the served versions that have an INT8 file; none: no INT8 model."""
    int8_dir = repository / (arch.name + INT8_SUFFIX)
    if not served:
        discard(int8_dir)  # an export without --int8 is served alone: no stale INT8 model beside it
        return
    wanted = {v.number for v in served}
    for old in versions(int8_dir):
        if old not in wanted:
            discard(int8_dir / str(old))
    for v in served:
        target = int8_dir / str(v.number)
        copies = {
            INT8_FILE: INT8_FILE,
            INT8_GOLDEN_FILE: GOLDEN_FILE,
            REPORT_FILE: REPORT_FILE,
            LABELS_FILE: LABELS_FILE,
        }
        for src_name, dst_name in copies.items():
            src, dst = v.path / src_name, target / dst_name
            if src.is_file() and (not dst.is_file() or sha256_file(dst) != sha256_file(src)):
                atomic_write_bytes(dst, src.read_bytes())
    atomic_write_bytes(int8_dir / LABELS_FILE, (repository / arch.name / LABELS_FILE).read_bytes())
    atomic_write_text(
        int8_dir / "configs" / f"{CPU}.pbtxt", int8_cpu_config(arch, served, state.cpu).to_pbtxt()
    )
    atomic_write_text(int8_dir / "configs" / f"{GPU}.pbtxt", int8_gpu_config(arch, served).to_pbtxt())


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
        queue_delay_us=500,
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


def _place_image_pipeline(arch: Architecture, default: Version, repository: Path) -> None:
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


def place_model(
    arch: Architecture,
    *,
    models_dir: Path,
    repository: Path,
    tensorrt: bool = False,
    cpu: CpuPlan | None = None,
    keep: int | None = DEFAULT_KEEP,
) -> Placed:
    """Copy one export into the repository as a new version (or reuse an identical one)."""
    src, report = _export_dir(models_dir, arch)
    model_dir = repository / arch.name
    try:
        version, new = _place_version(src, model_dir)
        state = ModelState.load(model_dir)
        # Placing an export rolls forward: a version pinned by `rollback` is released.
        state.pinned = None
        state.cpu = cpu or state.cpu
        state.tensorrt = tensorrt or state.tensorrt
        served = write_configs(arch, model_dir, state)
        state.save(model_dir)
        pruned = prune(model_dir, keep, {v.number for v in served}) if keep else []
    except OSError as e:
        raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from e
    return Placed(
        arch.name,
        version,
        new,
        model_dir / str(version),
        report["weights_source"],
        [v.number for v in served],
        pruned,
    )


def rollback(arch: Architecture, repository: Path, to: int | None = None) -> tuple[int, int]:
    """Serve an earlier version alone: `to`, or the newest one older than the current default.
    Returns (previous default, now served). Undone by placing an export again."""
    model_dir = repository / arch.name
    state = ModelState.load(model_dir)
    current = served_versions(model_dir, state.pinned)[0].number
    older = [n for n in versions(model_dir) if n < current]
    target = to if to is not None else (older[-1] if older else None)
    if target is None:
        raise ServingError(f"{arch.name}: version {current} is the oldest there is; nothing to roll back to")
    if target not in versions(model_dir):
        raise ServingError(
            f"{arch.name}: no version {target} (have {', '.join(map(str, versions(model_dir)))})"
        )
    missing = [f for f in REQUIRED_FILES if not (model_dir / str(target) / f).is_file()]
    if missing:
        raise ServingError(f"{arch.name}: version {target} is incomplete (missing {', '.join(missing)})")
    state.pinned = target
    try:
        write_configs(arch, model_dir, state)
        state.save(model_dir)
    except OSError as e:
        raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from e
    return current, target


def _place_trt(arch: Architecture, served: list[Version], repository: Path) -> None:
    trt_dir = repository / (arch.name + TRT_SUFFIX)
    default = served[0]
    atomic_write_text(trt_dir / "configs" / f"{GPU}.pbtxt", trt_config(arch, served).to_pbtxt())
    atomic_write_bytes(trt_dir / LABELS_FILE, (repository / arch.name / LABELS_FILE).read_bytes())
    engine = {
        "source": f"../{arch.name}/{default.number}/{MODEL_FILE}",
        "version": default.number,
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
    repository: Path,
    tensorrt: bool = False,
    cpu: CpuPlan | None = None,
    keep: int | None = DEFAULT_KEEP,
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
        p = place_model(
            arch, models_dir=models_dir, repository=repository, tensorrt=tensorrt, cpu=cpu, keep=keep
        )
        what = "new version" if p.new_version else "unchanged, kept version"
        extra = f"; serving {', '.join(map(str, p.served))}"
        if p.pruned:
            extra += f"; pruned {', '.join(map(str, p.pruned))}"
        console.print(f"{p.name}: {what} {p.version} in {repository / p.name}{extra}", highlight=False)
        if p.weights_source.startswith("random"):
            console.print(f"[yellow]warning:[/] {p.name} has RANDOM weights ({p.weights_source})")
        placed.append(p)
    if identity:
        place_identity(repository)
    return placed


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
        warmup_batch_sizes=(1,),
        parameters={
            "intra_op_thread_count": "1",
            "inter_op_thread_count": "1",
            PARAM_PREFIX + "architecture": IDENTITY_MODEL,
        },
    )
    try:
        atomic_write_bytes(model_dir / "1" / MODEL_FILE, identity_onnx().SerializeToString())
        for name in (CPU, GPU):
            atomic_write_text(model_dir / "configs" / f"{name}.pbtxt", config.to_pbtxt())
        atomic_write_text(model_dir / DEFAULT_CONFIG, config.to_pbtxt())
    except OSError as e:
        raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from e
    return model_dir
