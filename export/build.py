"""Export several architectures with a progress display; the CLI's `build` command."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from cnn_deploy_core.fsutil import ensure_writable_dir
from cnn_deploy_core.registry import Architecture
from export.pipeline import EXPORT_STEPS, ExportJob, run_export


def build_all(
    archs: list[Architecture],
    *,
    weights: str = "random",
    seed: int = 0,
    output: Path,
    fp16: bool = True,
    keep_raw: bool = False,
    int8: bool = False,
    calibration: Path | None = None,
    console: Console | None = None,
    debug: bool = False,
) -> list[ExportJob]:
    """Export each architecture in turn; one failing does not stop the others."""
    ensure_writable_dir(output)
    console = console or Console(stderr=True)
    options = {"weights": weights, "seed": seed, "fp16": fp16, "keep_raw": keep_raw, "int8": int8}
    jobs = [ExportJob(a, output, calibration=calibration, **options) for a in archs]
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("export", total=len(jobs) * len(EXPORT_STEPS))
        for job in jobs:

            def on_start(step, job=job):
                progress.update(task, description=f"{job.arch.name}: {step.name}")

            before = progress.tasks[0].completed
            run_export(job, on_start=lambda s: (on_start(s), progress.advance(task)), debug=debug)
            progress.update(task, completed=before + len(EXPORT_STEPS))
            mark = "[green]ok[/]" if job.succeeded else "[red]FAILED[/]"
            if not job.succeeded and job.published:
                mark = "[yellow]published without INT8[/]"
            progress.console.print(f"{job.arch.name}: {mark}", highlight=False)
        progress.update(task, description="done")
    return jobs
