"""The one harness of the benchmarks, the drills and the report: a scratch repository, a temporary
Triton on free ports, and load-test steps whose every answer is checked.

    with temporary_server(repository, scratch) as server:
        report = verified_step(step_config(server.opts.grpc_url, "resnet18", repository, level=4), "c=4")

`verified_step` raises `UnverifiedStep` unless every answer the step got was verified and right
and no request failed (`step_problems`, a pure function): a figure measured on wrong answers is no
figure. A check added here holds for every benchmark and drill.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cnn_deploy_core import CnnDeployError

READY_TIMEOUT_S = 600.0  # a cold start loads every model and warms it up: VGG takes minutes here


class UnverifiedStep(CnnDeployError):
    """A load-test step whose answers were not all verified and right, or whose requests failed."""


@dataclass(frozen=True)
class StepFigures:
    """What a step's judge reads, over the whole run (warm-up included: no answer is hidden)."""

    answered: int
    verified: int
    wrong: int
    failed: int

    @classmethod
    def of(cls, report) -> StepFigures:
        totals = report.totals
        failed = sum(totals.errors.values())
        return cls(totals.requests - failed, totals.verified, totals.wrong, failed)


def step_problems(f: StepFigures, *, allow_failed: bool = False) -> list[str]:
    """Why a step's figures cannot be trusted, one phrase each; empty when every answer was checked
    and right (and, unless `allow_failed`, no request failed)."""
    problems = []
    if f.answered <= 0:
        problems.append("no answer")
    if f.wrong:
        problems.append(f"{f.wrong} wrong answers of {f.verified} verified")
    if f.verified != f.answered:
        problems.append(f"{f.verified} of {f.answered} answers verified")
    if f.failed and not allow_failed:
        problems.append(f"{f.failed} failed requests")
    return problems


def require_verified(report, what: str, *, allow_failed: bool = False):
    """The report, or UnverifiedStep saying what was wrong with it."""
    problems = step_problems(StepFigures.of(report), allow_failed=allow_failed)
    problems += list(report.failures)
    if problems:
        raise UnverifiedStep(f"{what}: {'; '.join(problems)}: no figure of it is reported")
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


def verified_step(config, what: str, *, allow_failed: bool = False):
    """Run one load-test step; its report, when every answer was verified and right."""
    from clients.loadtest import run_loadtest

    return require_verified(run_loadtest(config), what, allow_failed=allow_failed)


async def verified_step_async(config, what: str, *, allow_failed: bool = False, **kwargs):
    """`verified_step` inside a running event loop (several steps side by side)."""
    from clients.loadtest import run_loadtest_async

    report = await run_loadtest_async(config, **kwargs)
    return require_verified(report, what, allow_failed=allow_failed)


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
    """A started and ready TritonProcess; stopped again if it never became ready."""
    from serving.triton import TritonProcess

    server = TritonProcess(opts, log_path=log_path).start()
    try:
        server.wait_ready(READY_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def temporary_server(
    repository: Path, scratch: Path | None = None, *, name: str = "triton", **options
) -> Iterator:
    """A tritonserver of `repository` on free ports, ready; stopped (and gone) on exit. Its log and
    backends go to `scratch` (default: a temporary folder). `options` are ServerOptions fields
    (admin_key, env, cpus ...). Its admin APIs are behind a key, as `serving up`'s are: the given
    one, else $TRITON_ADMIN_KEY, else a random one (nothing of ours opens them)."""
    from serving.local import admin_key as serving_admin_key
    from serving.triton import ServerOptions

    options.setdefault("admin_key", serving_admin_key(None))
    with contextlib.ExitStack() as stack:
        if scratch is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{name}-")))
        opts = ServerOptions.on_free_ports(repository, backend_dir=scratch / "backends", **options)
        server = start_server(opts, scratch / f"{name}.log")
        stack.callback(server.stop)
        yield server
