"""`python -m cnn_deploy bench-threads [--models resnet18,alexnet]`: how ONNX Runtime sessions
should share the cores, measured with two models loaded, in one run.

Settings (`serving up --ort-threads`, and the server's environment read by our backend):
- ort-default:  every session a thread per core, spinning on (what a Triton ONNX Runtime backend
  does unless told otherwise);
- cores:        a thread per core, spinning off (`--ort-threads cores`);
- share:        the cores split among the sessions, spinning off (`--ort-threads share`);
- turns:        a thread per core, spinning off, executions of different models taking turns on
  the cores through Triton's rate limiter (`--ort-threads turns`);
- adapt:        every core for a run alone, the sessions' share beside another model's run (a
  narrow twin of the session; `--ort-threads adapt`, the default).
Not offered: turns with spinning on (slower with two models busy), or spinning within a run under
turns (no better than off).

Scenarios: both models under load at once (one client each, concurrency 2) and the first model
alone (the other loaded, idle); every answer verified. Settings are measured alternately, three
rounds, averaged: the machine is shared and noisy, so only ratios side by side mean anything.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import numpy as np

from cnn_deploy.harness import place, step_config, temporary_server, the_step, verified_step_async
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.layout import ENV_ORT_SPINNING, ENV_ORT_THREADS
from cnn_deploy_core.machine import cpu_flags, cpu_model, invoked_command, provenance

ROUNDS = 3


async def _both(urls: str, models: list[str], repository: Path, window_s: float) -> dict[str, float]:
    """Each model under its own load at once, the same fixed time, every answer verified."""
    configs = [
        step_config(
            urls,
            m,
            repository,
            level=2,
            window_s=window_s,
            max_windows=4,
            min_samples=10**9,
            max_step_s=window_s * 5,
        )
        for m in models
    ]
    reports = await asyncio.gather(*(verified_step_async(c, c.model) for c in configs))
    return {c.model: the_step(r).inferences_per_s for c, r in zip(configs, reports, strict=True)}


def run(models: list[str], *, models_dir: Path, window_s: float, output: Path) -> int:
    from cnn_deploy_core.registry import get
    from serving.repository import CpuPlan
    from serving.threads import DEFAULT_POLICY, available_cores

    cores = available_cores()
    flags = cpu_flags()
    stderr.print(f"CPU: {cpu_model()}; instruction sets: {', '.join(flags)}; {cores} cores")
    settings = {  # name: (the --ort-threads policy, environment over what it decides)
        "ort-default": ("cores", ((ENV_ORT_THREADS, "0"), (ENV_ORT_SPINNING, "1"))),
        "cores": ("cores", ()),
        "share": ("share", ()),
        "turns": ("turns", ()),
        "adapt": ("adapt", ()),
    }
    scenarios = {"both": models, "alone": models[:1]}
    rates: dict[str, dict[str, list[dict[str, float]]]] = {k: {sc: [] for sc in scenarios} for k in settings}
    described = {}
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        repository = place(
            [get(m) for m in models], models_dir=models_dir, scratch=Path(tmp), plan=CpuPlan(1, 0)
        )
        for round_ in range(ROUNDS):
            for name, (policy, env) in settings.items():
                with temporary_server(
                    repository, Path(tmp), name=f"triton-{name}", env=env, ort_threads=policy
                ) as server:
                    described[name] = (
                        f"{cores} intra-op threads per session (ORT's default), spinning on"
                        if name == "ort-default"
                        else server.share.describe()
                    )
                    for scenario, loaded in scenarios.items():
                        result = asyncio.run(_both(server.opts.grpc_url, loaded, repository, window_s))
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
        "command": invoked_command(),  # as run, every option (provenance has it too)
        "cpu_flags": flags,
        "cores": cores,
        "settings": described,
        "rounds": rates,
        "mean_img_s": mean,
        "sum_img_s": total,
        "over_ort_default": {k: {sc: v[sc] / base[sc] for sc in scenarios} for k, v in total.items()},
        "over_cores": {k: {sc: v[sc] / total["cores"][sc] for sc in scenarios} for k, v in total.items()},
        "default": DEFAULT_POLICY,
        "cpu_model": cpu_model(),
    }
    report["provenance"] = provenance()
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    for name in settings:
        ratio, cores_ratio = report["over_ort_default"][name], report["over_cores"][name]
        label = f"{name} (default)" if name == DEFAULT_POLICY else name
        stdout.print(
            f"{label:15s}: both {total[name]['both']:.1f} img/s "
            f"({ratio['both']:.2f}x ort-default), {models[0]} alone {total[name]['alone']:.1f} img/s "
            f"({ratio['alone']:.2f}x ort-default, {cores_ratio['alone']:.2f}x cores)  [{described[name]}]",
            highlight=False,
        )
    stdout.print(f"ratios measured side by side, {ROUNDS} alternated rounds; JSON: {output}")
    return 0
