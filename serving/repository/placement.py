"""Placing an export: a new version directory (or the identical one again), every config and
variant rewritten from the served versions, old versions pruned."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from cnn_deploy_core.fsutil import atomic_write_bytes, atomic_write_text, discard, sha256_file
from cnn_deploy_core.layout import FP16_FILE, INT8_FILE, INT8_SUFFIX, LABELS_FILE, REPORT_FILE, VERSION_FILES
from cnn_deploy_core.registry import Architecture
from serving import ServingError
from serving.config import CPU, GPU
from serving.repository.configs import DEFAULT_CONFIG, CpuPlan, candidate_config, cpu_config, gpu_config
from serving.repository.state import ModelState
from serving.repository.units import int8_retired, remove_version
from serving.repository.variants import place_identity, place_image_pipeline, place_int8, place_trt
from serving.repository.versions import REQUIRED_FILES, Version, served_versions, versions

DEFAULT_KEEP = 3  # version directories kept on disk by `serving repo` (served ones always stay)


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
        remove_version(model_dir, n)
    return doomed


def prune_unit(
    arch: Architecture, repository: Path, keep: int | None, live: dict[str, set[int]] | None = None
) -> list[int]:
    """Once the unit's configs are written (and reloaded, on a running server): delete the version
    directories beyond `keep` and the INT8 mirror's leftovers, never one that a config serves or
    that a running server still serves (`live`: model -> versions READY there). Returns the
    pruned versions of `<name>`."""
    live = live or {}
    model_dir = repository / arch.name
    int8 = arch.name + INT8_SUFFIX
    int8_dir = repository / int8
    served = {v.number for v in served_versions(model_dir, ModelState.load(model_dir).pinned)}
    protect = served | live.get(arch.name, set()) | live.get(int8, set())
    pruned = prune(model_dir, keep, protect) if keep else []
    if int8_retired(arch, repository):
        if not live.get(int8):
            discard(int8_dir)  # no served version has an INT8 file, and nothing serves the old ones
    else:
        for n in versions(int8_dir):
            if not (model_dir / str(n)).is_dir() and n not in live.get(int8, set()):
                remove_version(int8_dir, n)
    return pruned


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
        place_trt(arch, served, model_dir.parent)
    int8_served = [v for v in served if INT8_FILE in v.files]
    place_int8(arch, int8_served, model_dir.parent, state)
    place_image_pipeline(arch, served[0], model_dir.parent)
    if state.tuned:
        int8 = state.tuned["precision"] == "int8"
        if int8 and not int8_served:
            state.tuned = None  # the tuned precision is gone with this export: back to the cpu config
        else:
            name = f"{state.tuned['config_name']}.pbtxt"
            target = model_dir.parent / (arch.name + (INT8_SUFFIX if int8 else "")) / "configs"
            other = model_dir.parent / (arch.name + ("" if int8 else INT8_SUFFIX)) / "configs"
            (other / name).unlink(missing_ok=True)  # a tune of the other precision, now replaced
            text = candidate_config(arch, int8_served if int8 else served, state.tuned).to_pbtxt()
            atomic_write_text(target / name, text)
    return served


def place_model(
    arch: Architecture,
    *,
    models_dir: Path,
    repository: Path,
    tensorrt: bool = False,
    cpu: CpuPlan | None = None,
    keep: int | None = DEFAULT_KEEP,
    defer_prune: bool = False,
) -> Placed:
    """Copy one export into the repository as a new version (or reuse an identical one).

    `defer_prune`: delete nothing now; the caller reloads a running server first, then calls
    prune_unit (no version directory is deleted from under a server)."""
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
        pruned = [] if defer_prune else prune_unit(arch, repository, keep)
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
    defer_prune: bool = False,
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
            arch,
            models_dir=models_dir,
            repository=repository,
            tensorrt=tensorrt,
            cpu=cpu,
            keep=keep,
            defer_prune=defer_prune,
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
