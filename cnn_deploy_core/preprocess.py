"""ImageNet preprocessing with Pillow and numpy only (no torch): clients, export and server use it.

It reproduces torchvision's ``ImageClassification`` transform (resize the short side
with antialiasing, center crop, scale to [0, 1], normalize), whose parameters each
weights entry publishes. torchvision resizes PIL images with PIL itself, so the result
matches torchvision's to float rounding (a unit test checks this).

`decode` turns encoded bytes into an RGB image with the same rules everywhere: the client's
local preprocessing and the server's preprocessing model run this very code, so their tensors
are bit-identical. It refuses what would waste or exhaust memory (a pixel limit, checked from the
header before any pixel is decoded) and names the problem in one line.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnn_deploy_core import CnnDeployError


class ImageError(CnnDeployError, ValueError):
    """An input image could not be read."""


FORMATS = ("JPEG", "PNG", "WEBP", "BMP")  # what `decode` accepts
MAX_PIXELS = 40_000_000  # 40 MP: a 12-bit camera's photo fits; a decompression bomb does not
MAX_BYTES = 32 << 20
MIN_SIDE = 16  # smaller than this, a 224x224 crop is nothing but interpolation


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


def _to_rgb(img: Image.Image) -> Image.Image:
    """Greyscale, palette, RGBA, CMYK and 16-bit images as 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: keep the top 8 bits
        wide = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode(data: bytes, *, max_pixels: int = MAX_PIXELS, name: str = "image") -> Image.Image:
    """Encoded bytes (JPEG, PNG, WebP, BMP) -> an RGB image; anything else raises ImageError."""
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_BYTES >> 20} MB")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise ImageError(
            f"{name} is not an image in a supported format ({', '.join(FORMATS)}): "
            f"unrecognised data starting {data[:8]!r}"
        ) from None
    except Image.DecompressionBombError as e:  # Pillow's own guard, at twice its limit
        raise ImageError(
            f"{name} is too large ({e}); the limit is {max_pixels / 1e6:.0f} megapixels"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # a header cut short, or corrupt
        raise ImageError(f"{name} is a damaged image file: {e}") from None
    with img:
        if img.format not in FORMATS:
            raise ImageError(f"{name} is {img.format}, which is not supported ({', '.join(FORMATS)})")
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(
                f"{name} declares {w}x{h} pixels; the limit is {max_pixels / 1e6:.0f} megapixels"
            )
        if min(w, h) < MIN_SIDE:
            raise ImageError(f"{name} is {w}x{h} pixels; the smallest accepted side is {MIN_SIDE}")
        try:
            img.load()
            return _to_rgb(img)
        except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
            raise ImageError(f"{name} is a damaged {img.format} file: {e}") from None


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, with `decode`'s rules; unreadable files raise :class:`ImageError`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror or e}") from None
    return decode(data, name=str(path))


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


def preprocess_bytes(data: bytes, spec: Preprocessing = Preprocessing(), **decode_options) -> np.ndarray:
    """Encoded image bytes -> float32 CHW, exactly as `preprocess_files` would do with the file."""
    return preprocess(decode(data, **decode_options), spec)
