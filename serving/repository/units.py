"""A model and its variants are one unit for versions: `<name>`, `<name>_int8`, `<name>_trt`, the
preprocessing model and `<name>_image` are placed, rolled back, reloaded and pruned together.

Here: which models form a unit, which versions a model's config asks for, and a snapshot of the
unit's files that a failed reload restores (so no half-rolled-back state is ever left behind).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cnn_deploy_core.fsutil import atomic_write_bytes, discard
from cnn_deploy_core.layout import IMAGE_SUFFIX, INT8_FILE, INT8_SUFFIX, TRT_SUFFIX
from cnn_deploy_core.registry import Architecture
from serving import ServingError
from serving.config import parse_pbtxt
from serving.repository.configs import DEFAULT_CONFIG, preprocess_model_name
from serving.repository.state import ModelState
from serving.repository.versions import served_versions, versions

SMALL_FILE = 1 << 20  # configs, labels, reports, the preprocessing code: kept whole in a snapshot


def unit_models(arch: Architecture, repository: Path) -> list[str]:
    """The unit's models that exist in the repository, in load order: what the image ensemble
    needs (the preprocessing model, the tensor model) before it, the ensemble last."""
    name = arch.name
    pre = preprocess_name(arch, repository)
    order = [pre, name, name + INT8_SUFFIX, name + TRT_SUFFIX, name + IMAGE_SUFFIX]
    return [m for m in order if m and (repository / m).is_dir()]


def preprocess_name(arch: Architecture, repository: Path) -> str | None:
    """The preprocessing model the unit's served versions use (None: nothing placed yet)."""
    model_dir = repository / arch.name
    try:
        served = served_versions(model_dir, ModelState.load(model_dir).pinned)
        return preprocess_model_name(served[0].report["preprocessing"])
    except (ServingError, KeyError):
        return None


def int8_retired(arch: Architecture, repository: Path) -> bool:
    """True when no served version has an INT8 file: `<name>_int8` is to go (once not served)."""
    model_dir = repository / arch.name
    try:
        served = served_versions(model_dir, ModelState.load(model_dir).pinned)
    except ServingError:
        return False
    return not any(INT8_FILE in v.files for v in served)


def intended_versions(model_dir: Path, config_name: str) -> tuple[int, ...]:
    """The versions a server with `--model-config-name=config_name` loads from this model's files:
    its `configs/<config_name>.pbtxt` (else config.pbtxt, as Triton falls back) and version policy."""
    path = model_dir / "configs" / f"{config_name}.pbtxt"
    if not path.is_file():
        path = model_dir / DEFAULT_CONFIG
    try:
        config = parse_pbtxt(path.read_text())
    except (OSError, ServingError) as e:
        raise ServingError(f"{model_dir.name}: cannot read {path}: {e}") from e
    on_disk = versions(model_dir)
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "specific":
        return tuple(sorted(config.version_policy.specific.versions))
    if policy == "all":
        return tuple(on_disk)
    count = config.version_policy.latest.num_versions or 1  # Triton's default: the latest one
    return tuple(on_disk[-count:])


def ready_verdict(model: str, intended: tuple[int, ...], index: list[dict]) -> str | None:
    """None when the server has exactly the intended versions of `model` READY; else why not.

    `index` is the server's repository index (name, version, state, reason per version)."""
    entries = [e for e in index if e.get("name") == model]
    ready = {int(e["version"]) for e in entries if e.get("state") == "READY" and e.get("version")}
    if ready == set(intended):
        return None
    reasons = "; ".join(
        f"version {e.get('version') or '?'}: {e.get('state', '?')} {e.get('reason', '')}".strip()
        for e in entries
        if e.get("state") != "READY" and e.get("reason") not in (None, "", "unloaded")
    )
    want = ", ".join(map(str, intended)) or "none"
    have = ", ".join(map(str, sorted(ready))) or "none"
    return f"{model}: READY versions {have}, expected {want}" + (f" ({reasons})" if reasons else "")


def _digest(path: Path) -> str:
    st = path.stat()
    if st.st_size <= SMALL_FILE:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"  # model files are never rewritten in place


def _files(model_dir: Path) -> list[Path]:
    """Every visible file of a model (hidden names are staging and trash, which Triton ignores)."""
    if not model_dir.is_dir():
        return []
    out = []
    for root, dirs, files in os.walk(model_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(root) / f for f in files if not f.startswith(".")]
    return sorted(out)


@dataclass
class Snapshot:
    """The unit's files before a change: small files whole, the version directories by name."""

    repository: Path
    models: list[str]
    small: dict[str, dict[str, bytes]] = field(default_factory=dict)  # model -> relative path -> bytes
    version_dirs: dict[str, set[str]] = field(default_factory=dict)
    digests: dict[str, dict[str, str]] = field(default_factory=dict)
    existed: set[str] = field(default_factory=set)  # every model directory of the repository

    @classmethod
    def take(cls, repository: Path, models: list[str]) -> Snapshot:
        snap = cls(repository, list(dict.fromkeys(models)))
        snap.existed = {p.name for p in repository.iterdir() if p.is_dir()} if repository.is_dir() else set()
        for model in snap.models:
            model_dir = repository / model
            files = _files(model_dir)
            snap.digests[model] = {str(f.relative_to(model_dir)): _digest(f) for f in files}
            snap.small[model] = {
                str(f.relative_to(model_dir)): f.read_bytes() for f in files if f.stat().st_size <= SMALL_FILE
            }
            snap.version_dirs[model] = {str(n) for n in versions(model_dir)}
        return snap

    def changed(self, models: list[str]) -> list[str]:
        """Of `models` and the snapshot's, those whose files differ now (new and removed ones too)."""
        out = []
        for model in dict.fromkeys([*self.models, *models]):
            model_dir = self.repository / model
            now = {str(f.relative_to(model_dir)): _digest(f) for f in _files(model_dir)}
            if now != self.digests.get(model, {}):
                out.append(model)
        return out

    def created(self, models: list[str]) -> list[str]:
        """Of `models`, those whose directory the change created."""
        return [m for m in models if m not in self.existed and (self.repository / m).is_dir()]

    def restore(self, models: list[str] = ()) -> None:
        """Put every snapshotted model back as it was: small files rewritten, files and version
        directories the change added removed; a model the change created (of these and `models`)
        goes entirely."""
        for model in self.created([*self.models, *models]):
            discard(self.repository / model)
        for model in self.models:
            model_dir = self.repository / model
            if model not in self.existed:
                continue
            for relative, data in self.small[model].items():
                path = model_dir / relative
                if not path.is_file() or path.read_bytes() != data:
                    atomic_write_bytes(path, data)
            for n in versions(model_dir):
                if str(n) not in self.version_dirs[model]:
                    remove_version(model_dir, n)
            for f in _files(model_dir):
                relative = str(f.relative_to(model_dir))
                if relative not in self.digests[model]:
                    f.unlink(missing_ok=True)


def remove_version(model_dir: Path, number: int) -> None:
    # Renamed first (Triton ignores non-numeric names), so no half-deleted version is ever seen.
    trash = model_dir / f".{number}.deleted-{os.getpid()}"
    os.replace(model_dir / str(number), trash)
    shutil.rmtree(trash, ignore_errors=True)
