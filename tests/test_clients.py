"""The client library and `python -m clients infer|verify` against the real server."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clients import BadInputError, ClientError, ModelNotFoundError, ModelNotReadyError, ServerUnavailableError
from clients.client import AsyncTritonClient, TritonClient, parse_url
from cnn_deploy_core.golden import GoldenSet
from cnn_deploy_core.images import sample_photos
from tests.conftest import CI_ARCHS, CORRUPT_MODEL, INT8_ARCH, free_port, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(params=["grpc", "http"])
def url(request, triton):
    return triton.grpc_url if request.param == "grpc" else triton.http_url


def test_url_scheme_picks_the_protocol():
    assert parse_url("grpc://example:9001").protocol == "grpc"
    assert parse_url("http://example").port == 8000
    assert parse_url("https://example:443").ssl
    with pytest.raises(ClientError, match="unsupported URL"):
        parse_url("ftp://example:21")


def test_clients_package_never_imports_torch():
    code = (
        "import sys, clients.cli, clients.client, clients.verify, cnn_deploy.demo; "
        "clients.cli.build_parser(); sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_model_info_comes_from_the_server(url):
    with TritonClient(url) as client:
        info = client.model_info("resnet18")
    assert info.input_name == "input" and info.input_dims == (3, 224, 224)
    assert info.output_name == "logits" and info.max_batch_size == 32 and info.has_labels
    assert info.weights_random and info.precision == "fp32" and info.preprocessing.crop == 224


def test_classify_a_real_photo_returns_top_k_labels(url):
    with TritonClient(url) as client:
        (preds,) = client.classify("resnet18", [sample_photos()[0]], top_k=5)
    assert len(preds) == 5 and all(p.label for p in preds)
    assert [p.score for p in preds] == sorted((p.score for p in preds), reverse=True)


def test_infer_splits_batches_larger_than_the_model_max(triton, repository):
    golden = GoldenSet.load(repository / "alexnet" / "1" / "golden.npz")
    batch = np.concatenate([golden.inputs] * 12)  # 72 > max batch 64
    with TritonClient(triton.grpc_url) as client:
        out = client.infer("alexnet", batch)
    np.testing.assert_allclose(out, np.concatenate([golden.outputs] * 12), atol=1e-4)


def test_async_client_infers_concurrently(triton, repository):
    golden = GoldenSet.load(repository / "resnet18" / "1" / "golden.npz")

    async def main():
        async with AsyncTritonClient(triton.grpc_url) as client:
            await client.wait_until_ready("resnet18", timeout=10)
            outs = await asyncio.gather(*[client.infer("resnet18", golden.inputs[i]) for i in range(4)])
            return np.concatenate(outs)

    np.testing.assert_allclose(asyncio.run(main()), golden.outputs[:4], atol=1e-3)


def test_unknown_model_is_a_typed_error(url):
    with TritonClient(url) as client, pytest.raises(ModelNotFoundError, match="'nope' is not served"):
        client.model_info("nope")


def test_model_that_failed_to_load_is_not_ready(url):
    # One class for it everywhere (clients.errors): known to the server, not loaded.
    with TritonClient(url) as client, pytest.raises(ModelNotReadyError):
        client.wait_until_ready(CORRUPT_MODEL, timeout=1)
    with TritonClient(url) as client, pytest.raises(ModelNotReadyError):
        client.model_info(CORRUPT_MODEL)


def test_wrong_shape_is_rejected_before_sending(url):
    with TritonClient(url) as client, pytest.raises(BadInputError, match=r"expects shape \[N, 3, 224, 224\]"):
        client.infer("resnet18", np.zeros((1, 3, 100, 100), dtype=np.float32))


def test_stopped_server_is_unavailable_after_bounded_retries():
    port = free_port()
    for url in (f"grpc://127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        with TritonClient(url, timeout=2, retries=2, backoff=0.05) as client:
            with pytest.raises(ServerUnavailableError, match="unreachable"):
                client.model_info("resnet18")


# --- the CLI: one clear line, non-zero exit -------------------------------------------------


def test_cli_infer_prints_labels_for_a_real_photo(triton):
    result = run_cli(
        "clients",
        "infer",
        "--url",
        triton.grpc_url,
        "--model",
        "resnet18",
        "--top-k",
        "3",
        "--json",
        str(sample_photos()[1]),
    )
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["image"].endswith("coffee.png") and len(entry["predictions"]) == 3
    assert "RANDOM weights" in result.stderr


def test_cli_verify_passes_on_the_models_it_is_given(triton, repository):
    expected = {n for a in CI_ARCHS for n in (a, f"{a}_image")} | {f"{INT8_ARCH}_int8"}
    models = [a for m in sorted(expected) for a in ("--model", m)]
    result = run_cli(
        "clients", "verify", "--url", triton.http_url, "--repository", str(repository), "--json", *models
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {r["model"] for r in report} == expected  # every model named, each one checked
    assert all(r["passed"] for r in report)


def test_cli_verify_fails_on_a_wrong_reference(triton, repository, tmp_path):
    fake = tmp_path / "repo"
    shutil.copytree(
        repository / "resnet18" / "1", fake / "resnet18" / "1", ignore=shutil.ignore_patterns("*.onnx")
    )
    golden = GoldenSet.load(fake / "resnet18" / "1" / "golden.npz")
    golden.outputs[2, :] = golden.outputs[2, ::-1]  # a wrong answer for one sample
    golden.save(fake / "resnet18" / "1" / "golden.npz")
    result = run_cli(
        "clients", "verify", "--url", triton.grpc_url, "--model", "resnet18", "--repository", str(fake)
    )
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "error: verification failed for resnet18" in result.stderr


def _one_error_line(result) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_reports_a_stopped_server_in_one_line():
    line = _one_error_line(
        run_cli(
            "clients",
            "infer",
            "--url",
            f"grpc://127.0.0.1:{free_port()}",
            "--retries",
            "1",
            "--timeout",
            "2",
            "--model",
            "resnet18",
            str(sample_photos()[0]),
        )
    )
    assert "unreachable" in line


def test_cli_reports_an_unknown_model_in_one_line(triton):
    line = _one_error_line(
        run_cli("clients", "infer", "--url", triton.http_url, "--model", "lenet", str(sample_photos()[0]))
    )
    assert "'lenet' is not served" in line


def test_cli_reports_a_malformed_image_in_one_line(triton, tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    line = _one_error_line(
        run_cli("clients", "infer", "--url", triton.grpc_url, "--model", "resnet18", str(bad))
    )
    assert "is not an image in a supported format" in line or "is a damaged" in line
