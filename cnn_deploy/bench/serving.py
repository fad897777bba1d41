"""Benchmark: a model served by the local Triton (single-image requests, dynamic batching)
against in-process ONNX Runtime at its best batch size, in one run.

`python -m cnn_deploy bench-serving [--model resnet50]` (`make bench-serving`). In-process ORT is
measured before and after the served runs and averaged, so a change in the machine's load hits both.
"""

from __future__ import annotations

import asyncio
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

from clients.client import AsyncTritonClient, TritonClient
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.layout import MODEL_FILE
from cnn_deploy_core.registry import get
from serving.repository import CpuPlan, place_models
from serving.triton import ServerOptions, TritonProcess


@dataclass
class ServedRun:
    instances: int
    threads: int
    queue_delay_us: int
    concurrency: int
    images_per_s: float
    avg_server_batch: float
    errors: int


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


async def _drive(url: str, model: str, concurrency: int, seconds: float, x: np.ndarray) -> tuple[int, int]:
    done = errors = 0
    async with AsyncTritonClient(url, timeout=120) as client:
        await client.model_info(model)
        stop = time.perf_counter() + seconds

        async def worker():
            nonlocal done, errors
            while time.perf_counter() < stop:
                try:
                    await client.infer(model, x, retry=False)
                    done += 1
                except Exception:
                    errors += 1

        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return done, errors


def _stats(url: str, model: str) -> tuple[int, int]:
    with TritonClient(url) as client:
        s = client.statistics(model)
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def served(
    models_dir: Path,
    model: str,
    plan: CpuPlan,
    queue_delay_us: int,
    concurrencies: list[int],
    seconds: float,
    console: Console,
) -> list[ServedRun]:
    # The registry entry with this run's queue delay: the config is generated, never patched.
    arch = dataclasses.replace(get(model), queue_delay_us=queue_delay_us)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        place_models(
            [arch],
            models_dir=models_dir,
            repository=repo,
            cpu=plan,
            identity=False,
            console=Console(quiet=True),
        )
        opts = ServerOptions.on_free_ports(repo, backend_dir=Path(tmp) / "backends")
        x = np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32)
        runs = []
        with TritonProcess(opts, log_path=Path(tmp) / "triton.log").start() as server:
            server.wait_ready(600)
            asyncio.run(_drive(opts.grpc_url, model, max(concurrencies), min(3.0, seconds), x))  # warm-up
            for c in concurrencies:
                console.print(
                    f"  served: {plan.instances} instance(s) x {plan.threads} thread(s), "
                    f"delay {queue_delay_us} us, concurrency {c}"
                )
                before = _stats(opts.grpc_url, model)
                start = time.perf_counter()
                done, errors = asyncio.run(_drive(opts.grpc_url, model, c, seconds, x))
                elapsed = time.perf_counter() - start
                after = _stats(opts.grpc_url, model)
                executions = max(1, after[1] - before[1])
                runs.append(
                    ServedRun(
                        plan.instances,
                        plan.threads,
                        queue_delay_us,
                        c,
                        done / elapsed,
                        (after[0] - before[0]) / executions,
                        errors,
                    )
                )
    return runs


def run_benchmark(
    *,
    models_dir: Path,
    model: str,
    plans: list[CpuPlan],
    delays: list[int],
    concurrencies: list[int],
    seconds: float,
    output: Path,
    console: Console,
    out: Console,
    as_json: bool,
) -> dict:
    path = models_dir / model / MODEL_FILE
    if not path.is_file():
        raise CnnDeployError(f"no export of {model} in {models_dir}; run: python -m export build {model}")
    cores = os.cpu_count() or 1
    batches = [1, 2, 4, 8, 16]
    console.print(f"in-process ONNX Runtime, {cores} threads, batch {batches} ...")
    ort_before = ort_best(path, batches, cores, seconds)
    runs: list[ServedRun] = []
    for plan in plans:
        for delay in delays:
            runs += served(models_dir, model, plan, delay, concurrencies, seconds, console)
    console.print("in-process ONNX Runtime again ...")
    ort_after = ort_best(path, batches, cores, seconds)
    ort = {bs: (ort_before[bs] + ort_after[bs]) / 2 for bs in batches}
    best_bs = max(ort, key=ort.get)
    best = max(runs, key=lambda r: r.images_per_s)
    report = {
        "command": f"python -m cnn_deploy bench-serving --model {model}",
        "model": model,
        "cores": cores,
        "ort_in_process": {
            "images_per_s": ort,
            "before": ort_before,
            "after": ort_after,
            "best_batch": best_bs,
            "best_images_per_s": ort[best_bs],
        },
        "served": [asdict(r) for r in runs],
        "best_served": asdict(best),
        "ratio_best_served_to_ort": best.images_per_s / ort[best_bs],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2))
    if as_json:
        print(json.dumps(report, indent=2))
        return report
    table = Table(
        title=f"{model}: Triton (1 image per request) vs in-process ONNX Runtime "
        f"(best: batch {best_bs}, {ort[best_bs]:.1f} img/s)"
    )
    for col in ("instances x threads", "queue delay us", "concurrency", "img/s", "server batch", "vs ORT"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            f"{r.instances} x {r.threads}",
            str(r.queue_delay_us),
            str(r.concurrency),
            f"{r.images_per_s:.1f}",
            f"{r.avg_server_batch:.1f}",
            f"{r.images_per_s / ort[best_bs]:.2f}x",
        )
    out.print(table)
    out.print(f"best served / in-process ORT: {report['ratio_best_served_to_ort']:.2f}x   JSON: {output}")
    return report
