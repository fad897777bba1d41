import io

import numpy as np
import pytest
from PIL import Image
from torchvision.models import ResNet50_Weights

from cnn_deploy_core.images import all_photos, sample_photos
from cnn_deploy_core.preprocess import (
    ImageError,
    Preprocessing,
    decode,
    load_image,
    preprocess,
    preprocess_bytes,
    preprocess_files,
)
from cnn_deploy_core.registry import get
from export.models import preprocessing_for


@pytest.mark.parametrize("photo", sample_photos(), ids=lambda p: p.name)
def test_numpy_preprocessing_matches_torchvision_transforms(photo):
    weights = ResNet50_Weights.DEFAULT  # resize 232, the non-default case
    spec = preprocessing_for(get("resnet50"))
    assert spec.resize == 232
    img = load_image(photo)
    expected = weights.transforms()(img).numpy()
    np.testing.assert_allclose(preprocess(img, spec), expected, atol=1e-5)


def test_portrait_images_resize_the_short_side():
    img = Image.new("RGB", (300, 500), (255, 0, 0))
    x = preprocess(img, Preprocessing())
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert x[0].mean() == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)


def test_preprocess_files_stacks_a_batch():
    batch = preprocess_files(sample_photos()[:2])
    assert batch.shape == (2, 3, 224, 224)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xd8 not really a jpeg", "is not an image in a supported format"),
        (b"\xff\xd8\xff\xe0 cut short", "is a damaged image file"),
        (b"", "is empty"),
    ],
)
def test_malformed_image_gives_a_clear_error(tmp_path, data, message):
    bad = tmp_path / "cat.jpg"
    bad.write_bytes(data)
    with pytest.raises(ImageError, match=message):
        load_image(bad)


def test_missing_image_gives_a_clear_error(tmp_path):
    with pytest.raises(ImageError, match="image not found"):
        load_image(tmp_path / "nope.png")


def test_grayscale_images_become_rgb():
    img = Image.new("L", (256, 256), 128)
    assert preprocess(img).shape == (3, 224, 224)


def _jpeg(size: tuple[int, int]) -> bytes:
    """A smooth (photo-like) RGB JPEG of `size`."""
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    rgb = np.stack([x, y, (x + y) / 2], axis=2) * 255
    buffer = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "fmt", "decoded"),
    [
        ((3000, 2400), "JPEG", (750, 600)),  # 1/4: at 1/8 the short side would be 300 < 2 x 256
        ((2000, 1500), "JPEG", (1000, 750)),  # 1/2: at 1/4, 375 < 512
        ((1500, 1000), "JPEG", (1500, 1000)),  # under 4x the resize: full size
        ((3000, 2400), "PNG", (3000, 2400)),  # only JPEG decodes at a reduced scale
    ],
)
def test_a_jpeg_4x_the_resize_decodes_reduced_keeping_twice_the_resize(size, fmt, decoded):
    data = _jpeg(size)
    if fmt == "PNG":
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, format="PNG")
        data = buffer.getvalue()
    assert decode(data, resize=256).size == decoded
    assert decode(data).size == size  # without a resize: full size, as load_image


def test_reduced_decoding_stays_close_to_the_full_decode_on_the_photos():
    """The only photos whose tensors differ from a full-size decode are the large JPEGs, and by
    little (the served top-5 is checked in tests/test_images.py)."""
    spec = preprocessing_for(get("resnet50"))
    reduced = []
    for photo in all_photos():
        fast, full = preprocess_files([photo], spec)[0], preprocess(load_image(photo), spec)
        if decode(photo.read_bytes(), resize=spec.resize).size == load_image(photo).size:
            assert np.array_equal(fast, full), photo.name
            continue
        reduced.append(photo.name)
        diff = np.abs(fast - full)
        assert diff.max() < 0.7 and diff.mean() < 0.01, (photo.name, diff.max(), diff.mean())
    assert reduced == ["retina.jpg"]


def test_the_normalize_table_gives_the_bits_of_per_pixel_arithmetic():
    spec = Preprocessing(resize=224)  # no resize, no crop: the normalization alone
    pixels = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = pixels.astype(np.float32) / 255.0
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    expected = np.ascontiguousarray(x.transpose(2, 0, 1))
    assert np.array_equal(preprocess(Image.fromarray(pixels), spec), expected)


def test_preprocess_writes_into_the_given_row():
    batch = np.zeros((2, 3, 224, 224), dtype=np.float32)
    data = sample_photos()[0].read_bytes()
    preprocess_bytes(data, Preprocessing(), batch[1])
    assert np.array_equal(batch[1], preprocess_bytes(data)) and not batch[0].any()
