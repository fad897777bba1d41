"""The GPU configuration through the local server: runs only with a GPU and onnxruntime-gpu."""

from __future__ import annotations

import pytest

from tests.conftest import CI_ARCHS

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


def test_gpu_config_serves_within_the_fp16_tolerance(repository, tmp_path):
    from clients.client import TritonClient
    from clients.verify import verify
    from serving.triton import ServerOptions, TritonProcess

    opts = ServerOptions.on_free_ports(repository, config_name="gpu", backend_dir=tmp_path / "backends")
    log = tmp_path / "triton.log"
    with TritonProcess(opts, log_path=log).start() as server:
        server.wait_ready(900)
        with TritonClient(opts.grpc_url, timeout=120) as client:
            results = verify(client, list(CI_ARCHS), repository)
    assert all(r.precision == "fp16" and r.passed for r in results), [r.to_dict() for r in results]
    assert "CUDAExecutionProvider" in log.read_text()  # the backend logs its providers
