"""Benchmark: a model served by the local Triton (single-image requests, dynamic batching, through
our load test with every answer verified) against in-process ONNX Runtime at its best batch size,
in one run.

`python -m cnn_deploy bench-serving [--model resnet50] [--rounds 3]` (`make bench-serving`).
In-process ORT is measured before each round of served runs and once after the last, and every
figure is the mean over the rounds: the machine is shared and its speed moves from minute
to minute, so a ratio means something only when both sides were measured alternately.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cnn_deploy.harness import place, step_config, temporary_server, the_step, verified_step
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.layout import MODEL_FILE
from cnn_deploy_core.machine import cpu_flags, cpu_model, invoked_command, provenance
from cnn_deploy_core.registry import get
from serving.repository import CpuPlan


@dataclass
class ServedRun:
    instances: int
    threads: int  # 0: decided by the server's policy
    policy: str  # `serving up --ort-threads` (what decides threads = 0)
    queue_delay_us: int
    concurrency: int
    images_per_s: float
    avg_server_batch: float
    verified: int  # answers checked against the golden set (all of them, or the run fails)


def ort_best(model_path: Path, batch_sizes: list[int], threads: int, seconds: float) -> dict[int, float]:
    """In-process ONNX Runtime img/s at each batch size (the ceiling the server is held to)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out = {}
    for bs in batch_sizes:
        x = rng.standard_normal((bs, 3, 224, 224), dtype=np.float32)
        sess.run(None, {"input": x})
        n, start = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - start < seconds:
            sess.run(None, {"input": x})
            n += 1
        out[bs] = bs * n / (time.perf_counter() - start)
    return out


def mean_runs(rounds: list[list[ServedRun]]) -> list[ServedRun]:
    """Each point's figures averaged over the rounds (the same points, in the same order, in each)."""
    if not rounds or any(len(r) != len(rounds[0]) for r in rounds):
        raise ValueError("every round must measure the same points")
    out = []
    for points in zip(*rounds, strict=True):
        first = points[0]
        out.append(
            dataclasses.replace(
                first,
                images_per_s=float(np.mean([p.images_per_s for p in points])),
                avg_server_batch=float(np.mean([p.avg_server_batch for p in points])),
                verified=sum(p.verified for p in points),
            )
        )
    return out


def served(
    models_dir: Path,
    model: str,
    plan: CpuPlan,
    queue_delay_us: int,
    concurrencies: list[int],
    seconds: float,
    console: Console,
    *,
    policy: str = "cores",
    beside: list[str] = (),
) -> list[ServedRun]:
    """Single-image requests at each concurrency, through the harness: every answer verified.
    `beside`: models loaded too, idle (a repository like the demo's); `policy`: the server's
    thread policy, which decides the threads of a plan without its own (threads 0)."""
    # The registry entry with this run's queue delay: the config is generated, never patched.
    arch = dataclasses.replace(get(model), cpu_queue_delay_us=queue_delay_us)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        archs = [arch, *(get(m) for m in beside)]
        repo = place(archs, models_dir=models_dir, scratch=Path(tmp), plan=plan, identity=bool(beside))
        with temporary_server(repo, Path(tmp), ort_threads=policy) as server:
            threads = f"{plan.threads}" if plan.threads else f"{server.share.threads} ({policy})"
            for c in concurrencies:
                console.print(
                    f"  served: {plan.instances} instance(s) x {threads} thread(s), "
                    f"{len(beside)} model(s) beside, delay {queue_delay_us} us, concurrency {c}"
                )
                config = step_config(
                    server.opts.grpc_url, model, repo, level=c, window_s=seconds / 2,
                    warmup_s=min(3.0, seconds), max_windows=4, min_samples=1,
                )  # fmt: skip
                step = the_step(verified_step(config, f"{model} at concurrency {c}"))
                batch = step.server.avg_batch if step.server else None
                runs.append(
                    ServedRun(
                        plan.instances,
                        plan.threads,
                        policy if not plan.threads else "-",
                        queue_delay_us,
                        c,
                        step.inferences_per_s,
                        batch or 0.0,
                        step.verified,
                    )
                )
    return runs


def run_benchmark(
    *,
    models_dir: Path,
    model: str,
    plans: list[CpuPlan],
    policies: list[str] = ("cores",),
    beside: list[str] = (),
    delays: list[int],
    concurrencies: list[int],
    seconds: float,
    output: Path,
    console: Console,
    out: Console,
    as_json: bool,
    rounds: int = 1,
) -> dict:
    path = models_dir / model / MODEL_FILE
    if not path.is_file():
        raise CnnDeployError(f"no export of {model} in {models_dir}; run: python -m export build {model}")
    cores = os.cpu_count() or 1
    batches = [1, 2, 4, 8, 16]
    ort_runs: list[dict[int, float]] = []
    served_rounds: list[list[ServedRun]] = []
    for round_ in range(rounds):
        console.print(
            f"round {round_ + 1} of {rounds}: in-process ONNX Runtime, {cores} threads, batch {batches} ..."
        )
        ort_runs.append(ort_best(path, batches, cores, seconds))
        this_round: list[ServedRun] = []
        for plan in plans:
            for policy in policies if not plan.threads else policies[:1]:
                for delay in delays:
                    this_round += served(
                        models_dir, model, plan, delay, concurrencies, seconds, console,
                        policy=policy, beside=beside,
                    )  # fmt: skip
        served_rounds.append(this_round)
    console.print("in-process ONNX Runtime again ...")
    ort_runs.append(ort_best(path, batches, cores, seconds))
    ort = {bs: float(np.mean([r[bs] for r in ort_runs])) for bs in batches}
    best_bs = max(ort, key=ort.get)
    runs = mean_runs(served_rounds)
    best = max(runs, key=lambda r: r.images_per_s)
    report = {
        "command": invoked_command(),  # as run, every option (provenance has it too)
        "beside": list(beside),
        "rounds": rounds,
        "cpu_flags": cpu_flags(),
        "cpu_model": cpu_model(),
        "model": model,
        "cores": cores,
        "ort_in_process": {
            "images_per_s": ort,  # the mean of the measurements below
            "measured": ort_runs,  # before each round, and after the last
            "best_batch": best_bs,
            "best_images_per_s": ort[best_bs],
        },
        "served": [asdict(r) for r in runs],  # means over the rounds
        "served_rounds": [[asdict(r) for r in rr] for rr in served_rounds],
        "best_served": asdict(best),
        "ratio_best_served_to_ort": best.images_per_s / ort[best_bs],
    }
    report["provenance"] = provenance()
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2))
    if as_json:
        print(json.dumps(report, indent=2))
        return report
    table = Table(
        title=f"{model}: Triton (1 image per request) vs in-process ONNX Runtime "
        f"(best: batch {best_bs}, {ort[best_bs]:.1f} img/s)"
        + (f", means of {rounds} alternated rounds" if rounds > 1 else "")
    )
    for col in ("instances x threads", "queue delay us", "concurrency", "img/s", "server batch", "vs ORT"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            f"{r.instances} x {r.threads or r.policy}",
            str(r.queue_delay_us),
            str(r.concurrency),
            f"{r.images_per_s:.1f}",
            f"{r.avg_server_batch:.1f}",
            f"{r.images_per_s / ort[best_bs]:.2f}x",
        )
    out.print(table)
    out.print(f"best served / in-process ORT: {report['ratio_best_served_to_ort']:.2f}x   JSON: {output}")
    return report
