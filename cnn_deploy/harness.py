"""The one harness of the benchmarks, the drills and the report: a scratch repository, a temporary
Triton on free ports, and load-test steps whose every answer is checked.

    with temporary_server(repository, scratch) as server:
        report = verified_step(step_config(server.opts.grpc_url, "resnet18", repository, level=4), "c=4")

`verified_step` raises `UnverifiedStep` when cnn_deploy_core.judge finds a problem in the step's
report under HARNESS_OBJECTIVES (a failed, wrong, unverified or dropped request, nothing measured):
a figure measured on wrong answers is no figure. A check added here holds for every benchmark and
drill.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.judge import Objectives, problems

READY_TIMEOUT_S = 600.0  # a cold start loads every model and warms it up: VGG takes minutes here


class UnverifiedStep(CnnDeployError):
    """A load-test step the judge found a problem in: its figures cannot be trusted."""


# A figure measured on a failed, wrong, unverified or dropped request is no figure.
HARNESS_OBJECTIVES = Objectives()


def require_verified(report, what: str, *, objectives: Objectives = HARNESS_OBJECTIVES):
    """The report, or UnverifiedStep listing what cnn_deploy_core.judge found wrong with it."""
    found = problems(report, objectives)
    if found:
        raise UnverifiedStep(f"{what}: {'; '.join(map(str, found))}: no figure of it is reported")
    return report


def step_config(url: str, model: str, repository: Path | None, *, level: float, window_s: float, **overrides):
    """One load-test step at `level` (a concurrency, or a rate with mode="rate"), every answer checked.
    The defaults settle within a few windows; callers override what their measurement needs."""
    from clients.loadtest import LoadTestConfig

    settings = dict(
        url=url,
        model=model,
        levels=(level,),
        warmup_s=window_s,
        window_s=window_s,
        max_windows=6,
        min_samples=30,
        repository=repository,
        verify_fraction=1.0,
    )
    settings.update(overrides)
    return LoadTestConfig(**settings)


def verified_step(config, what: str, *, objectives: Objectives = HARNESS_OBJECTIVES):
    """Run one load-test step; its report, when the judge finds nothing wrong with it."""
    from clients.loadtest import run_loadtest

    return require_verified(run_loadtest(config, objectives=objectives), what, objectives=objectives)


async def verified_step_async(config, what: str, *, objectives: Objectives = HARNESS_OBJECTIVES, **kwargs):
    """`verified_step` inside a running event loop (several steps side by side)."""
    from clients.loadtest import run_loadtest_async

    report = await run_loadtest_async(config, objectives=objectives, **kwargs)
    return require_verified(report, what, objectives=objectives)


def the_step(report):
    """The one step of a one-level report."""
    (step,) = report.steps
    return step


def place(archs, *, models_dir: Path, scratch: Path, plan, identity: bool = False) -> Path:
    """A scratch repository of `archs` exported in `models_dir` (one CpuPlan for all); its path."""
    from rich.console import Console

    from serving.repository import place_models

    for arch in archs:
        if not (models_dir / arch.name / "model.onnx").is_file():
            raise CnnDeployError(
                f"no export of {arch.name} in {models_dir}: run `python -m export build {arch.name}`"
            )
    repository = scratch / "repository"
    place_models(
        archs,
        models_dir=models_dir,
        repository=repository,
        cpu=plan,
        identity=identity,
        console=Console(stderr=True, quiet=True),
    )
    return repository


def start_server(opts, log_path: Path):
    """A started TritonProcess with every model ready; stopped again if it never became ready."""
    from serving.triton import serve

    return serve(opts, log_path, READY_TIMEOUT_S)


@contextlib.contextmanager
def temporary_server(
    repository: Path, scratch: Path | None = None, *, name: str = "triton", **options
) -> Iterator:
    """A tritonserver of `repository` on free ports, ready; stopped (and gone) on exit. Its log and
    backends go to `scratch` (default: a temporary folder). `options` are ServerOptions fields
    (admin_key, env, cpus ...). Its admin APIs are behind a key, as every server's are: the given
    one, else a random one (ServerOptions)."""
    from serving.triton import ServerOptions

    with contextlib.ExitStack() as stack:
        if scratch is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{name}-")))
        opts = ServerOptions.on_free_ports(repository, backend_dir=scratch / "backends", **options)
        server = start_server(opts, scratch / f"{name}.log")
        stack.callback(server.stop)
        yield server
