import numpy as np
import pytest
from PIL import Image
from torchvision.models import ResNet50_Weights

from cnn_deploy_core.images import sample_photos
from cnn_deploy_core.preprocess import ImageError, Preprocessing, load_image, preprocess, preprocess_files
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
