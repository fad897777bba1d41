"""Shared fixtures: real exports (random weights) and one real Triton server per session."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Small architectures the CI exports and serves; `-m slow` covers the whole registry.
CI_ARCHS = ("alexnet", "resnet18", "googlenet")
CORRUPT_MODEL = "broken_resnet18"
INT8_ARCH = "resnet18"


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU and onnxruntime-gpu")
    for item in items:
        if item.get_closest_marker("gpu"):  # the marker, not a parameter id that says "gpu"
            item.add_marker(skip)


def _has_gpu() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers() and shutil.which("nvidia-smi")


def free_port() -> int:
    """A port nothing listens on (for "server down" tests)."""
    from serving.triton import free_ports

    return free_ports(1)[0]


def port_args() -> tuple[tuple[str, ...], str]:
    """`serving up`'s three port options on free ports; also the gRPC port."""
    from serving.triton import free_ports

    http, grpc, metrics = map(str, free_ports(3))
    return ("--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics), grpc


def run_cli(
    *args: str,
    timeout: float = 600,
    cwd: Path | None = None,
    home: Path | None = None,
    env: dict | None = None,
):
    """Run `python -m ...` as a user would; returns the CompletedProcess (never raises).

    `home` is the project folder (CNN_DEPLOY_HOME) the command's default paths are anchored to;
    `env`, variables to set (a user's exported key).
    """
    import subprocess

    extra_env, env = env, {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("CNN_DEPLOY_HOME", None)
    env.pop("CNN_DEPLOY_STATE_DIR", None)
    if home is not None:
        env["CNN_DEPLOY_HOME"] = str(home)
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=env,
    )


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """CI_ARCHS exported once per session through the real pipeline (random weights)."""
    from cnn_deploy_core.registry import get
    from export.build import build_all

    out = tmp_path_factory.mktemp("models")
    # resnet18 with its INT8 variant too: the session server then serves resnet18_int8.
    jobs = build_all([get(a) for a in CI_ARCHS if a != INT8_ARCH], output=out, weights="random")
    jobs += build_all([get(INT8_ARCH)], output=out, weights="random", int8=True)
    failed = [f"{j.arch.name}: {j.error}" for j in jobs if not j.succeeded]
    assert not failed, failed
    return out


@pytest.fixture(scope="session")
def repository(models_dir, tmp_path_factory) -> Path:
    """A model repository with CI_ARCHS, plus one model whose ONNX file is corrupt."""
    from cnn_deploy_core.registry import get
    from serving.repository import CpuPlan, place_models

    repo = tmp_path_factory.mktemp("repo")
    place_models([get(a) for a in CI_ARCHS], models_dir=models_dir, repository=repo, cpu=CpuPlan(1, 2))
    broken = repo / CORRUPT_MODEL
    shutil.copytree(repo / "resnet18", broken)
    for cfg in (broken / "configs").glob("*.pbtxt"):
        cfg.write_text(cfg.read_text().replace('name: "resnet18"', f'name: "{CORRUPT_MODEL}"'))
    (broken / "1" / "model.onnx").write_bytes(b"\x08\x07 this is not an ONNX file")
    return repo


@pytest.fixture(scope="session")
def triton(repository, tmp_path_factory, request):
    """The real tritonserver on free ports; its log is printed if the session fails."""
    from serving.triton import ServerOptions, TritonProcess

    opts = ServerOptions.on_free_ports(
        repository, admin_key="test-admin-key", backend_dir=tmp_path_factory.mktemp("backends")
    )
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    server = TritonProcess(opts, log_path=log).start()
    try:
        server.wait_ready(timeout=300, failed_ok=True)  # CORRUPT_MODEL fails, by design
        yield opts
    except BaseException:
        sys.stderr.write(log.read_text(errors="replace")[-20000:])
        raise
    finally:
        code = server.stop()
        assert server.process.poll() is not None, "tritonserver is still running"
        if request.session.testsfailed or code not in (0, None, -15):
            sys.stderr.write(f"\n--- tritonserver log ({log}), exit code {code} ---\n")
            sys.stderr.write(log.read_text(errors="replace")[-20000:])
