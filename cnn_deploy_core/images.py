"""Real photos for verification and calibration, shipped with the package (no download).

Public-domain and CC0 photos taken from scikit-image's sample data; see photos/LICENSE.md. They are
split in two, so that INT8 calibration never sees the photos its accuracy guard is judged on.
"""

from __future__ import annotations

from pathlib import Path

from cnn_deploy_core import CnnDeployError

PHOTO_DIR = Path(__file__).parent / "photos"
# Calibration and golden sets (ImageNet-like subjects: a cat, a cup, a person, a rocket).
SAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
# Held out from calibration; also in the golden sets. camera.png is greyscale (a conversion case).
HELD_OUT_PHOTOS = ("retina.jpg", "hubble_deep_field.jpg", "camera.png")


def _paths(names: tuple[str, ...]) -> list[Path]:
    paths = [PHOTO_DIR / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CnnDeployError(
            f"sample photos missing from {PHOTO_DIR}: {', '.join(missing)} (broken install?)"
        )
    return paths


def sample_photos() -> list[Path]:
    """The calibration photos, in a fixed order."""
    return _paths(SAMPLE_PHOTOS)


def held_out_photos() -> list[Path]:
    """Photos that calibration never sees."""
    return _paths(HELD_OUT_PHOTOS)


def all_photos() -> list[Path]:
    return sample_photos() + held_out_photos()
