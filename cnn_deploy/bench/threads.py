"""`python -m cnn_deploy bench-threads [--models resnet18,alexnet]`: how ONNX Runtime sessions
should share the cores, measured with two models loaded, in one run.

Settings (the server's environment, read by our backend):
- ort-default:  every session a thread per core, spinning on (what a Triton ONNX Runtime backend
  does unless told otherwise);
- cores-nospin: a thread per core, spinning off;
- share:        the cores split among the sessions, spinning off (serving/threads.py's rule).

Scenarios: both models under load at once (one client each, concurrency 2) and the first model
alone (the other loaded, idle); every answer verified. Settings are measured alternately, two
rounds, averaged: the machine is shared and noisy, so only ratios side by side mean anything.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.layout import ENV_ORT_SPINNING, ENV_ORT_THREADS
from cnn_deploy_core.machine import cpu_flags

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
    from serving.threads import available_cores
    from serving.triton import ServerOptions, TritonProcess

    for m in models:
        if not (models_dir / m / "model.onnx").is_file():
            raise CnnDeployError(f"{m} is not exported in {models_dir}: python -m export build {m}")
    cores = available_cores()
    flags = cpu_flags()
    stderr.print(f"CPU instruction sets: {', '.join(flags)}; {cores} cores")
    settings = {
        "ort-default": ((ENV_ORT_THREADS, "0"), (ENV_ORT_SPINNING, "1")),
        "cores-nospin": ((ENV_ORT_THREADS, str(cores)), (ENV_ORT_SPINNING, "0")),
        "share": (),  # what serving/threads.py decides
    }
    scenarios = {"both": models, "alone": models[:1]}
    rates: dict[str, dict[str, list[dict[str, float]]]] = {k: {sc: [] for sc in scenarios} for k in settings}
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
                    threads, spin = dict(env).get(ENV_ORT_THREADS), dict(env).get(ENV_ORT_SPINNING)
                    described[name] = (
                        server.share.describe()
                        if not env
                        else f"{threads if threads != '0' else cores} intra-op threads per session, "
                        f"spinning {'on' if spin == '1' else 'off'}"
                    )
                    for scenario, loaded in scenarios.items():
                        result = asyncio.run(_both(opts.grpc_url, loaded, repository, window_s))
                        rates[name][scenario].append(result)
                        figures = ", ".join(f"{m} {v:.1f}" for m, v in result.items())
                        stderr.print(f"round {round_ + 1}, {name}, {scenario}: {figures} img/s")
    mean = {
        k: {sc: {m: float(np.mean([r[m] for r in runs])) for m in scenarios[sc]} for sc, runs in v.items()}
        for k, v in rates.items()
    }
    total = {k: {sc: sum(v[sc].values()) for sc in scenarios} for k, v in mean.items()}
    base = total["ort-default"]
    report = {
        "command": f"python -m cnn_deploy bench-threads --models {','.join(models)}",
        "cpu_flags": flags,
        "cores": cores,
        "settings": described,
        "rounds": rates,
        "mean_img_s": mean,
        "sum_img_s": total,
        "over_ort_default": {k: {sc: v[sc] / base[sc] for sc in scenarios} for k, v in total.items()},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    for name in settings:
        ratio = report["over_ort_default"][name]
        stdout.print(
            f"{name:12s} ({described[name]}): both {total[name]['both']:.1f} img/s "
            f"({ratio['both']:.2f}x), {models[0]} alone {total[name]['alone']:.1f} img/s "
            f"({ratio['alone']:.2f}x)",
            highlight=False,
        )
    stdout.print(f"ratios against ort-default, measured side by side; JSON: {output}")
    return 0
