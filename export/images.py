"""Real photos for verification, taken from the scikit-image wheel (no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from export import ExportError

# Photos of ImageNet-like subjects that ship inside the wheel itself (not fetched by pooch).
SAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")


def sample_photo_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError("scikit-image is not installed; it provides the sample photos")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sample_photos() -> list[Path]:
    """Paths of the bundled sample photos, in a fixed order."""
    base = sample_photo_dir()
    paths = [base / name for name in SAMPLE_PHOTOS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ExportError(f"sample photos missing from scikit-image: {', '.join(missing)}")
    return paths
