"""Version directories: discovery, reading one back, and which versions one config can serve.

Every version directory describes itself (its export.json and labels.txt). Triton keeps one config
and one label file per model, so a config serves several versions only when they agree on labels,
preprocessing and files: a client asking for version N then gets N's preprocessing and labels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cnn_deploy_core.fsutil import sha256_file
from cnn_deploy_core.layout import FP16_FILE, GOLDEN_FILE, LABELS_FILE, MODEL_FILE, REPORT_FILE, VERSION_FILES
from serving import ServingError

SERVED_VERSIONS = 2  # the latest and, when compatible, the one before it (for rollback by version)
REQUIRED_FILES = (MODEL_FILE, GOLDEN_FILE, LABELS_FILE, REPORT_FILE)


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
