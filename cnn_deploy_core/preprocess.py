"""ImageNet preprocessing with Pillow and numpy only (no torch): the clients use it.

It reproduces torchvision's ``ImageClassification`` transform (resize the short side
with antialiasing, center crop, scale to [0, 1], normalize), whose parameters each
weights entry publishes. torchvision resizes PIL images with PIL itself, so the result
matches torchvision's to float rounding (a unit test checks this).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnn_deploy_core import CnnDeployError


class ImageError(CnnDeployError, ValueError):
    """An input image could not be read."""


@dataclass(frozen=True)
class Preprocessing:
    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            interpolation=str(data.get("interpolation", "bilinear")),
        )


_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB; unreadable files raise :class:`ImageError`."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise ImageError(f"{path} is not a readable image (JPEG, PNG, ...): {e}") from e


def preprocess(img: Image.Image, spec: Preprocessing = Preprocessing()) -> np.ndarray:
    """One image -> float32 CHW array, normalized as the weights expect."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    # torchvision resizes the shorter side to `resize`, keeping the aspect ratio
    # (truncating the long side like torchvision's _compute_resized_output_size).
    if w <= h:
        new_w, new_h = spec.resize, int(spec.resize * h / w)
    else:
        new_w, new_h = int(spec.resize * w / h), spec.resize
    img = img.resize((new_w, new_h), _PIL_FILTERS[spec.interpolation])
    left = round((new_w - spec.crop) / 2.0)
    top = round((new_h - spec.crop) / 2.0)
    img = img.crop((left, top, left + spec.crop, top + spec.crop))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess_files(paths: list[str | Path], spec: Preprocessing = Preprocessing()) -> np.ndarray:
    """Image files -> an NCHW float32 batch."""
    return np.stack([preprocess(load_image(p), spec) for p in paths])
