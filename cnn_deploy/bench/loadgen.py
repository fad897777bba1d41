"""`make bench-loadgen`: our load generator beside NVIDIA's perf_analyzer, on one local server.

perf_analyzer is fetched into `build/cache/perf_analyzer/` (no root needed): the binary from the
`tritonclient==2.51.0` wheel (the same release as the server; newer perf-analyzer wheels need
glibc 2.38), `libb64.so.0d` from Debian's `libb64-0d` (`apt-get download` + `dpkg -x`) and
`libcudart.so.12` from the `nvidia-cuda-runtime-cu12` wheel. When that fails it says why and exits 2.

Then, for each model and concurrency, the two tools run alternately against the same server, with
the same measurement interval and stability rule, and the same transport (`--shared-memory`). CPU
per request: perf_analyzer's whole process (rusage of the child) and our generator's own
measurement, each divided by the requests Triton counted, so both rest on the server's count.
Where perf_analyzer's windows never agree (it fails; ours reports the step "not stable"), it is
run once more, and the report marks that point `measured_again`.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cnn_deploy.harness import place, step_config, temporary_server, the_step, verified_step
from cnn_deploy_core import CnnDeployError, paths
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_bytes, atomic_write_text
from cnn_deploy_core.machine import cpu_flags, invoked_command, provenance

NO_PERF_ANALYZER_EXIT = 2
TRITONCLIENT = "tritonclient==2.51.0"
CUDART = "nvidia-cuda-runtime-cu12==12.9.79"


class NoPerfAnalyzer(CnnDeployError):
    """perf_analyzer could not be fetched or does not run here."""


def _run(cmd: list[str], cwd: Path, what: str, timeout: float = 300) -> None:
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NoPerfAnalyzer(f"cannot fetch {what}: {e}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        detail = next((ln for ln in reversed(lines) if "WARNING" not in ln), "")
        raise NoPerfAnalyzer(f"cannot fetch {what}: `{' '.join(cmd[:4])} ...` failed: {detail[:200]}")


def fetch_perf_analyzer(cache: Path) -> Path:
    """The perf_analyzer binary with its two libraries beside it in `cache/lib`; cached."""
    binary, lib = cache / "perf_analyzer", cache / "lib"
    if binary.is_file() and (lib / "libb64.so.0d").is_file() and (lib / "libcudart.so.12").is_file():
        return binary
    lib.mkdir(parents=True, exist_ok=True)
    downloads = cache / "downloads"
    downloads.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(downloads)]
    _run([*pip, TRITONCLIENT], cache, TRITONCLIENT)
    _run([*pip, CUDART], cache, CUDART)
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise NoPerfAnalyzer("cannot fetch libb64: apt-get and dpkg are needed (Debian's libb64-0d)")
    _run(["apt-get", "download", "libb64-0d"], downloads, "libb64-0d")
    for wheel, member, target in (
        ("tritonclient-2.51.0", "tritonclient-2.51.0.data/data/bin/perf_analyzer", binary),
        ("nvidia_cuda_runtime_cu12", "nvidia/cuda_runtime/lib/libcudart.so.12", lib / "libcudart.so.12"),
    ):
        (path,) = downloads.glob(f"{wheel}*.whl")
        with zipfile.ZipFile(path) as z:
            atomic_write_bytes(target, z.read(member))
    binary.chmod(0o755)
    (deb,) = downloads.glob("libb64-0d*.deb")
    with tempfile.TemporaryDirectory() as tmp:
        _run(["dpkg", "-x", str(deb), tmp], downloads, "libb64-0d")
        (so,) = Path(tmp).rglob("libb64.so.0d")
        shutil.copy2(so, lib / "libb64.so.0d")
    check = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, env=_pa_env(cache), timeout=30
    )
    if "perf_analyzer" not in (check.stdout + check.stderr).lower() and check.returncode != 0:
        raise NoPerfAnalyzer(
            f"perf_analyzer does not run here: {(check.stderr or check.stdout).strip()[:200]}"
        )
    return binary


def _pa_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(cache / "lib"), env.get("LD_LIBRARY_PATH")]))
    return env


@dataclass
class Point:
    tool: str  # perf_analyzer | cnn-deploy
    model: str
    concurrency: int
    infer_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float | None
    requests: int  # as Triton counted them during the run
    verified: int | None = None  # answers our tool checked (perf_analyzer checks none)
    measured_again: bool = False  # perf_analyzer's first run found no stable windows


def _server_count(client, model: str) -> int:
    return int(client.statistics(model).get("inference_count", 0))


# What perf_analyzer prints when no `--max-trials` windows agreed within the stability percentage.
UNSTABLE = "Failed to obtain stable measurement"


class PerfAnalyzerFailed(CnnDeployError):
    def __init__(self, message: str, *, unstable: bool = False):
        super().__init__(message)
        self.unstable = unstable


def perf_analyzer_point(measure: Callable[[], Point], what: str) -> Point:
    """perf_analyzer's figure, measured again once if its windows never agreed: on a shared machine
    a busy spell can outlast its windows (our generator reports such a step as "not stable" instead
    of failing). Any other failure, or a second unstable run, fails the benchmark."""
    try:
        return measure()
    except PerfAnalyzerFailed as e:
        if not e.unstable:
            raise
    stderr.print(f"{what}: perf_analyzer found no stable windows; measuring again", highlight=False)
    return replace(measure(), measured_again=True)


def run_perf_analyzer(binary: Path, cache: Path, opts, model: str, c: int, settings: dict, client) -> Point:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "pa.csv"
        cmd = [
            str(binary),
            "-m", model,
            "-u", f"127.0.0.1:{opts.grpc_port}",
            "-i", "grpc",
            "--concurrency-range", f"{c}:{c}",
            "--measurement-interval", str(int(settings["window_s"] * 1000)),
            "--stability-percentage", str(settings["stability"]),
            "--max-trials", str(settings["max_windows"]),
            "-f", str(report),
        ]  # fmt: skip
        if settings["shared_memory"] == "system":
            cmd += ["--shared-memory", "system", "-H", f"triton-grpc-protocol-admin-key:{opts.admin_key}"]
        before_count, before = _server_count(client, model), resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(cmd, capture_output=True, text=True, env=_pa_env(cache), timeout=600)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        requests = _server_count(client, model) - before_count
        if result.returncode != 0 or not report.is_file():
            raise PerfAnalyzerFailed(
                f"perf_analyzer failed on {model} c={c}: {(result.stderr or result.stdout)[-400:]}",
                unstable=UNSTABLE in result.stderr + result.stdout,
            )
        (row,) = list(csv.DictReader(io.StringIO(report.read_text())))[:1]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Point(
        "perf_analyzer",
        model,
        c,
        float(row["Inferences/Second"]),
        float(row["p50 latency"]) / 1e3,
        float(row["p99 latency"]) / 1e3,
        cpu / requests * 1e3 if requests else None,
        requests,
    )


def run_ours(opts, model: str, c: int, settings: dict, client, repository: Path) -> Point:
    config = step_config(
        opts.grpc_url,
        model,
        repository,
        level=c,
        window_s=settings["window_s"],
        stability=settings["stability"] / 100,
        max_windows=settings["max_windows"],
        max_step_s=settings["window_s"] * (settings["max_windows"] + 2),
        shared_memory=settings["shared_memory"],
        admin_key=opts.admin_key,
        min_samples=1,  # as perf_analyzer: stable windows, whatever their sample count
    )
    before_count = _server_count(client, model)
    step = the_step(verified_step(config, f"our load test of {model} at c={c}"))
    requests = _server_count(client, model) - before_count
    generator = step.generator_cpu_ms_per_request or 0.0
    verifier = step.verifier_cpu_ms_per_request or 0.0
    return Point(
        "cnn-deploy",
        model,
        c,
        step.inferences_per_s,
        step.latency_ms.p50,
        step.latency_ms.p99,
        generator + verifier,  # everything it spends per request, checking every answer included
        requests,
        step.verified,
    )


def _plot(points: list[Point], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(p.model for p in points))
    fig = Figure(figsize=(6 * len(models), 4.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        twin = ax.twinx()
        for tool, colour in (("perf_analyzer", "#76b900"), ("cnn-deploy", "#1f77b4")):
            mine = sorted(
                (p for p in points if p.model == model and p.tool == tool), key=lambda p: p.concurrency
            )
            xs = [p.concurrency for p in mine]
            ax.plot(xs, [p.infer_per_s for p in mine], "o-", color=colour, label=f"{tool} infer/s")
            twin.plot(xs, [p.p50_ms for p in mine], "s--", color=colour, alpha=0.6, label=f"{tool} p50 ms")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel("inferences / s")
        twin.set_ylabel("p50 latency (ms)")
        ax.set_title(model)
        ax.legend(loc="upper left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
        ax.set_ylim(bottom=0)
        twin.set_ylim(bottom=0)
    fig.suptitle("our load generator vs perf_analyzer, same server, alternating runs")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def run_bench(
    *, models: list[str], concurrencies: list[int], shared_memory: str, window_s: float, output: Path
) -> int:
    from clients.client import TritonClient
    from cnn_deploy_core import registry
    from serving.repository import CpuPlan

    cache = paths.cache_dir() / "perf_analyzer"
    try:
        with stderr.status("fetching perf_analyzer ..."):
            binary = fetch_perf_analyzer(cache)
    except NoPerfAnalyzer as e:
        stderr.print(str(e), markup=False, highlight=False)
        return NO_PERF_ANALYZER_EXIT
    settings = {"window_s": window_s, "stability": 10, "max_windows": 8, "shared_memory": shared_memory}
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp:
        archs = [registry.get(m) for m in models if m != "identity"]
        plan = CpuPlan(1, os.cpu_count() or 1)
        repo = place(archs, models_dir=paths.models_dir(), scratch=Path(tmp), plan=plan, identity=True)
        with temporary_server(repo, Path(tmp), admin_key="bench-admin-key") as server:
            opts = server.opts
            with TritonClient(opts.grpc_url) as client:
                for model in models:
                    for c in concurrencies:
                        for tool in ("perf_analyzer", "cnn-deploy"):  # alternating, same conditions
                            stderr.print(f"{model} c={c}: {tool} ...", highlight=False)
                            if tool == "perf_analyzer":
                                measure = functools.partial(
                                    run_perf_analyzer, binary, cache, opts, model, c, settings, client
                                )
                                point = perf_analyzer_point(measure, f"{model} c={c}")
                            else:
                                point = run_ours(opts, model, c, settings, client, repo)
                            points.append(point)
                            stderr.print(_describe(point), highlight=False)
    rows = []
    for model in models:
        for c in concurrencies:
            pa, us = _point(points, "perf_analyzer", model, c), _point(points, "cnn-deploy", model, c)
            rows.append(
                {
                    "model": model,
                    "concurrency": c,
                    "throughput_ratio": us.infer_per_s / pa.infer_per_s,
                    "p50_ratio": us.p50_ms / pa.p50_ms,
                    "cpu_ratio": (us.cpu_ms_per_request / pa.cpu_ms_per_request)
                    if us.cpu_ms_per_request and pa.cpu_ms_per_request
                    else None,
                }
            )
    report = {
        "command": invoked_command(),  # as run, every option (provenance has it too)
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "flags": cpu_flags(),
        },
        "settings": settings,
        "points": [asdict(p) for p in points],
        "ratios": rows,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report["provenance"] = provenance()
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    _plot(points, output.with_suffix(".png"))
    stdout.print(_table(points, rows, shared_memory))
    stdout.print(f"JSON: {output}  chart: {output.with_suffix('.png')}", highlight=False)
    return 0


def _describe(p: Point) -> str:
    cpu = p.cpu_ms_per_request or 0.0
    return (
        f"  {p.infer_per_s:.1f} infer/s, p50 {p.p50_ms:.2f} ms, p99 {p.p99_ms:.2f} ms, {cpu:.3f} ms CPU/req"
    )


def _point(points: list[Point], tool: str, model: str, c: int) -> Point:
    return next(p for p in points if (p.tool, p.model, p.concurrency) == (tool, model, c))


def _table(points: list[Point], rows: list[dict], shared_memory: str):
    from rich.table import Table

    title = f"ours vs perf_analyzer (gRPC, shared memory: {shared_memory}; CPU: {', '.join(cpu_flags())})"
    table = Table(title=title)
    columns = (
        "model",
        "c",
        "PA infer/s",
        "ours infer/s",
        "ours/PA",
        "PA p50",
        "ours p50",
        "PA p99",
        "ours p99",
    )
    for col in (*columns, "PA CPU/req", "ours CPU/req"):
        table.add_column(col, justify="right")
    for r in rows:
        pa = _point(points, "perf_analyzer", r["model"], r["concurrency"])
        us = _point(points, "cnn-deploy", r["model"], r["concurrency"])
        table.add_row(
            r["model"],
            str(r["concurrency"]),
            f"{pa.infer_per_s:.1f}",
            f"{us.infer_per_s:.1f}",
            f"{r['throughput_ratio']:.2f}",
            f"{pa.p50_ms:.2f}",
            f"{us.p50_ms:.2f}",
            f"{pa.p99_ms:.2f}",
            f"{us.p99_ms:.2f}",
            f"{pa.cpu_ms_per_request or 0:.3f}",
            f"{us.cpu_ms_per_request or 0:.3f}",
        )
    table.caption = (
        "latency ms; CPU ms per request: perf_analyzer's process, ours generator + answer checking"
    )
    return table
