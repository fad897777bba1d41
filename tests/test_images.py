"""Images in, labels out: the `<name>_image` ensembles with server-side preprocessing, on the real
server. Bit-identity with the client's preprocessing, the top-5 of reduced JPEG decoding, every
format, bad images failing alone in a shared dynamic batch, `verify` over both protocols, and the
README's curl command."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from clients.client import TritonClient, encoded
from cnn_deploy_core.golden import GoldenSet
from cnn_deploy_core.images import all_photos, sample_photos
from cnn_deploy_core.metrics import compare
from cnn_deploy_core.preprocess import (
    Preprocessing,
    load_image,
    preprocess,
    preprocess_bytes,
    preprocess_files,
)
from serving.repository import preprocess_model_name
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration
README = ROOT / "README.md"


def _preprocess_model(repository: Path, name: str = "resnet18") -> tuple[str, Preprocessing]:
    report = json.loads((repository / name / "1" / "export.json").read_text())
    return preprocess_model_name(report["preprocessing"]), Preprocessing.from_dict(report["preprocessing"])


def _server_tensor(grpc_url: str, model: str, data: bytes) -> np.ndarray:
    client = grpcclient.InferenceServerClient(grpc_url.removeprefix("grpc://"))
    try:
        inp = grpcclient.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(encoded([data]))
        return client.infer(model, [inp]).as_numpy("input")[0]
    finally:
        client.close()


def _variants() -> dict[str, bytes]:
    """One photo in every accepted format and colour layout."""
    photo = Image.open(sample_photos()[0]).convert("RGB")
    out = {}
    for label, img, fmt in (
        ("jpeg", photo, "JPEG"),
        ("png", photo, "PNG"),
        ("webp", photo, "WEBP"),
        ("bmp", photo, "BMP"),
        ("greyscale-png", photo.convert("L"), "PNG"),
        ("rgba-png", photo.convert("RGBA"), "PNG"),
        ("cmyk-jpeg", photo.convert("CMYK"), "JPEG"),
        (
            "16bit-png",
            Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257),
            "PNG",
        ),
    ):
        buffer = io.BytesIO()
        img.save(buffer, format=fmt)
        out[label] = buffer.getvalue()
    return out


def test_server_preprocessing_is_bit_identical_to_the_clients(triton, repository):
    model, spec = _preprocess_model(repository)
    for photo in all_photos():
        server = _server_tensor(triton.grpc_url, model, photo.read_bytes())
        assert np.array_equal(server, preprocess_files([photo], spec)[0]), photo.name
    for label, data in _variants().items():
        assert np.array_equal(_server_tensor(triton.grpc_url, model, data), preprocess_bytes(data, spec)), (
            label
        )


def test_the_server_runs_the_clients_own_preprocessing_code(repository):
    import cnn_deploy_core.preprocess as core

    model, _ = _preprocess_model(repository)
    vendored = repository / model / "1" / "cnn_deploy_core" / "preprocess.py"
    assert vendored.read_bytes() == Path(core.__file__).read_bytes()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_format_classifies_like_the_tensor_model(triton, protocol):
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    variants = _variants()
    with TritonClient(url) as client:
        info = client.model_info("resnet18")
        served = client.infer_images("resnet18_image", list(variants.values()))
        local = client.infer(
            "resnet18", np.stack([preprocess_bytes(d, info.preprocessing) for d in variants.values()])
        )
    result = compare(local, served, atol=1e-5, rtol=1e-4)
    assert result.passed, result
    assert len({int(np.argmax(row)) for row in served}) > 1  # the formats are not all one answer


def test_reduced_jpeg_decoding_keeps_every_photos_top5(triton):
    """The server decodes large JPEGs at a reduced scale (cnn_deploy_core/preprocess.py); its
    top-5 on every photo is the tensor model's on a full-size decode, torchvision's way."""
    photos = all_photos()
    with TritonClient(triton.grpc_url) as client:
        spec = client.model_info("resnet18").preprocessing
        served = client.infer_images("resnet18_image", [p.read_bytes() for p in photos])
        full = client.infer("resnet18", np.stack([preprocess(load_image(p), spec) for p in photos]))
    for photo, got, want in zip(photos, served, full, strict=True):
        assert list(np.argsort(-got)[:5]) == list(np.argsort(-want)[:5]), photo.name


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A 100-byte PNG that declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def _bad_images() -> dict[str, tuple[bytes, str]]:
    jpeg = _variants()["jpeg"]
    tiny, gif = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (1, 1)).save(tiny, format="PNG")
    Image.open(sample_photos()[0]).save(gif, format="GIF")
    return {
        "truncated": (jpeg[: len(jpeg) // 3], "damaged JPEG"),
        "random bytes": (np.random.default_rng(0).bytes(5000), "not an image in a supported format"),
        "empty": (b"", "is empty"),
        "1x1": (tiny.getvalue(), "1x1 pixels"),
        "bomb": (_bomb_png(), "900000000 pixels"),
        "over the limit": (_bomb_png(8000, 6000), "declares 8000x6000 pixels; the limit is 40 megapixels"),
        "gif": (gif.getvalue(), "GIF, which is not supported"),
    }


def test_bad_images_fail_alone_in_a_dynamic_batch_with_good_ones(triton, repository):
    golden = GoldenSet.load(repository / "resnet18" / "1" / "golden.npz")
    good = [(f"photo {i}", data) for i, data in enumerate(golden.encoded)]
    bad = _bad_images()
    requests = good[:3] + [(name, data) for name, (data, _) in bad.items()] + good[3:]
    client = grpcclient.InferenceServerClient(triton.grpc_url.removeprefix("grpc://"))
    model, _ = _preprocess_model(repository)

    def executions() -> int:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(stats.get("execution_count", 0))

    def send(item):
        name, data = item
        inp = grpcclient.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(encoded([data]))
        try:
            return name, client.infer("resnet18_image", [inp]).as_numpy("logits")[0], None
        except InferenceServerException as e:
            return name, None, e.message()

    before = executions()
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = {name: (out, err) for name, out, err in pool.map(send, requests)}
    batched = executions() - before
    assert batched < len(requests), "the requests were never batched together"
    for i, row in enumerate(golden.encoded_rows):
        out, err = answers[f"photo {i}"]
        assert err is None, err
        assert compare(golden.outputs[row : row + 1], out[None], **golden.tolerances["fp32"]).passed
    for name, (_, expected) in bad.items():
        out, err = answers[name]
        assert out is None and err is not None and expected in err, (name, err)
    assert client.is_server_live() and client.is_model_ready("resnet18_image")
    client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_verify_checks_the_image_ensembles(triton, repository, protocol):
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    ensembles = ("--model", "resnet18_image", "--model", "alexnet_image", "--model", "googlenet_image")
    result = run_cli("clients", "verify", "--url", url, "--repository", str(repository), "--json", *ensembles)
    assert result.returncode == 0, result.stderr
    verdicts = {r["model"]: r for r in json.loads(result.stdout)}
    assert {"resnet18_image", "alexnet_image", "googlenet_image"} == set(verdicts)
    assert all(v["passed"] for v in verdicts.values()), verdicts
    assert verdicts["resnet18_image"]["samples"] == len(all_photos())


def test_client_classify_sends_encoded_images_when_the_server_preprocesses(triton):
    photo = sample_photos()[1]
    with TritonClient(triton.grpc_url) as client:
        assert client.image_model("resnet18") == "resnet18_image"
        (server,) = client.classify("resnet18", [photo], top_k=3)
        (local,) = client.classify("resnet18", [photo], top_k=3, preprocess="client")
    assert [p.index for p in server] == [p.index for p in local]
    result = run_cli("clients", "infer", "--url", triton.http_url, "--model", "resnet18", str(photo))
    assert result.returncode == 0 and "preprocessed on the server (resnet18_image)" in result.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl binary on this machine")
def test_the_readme_curl_command_classifies_a_jpeg_with_no_python(triton, tmp_path):
    block = re.search(r"```bash\n(# encoded image in, labels out[^`]*)```", README.read_text()).group(1)
    image = tmp_path / "cat.jpg"
    image.write_bytes(_variants()["jpeg"])
    env = {"PATH": "/usr/bin:/bin", "IMAGE": str(image), "TRITON": triton.http_url, "MODEL": "resnet18_image"}
    result = subprocess.run(["bash", "-c", block], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    (output,) = answer["outputs"]
    assert output["name"] == "logits" and output["datatype"] == "BYTES" and len(output["data"]) == 3
    _score, index, label = output["data"][0].split(":", 2)
    with TritonClient(triton.grpc_url) as client:
        (preds,) = client.classify("resnet18", [image], top_k=3, preprocess="client")
    assert (int(index), label) == (preds[0].index, preds[0].label)
    assert os.path.getsize(image) < 100_000  # what crossed the wire: the file, not a 600 KB tensor
