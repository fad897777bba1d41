"""`python -m cnn_deploy bench-threads [--models resnet18 alexnet]`: two models under load at once,
with ONNX Runtime's default threads against a share of the cores, in one run.

- before: every session with ORT's default, a thread per core, spinning on (what a Triton
  ONNX Runtime backend does unless told otherwise);
- after:  what `serving up` now decides (serving/threads.py): the cores split among the sessions,
  spinning off when more than one shares them.

Both models are loaded at once (one client each, concurrency 2, every answer verified), so each
one's threads compete with the other's: the case that oversubscription hurts. The settings are
measured alternately (before, after, before, after) and the rounds averaged; the machine is
shared and noisy, so only ratios measured side by side mean anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from cnn_deploy.bench_loadgen import cpu_flags
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.layout import ENV_ORT_SPINNING, ENV_ORT_THREADS

ROUNDS = 2


async def _both(urls: str, models: list[str], repository: Path, window_s: float) -> dict[str, float]:
    from clients.loadtest import LoadTestConfig
    from clients.loadtest.runner import run_loadtest_async

    configs = [
        LoadTestConfig(
            url=urls,
            model=m,
            levels=(2,),
            warmup_s=window_s,
            window_s=window_s,
            max_windows=4,
            min_samples=10**9,  # both run the same fixed time, side by side
            max_step_s=window_s * 5,
            repository=repository,
        )
        for m in models
    ]
    reports = await asyncio.gather(*(run_loadtest_async(c) for c in configs))
    out = {}
    for model, report in zip(models, reports, strict=True):
        (step,) = report.steps
        if step.wrong or not step.responses:
            raise CnnDeployError(f"{model}: {step.wrong} wrong answers, {step.responses} answers")
        out[model] = step.inferences_per_s
    return out


def run(models: list[str], *, models_dir: Path, window_s: float, output: Path) -> int:
    from cnn_deploy_core.registry import get
    from serving.repository import CpuPlan, place_models
    from serving.triton import ServerOptions, TritonProcess

    for m in models:
        if not (models_dir / m / "model.onnx").is_file():
            raise CnnDeployError(f"{m} is not exported in {models_dir}: python -m export build {m}")
    flags = cpu_flags()
    stderr.print(f"CPU instruction sets: {', '.join(flags)}; {os.cpu_count()} cores")
    settings = {
        "before": ((ENV_ORT_THREADS, "0"), (ENV_ORT_SPINNING, "1")),  # ORT's defaults
        "after": (),  # the share serving/threads.py decides
    }
    rates: dict[str, list[dict[str, float]]] = {k: [] for k in settings}
    described = {}
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        repository = Path(tmp) / "repository"
        place_models(
            [get(m) for m in models],
            models_dir=models_dir,
            repository=repository,
            cpu=CpuPlan(1, 0),
            identity=False,
            console=Console(stderr=True, quiet=True),
        )
        for round_ in range(ROUNDS):
            for name, env in settings.items():
                opts = ServerOptions.on_free_ports(repository, backend_dir=Path(tmp) / "backends", env=env)
                with TritonProcess(opts, log_path=Path(tmp) / f"triton-{name}.log").start() as server:
                    server.wait_ready(600)
                    share = server.share
                    described[name] = (
                        f"{os.cpu_count()} intra-op threads per session (ORT default), spinning on"
                        if env
                        else share.describe()
                    )
                    result = asyncio.run(_both(opts.grpc_url, models, repository, window_s))
                rates[name].append(result)
                figures = ", ".join(f"{m} {v:.1f}" for m, v in result.items())
                stderr.print(f"round {round_ + 1}, {name}: {figures} img/s (sum {sum(result.values()):.1f})")
    mean = {k: {m: float(np.mean([r[m] for r in v])) for m in models} for k, v in rates.items()}
    total = {k: sum(v.values()) for k, v in mean.items()}
    report = {
        "command": f"python -m cnn_deploy bench-threads --models {' '.join(models)}",
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "settings": described,
        "rounds": rates,
        "mean_img_s": mean,
        "sum_img_s": total,
        "after_over_before": total["after"] / total["before"],
        "per_model_after_over_before": {m: mean["after"][m] / mean["before"][m] for m in models},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    for name in settings:
        figures = ", ".join(f"{m} {mean[name][m]:.1f}" for m in models)
        stdout.print(
            f"{name:6s} ({described[name]}): {figures}; sum {total[name]:.1f} img/s", highlight=False
        )
    stdout.print(f"after / before: {report['after_over_before']:.2f}x (sum of both models); JSON: {output}")
    return 0
