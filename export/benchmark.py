"""Benchmark: PyTorch eager vs ONNX Runtime on the unoptimized and the optimized graph.

`python -m export benchmark ARCH... [--batch-sizes 1,8]`. Every configuration of one
architecture is measured in the same run, one after the other, so the ratios are fair on a
shared, noisy machine; the absolute numbers are not.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.layout import INPUT_NAME
from cnn_deploy_core.machine import invoked_command, provenance
from cnn_deploy_core.registry import Architecture
from export.convert import optimize, to_onnx
from export.models import load_model, weights_enum

MIN_ITERATIONS = 2
ROUNDS = 3
# (name, graph, ORT graph optimization level)
ORT_VARIANTS = (
    ("ort_raw_noopt", "raw", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),  # the export, run literally
    ("ort_raw", "raw", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),  # ORT's own optimizer on the export
    ("ort_optimized", "optimized", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),  # our optimized graph
)


@dataclass
class Measurement:
    architecture: str
    runtime: str
    batch_size: int
    images_per_s: float
    ms_per_batch: float
    gflops_per_s: float  # achieved, counting 2 FLOPs per multiply-add
    iterations: int


def _time(fn, seconds: float) -> tuple[float, int]:
    n, start = 0, time.perf_counter()
    while n < MIN_ITERATIONS or time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n, n


def _session(path: Path, level, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def benchmark_arch(
    arch: Architecture,
    *,
    batch_sizes: list[int],
    threads: int,
    seconds: float,
    rounds: int = ROUNDS,
    progress: Progress | None = None,
) -> list[Measurement]:
    torch.set_num_threads(threads)
    model = load_model(arch, "random").model
    gmacs = float(weights_enum(arch).meta["_ops"])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"raw": Path(tmp) / "raw.onnx", "optimized": Path(tmp) / "optimized.onnx"}
        raw = to_onnx(model, arch)
        onnx.save(raw, paths["raw"])
        onnx.save(optimize(raw), paths["optimized"])
        del raw
        runners = {"torch_eager": None}
        for name, graph, level in ORT_VARIANTS:
            runners[name] = _session(paths[graph], level, threads)
        results = []
        rng = np.random.default_rng(0)
        for bs in batch_sizes:
            x = rng.standard_normal((bs, *arch.input_shape), dtype=np.float32)
            xt = torch.from_numpy(x)
            runs = {}
            for name, sess in runners.items():
                if sess is None:

                    def run(xt=xt):
                        with torch.inference_mode():
                            model(xt)
                else:

                    def run(sess=sess, x=x):
                        sess.run(None, {INPUT_NAME: x})

                run()  # warm-up: allocations, kernel selection
                runs[name] = run
            # Rounds interleave the runtimes, and the median round counts: a burst of load from
            # a neighbour on a shared machine then hurts one round of every runtime, not one runtime.
            samples: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
            for rnd in range(rounds):
                for name, run in runs.items():
                    if progress:
                        label = f"{arch.name} batch {bs}: {name} (round {rnd + 1}/{rounds})"
                        progress.update(progress.task_ids[0], description=label)
                    samples[name].append(_time(run, seconds / rounds))
            for name, timings in samples.items():
                per_batch = float(np.median([t for t, _ in timings]))
                ips = bs / per_batch
                n = sum(k for _, k in timings)
                results.append(Measurement(arch.name, name, bs, ips, per_batch * 1e3, ips * gmacs * 2, n))
    return results


def _table(results: list[Measurement]) -> Table:
    table = Table(title="PyTorch eager vs ONNX Runtime (img/s; achieved GFLOP/s)")
    runtimes = list(dict.fromkeys(r.runtime for r in results))
    table.add_column("model")
    table.add_column("batch", justify="right")
    for rt in runtimes:
        table.add_column(rt, justify="right")
    table.add_column("ORT optimized / torch", justify="right")
    keys = list(dict.fromkeys((r.architecture, r.batch_size) for r in results))
    for arch, bs in keys:
        row = {r.runtime: r for r in results if r.architecture == arch and r.batch_size == bs}
        cells = [f"{row[rt].images_per_s:.1f} ({row[rt].gflops_per_s:.0f})" for rt in runtimes]
        ratio = row["ort_optimized"].images_per_s / row["torch_eager"].images_per_s
        table.add_row(arch, str(bs), *cells, f"{ratio:.2f}x")
    return table


def _plot(results: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r.architecture, r.batch_size) for r in results))
    runtimes = list(dict.fromkeys(r.runtime for r in results))
    fig, ax = plt.subplots(figsize=(max(6, len(keys) * 1.2), 4.5))
    width = 0.8 / len(runtimes)
    for i, rt in enumerate(runtimes):
        values = [
            next(r.images_per_s for r in results if (r.architecture, r.batch_size, r.runtime) == (*k, rt))
            for k in keys
        ]
        ax.bar(np.arange(len(keys)) + i * width, values, width, label=rt)
    ax.set_xticks(np.arange(len(keys)) + width * (len(runtimes) - 1) / 2)
    ax.set_xticklabels([f"{a}\nbatch {b}" for a, b in keys], fontsize=8)
    ax.set_ylabel("images / s (CPU)")
    ax.set_yscale("log")
    ax.set_title("PyTorch eager vs ONNX Runtime")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=120)
    plt.close(fig)
    Path(tmp.name).replace(path)


def run_benchmark(
    archs: list[Architecture],
    *,
    batch_sizes: list[int],
    threads: int,
    seconds: float,
    output: Path,
    as_json: bool,
    console: Console,
    out: Console,
) -> dict:
    results: list[Measurement] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=len(archs))
        for arch in archs:
            results += benchmark_arch(
                arch, batch_sizes=batch_sizes, threads=threads, seconds=seconds, progress=progress
            )
            progress.advance(task)
    report = {
        "command": invoked_command(),  # as run, every option (provenance has it too)
        "threads": threads,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
        },
        "results": [asdict(r) for r in results],
    }
    report["provenance"] = provenance()
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2))
    _plot(results, output.with_suffix(".png"))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        out.print(_table(results))
        out.print(f"JSON: {output}  chart: {output.with_suffix('.png')}")
    return report
