"""ImageNet preprocessing with Pillow and numpy only (no torch): clients, export and server use it.

It reproduces torchvision's ``ImageClassification`` transform (resize the short side
with antialiasing, center crop, scale to [0, 1], normalize), whose parameters each
weights entry publishes. torchvision resizes PIL images with PIL itself, so the result
matches torchvision's to float rounding (a unit test checks this).

`decode` turns encoded bytes into an RGB image with the same rules everywhere: the client's
local preprocessing (`preprocess_files`) and the server's preprocessing model (`preprocess_bytes`)
run this very code, so their tensors are bit-identical. It refuses what would waste or exhaust
memory (a pixel limit, checked from the header before any pixel is decoded) and names the problem
in one line.

Given the size the image will be resized to, `decode` reads a JPEG at least four times that size
at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4 or 1/8), keeping at least twice the resize, so
that the resize still filters a 2x (or more) reduction: a 1411x1411 photo resized to 232 decodes
at 706x706, twice as fast for decode and resize together. Its tensor then differs from a
full-size decode's by up to 0.6 (normalized units; 0.007 on average), and the models' top-5 on
the sample photos are unchanged (tests/test_images.py). Decoding down to the resize itself would
be faster still, but it reordered a top-5 on a 1000x872 photo. Other formats and smaller JPEGs
decode at full size, as torchvision does.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from functools import lru_cache
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


def decode(
    data: bytes, *, max_pixels: int = MAX_PIXELS, name: str = "image", resize: int | None = None
) -> Image.Image:
    """Encoded bytes (JPEG, PNG, WebP, BMP) -> an RGB image; anything else raises ImageError.

    `resize`: the short side the image is about to be resized to; a JPEG whose short side is at
    least 4x that decodes at the smallest DCT scale keeping it >= 2x `resize` (module docstring).
    """
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
        if resize and img.format == "JPEG" and min(w, h) >= 4 * resize:
            # libjpeg's largest scale keeping both sides >= 2 * resize
            img.draft(None, (2 * resize, 2 * resize))
        try:
            img.load()
            return _to_rgb(img)
        except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
            raise ImageError(f"{name} is a damaged {img.format} file: {e}") from None


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror or e}") from None


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB at full size, with `decode`'s rules; unreadable files raise
    :class:`ImageError`. (To classify a file, `preprocess_files`: it decodes as the server does.)"""
    return decode(_read(path), name=str(path))


@lru_cache(maxsize=8)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: each channel's normalized value of every 8-bit pixel value, computed with
    the very float32 operations a per-pixel `(x / 255 - mean) / std` does, so looking pixels up in
    it gives the same bits, without a float32 HWC copy and a transpose per image."""
    values = np.arange(256, dtype=np.float32)[:, None] / 255.0
    table = (values - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(table.T)


def preprocess(
    img: Image.Image, spec: Preprocessing = Preprocessing(), out: np.ndarray | None = None
) -> np.ndarray:
    """One image -> float32 CHW array, normalized as the weights expect; written into `out`
    (a C-contiguous float32 (3, crop, crop) array, e.g. a row of a batch) when given."""
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
    pixels = np.asarray(img.crop((left, top, left + spec.crop, top + spec.crop)))
    if out is None:
        out = np.empty((3, spec.crop, spec.crop), dtype=np.float32)
    table = _normalize_table(spec.mean, spec.std)
    for channel in range(3):
        # mode="clip" writes straight into `out` ("raise" goes through a buffer); uint8 never clips
        np.take(table[channel], pixels[:, :, channel], out=out[channel], mode="clip")
    return out


def preprocess_files(paths: list[str | Path], spec: Preprocessing = Preprocessing()) -> np.ndarray:
    """Image files -> an NCHW float32 batch, each decoded exactly as the server decodes it."""
    batch = np.empty((len(paths), 3, spec.crop, spec.crop), dtype=np.float32)
    for i, path in enumerate(paths):
        preprocess_bytes(_read(path), spec, batch[i], name=str(path))
    return batch


def preprocess_bytes(
    data: bytes, spec: Preprocessing = Preprocessing(), out: np.ndarray | None = None, **decode_options
) -> np.ndarray:
    """Encoded image bytes -> float32 CHW (into `out` when given): what the server's preprocessing
    model and `preprocess_files` run, so that both give the same bits."""
    return preprocess(decode(data, resize=spec.resize, **decode_options), spec, out)
