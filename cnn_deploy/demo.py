"""`make demo`: export -> repository -> local Triton -> classify -> verify -> load test -> stop.

Each stage runs the same public command a user would type, in a subprocess, as named steps with
a status: the demo shows the commands, and a stage's failure is that command's own error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from clients.client import TritonClient
from cnn_deploy_core import CnnDeployError, paths
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import ensure_writable_dir
from cnn_deploy_core.images import sample_photos
from cnn_deploy_core.steps import SkipStep, Status, Step, StepResult, run_steps
from serving.triton import free_ports, port_free


@dataclass
class Demo:
    models: list[str]
    weights: str
    images: list[Path]
    output: Path
    ports: tuple[int, int, int] = (8000, 8001, 8002)
    reports: list[Path] = field(default_factory=list)
    classified: dict[str, dict[str, str]] = field(default_factory=dict)
    started: bool = False  # only a server this demo started is stopped at the end
    json: bool = False  # the commands' own tables go to stderr, so stdout is JSON only

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.ports[1]}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def loadtest_model(self) -> str:
        return "resnet50" if "resnet50" in self.models else self.models[-1]


def _python(d: Demo, *args: str) -> None:
    """Run `python -m ...` with the output going straight to the terminal."""
    stderr.print(f"[dim]$ python -m {' '.join(args)}[/]", highlight=False)
    code = subprocess.call([sys.executable, "-m", *args], stdout=sys.stderr if d.json else None)
    if code != 0:
        raise StepFailed(f"`python -m {' '.join(args)}` exited with {code}")


class StepFailed(Exception):
    """A command of the demo failed; it has printed its own error already."""


USER_ERRORS = (StepFailed, CnnDeployError)


def _free_ports() -> tuple[int, int, int]:
    """8000-8002 when free (the documented defaults), else any three free ports."""
    if all(port_free("127.0.0.1", p) for p in (8000, 8001, 8002)):
        return 8000, 8001, 8002
    return tuple(free_ports(3))


def step_export(d: Demo) -> str:
    if d.weights == "random":
        stderr.print(
            "[yellow]note:[/] offline default: seeded RANDOM weights. The pipeline, serving and "
            "verification are real; the predicted labels are not. Use --weights imagenet online."
        )
    _python(d, "export", "build", *d.models, "--weights", d.weights)
    _python(d, "serving", "repo", *d.models)
    return f"{len(d.models)} models exported, verified and placed in {paths.repository()}/"


def step_serve(d: Demo) -> str:
    d.ports = _free_ports()
    http, grpc, metrics = map(str, d.ports)
    _python(
        d,
        "serving",
        "up",
        "--detach",
        "--http-port",
        http,
        "--grpc-port",
        grpc,
        "--metrics-port",
        metrics,
    )
    d.started = True
    return f"Triton on {d.http_url} and {d.grpc_url}"


def step_classify(d: Demo) -> str:
    """The photo files as they are, to `<model>_image`: the server decodes and preprocesses them."""
    table = Table(
        title="top-1 over gRPC, JPEG/PNG files sent as they are (preprocessed on the server)",
        caption="random weights: the labels are meaningless, but differ from photo to photo",
    )
    table.add_column("model")
    for image in d.images:
        table.add_column(image.name)
    with TritonClient(d.grpc_url) as client:
        for model in d.models:
            if client.image_model(model) is None:
                raise StepFailed(f"{model}_image is not served: the server cannot preprocess images")
            answers = client.classify(model, d.images, top_k=1, preprocess="server")
            labels = [preds[0].label for preds in answers]
            table.add_row(model, *[f"{p[0].label} ({p[0].score:.1f})" for p in answers])
            d.classified[model] = dict(zip((i.name for i in d.images), labels, strict=True))
    (stderr if d.json else stdout).print(table)
    distinct = {m: len(set(labels.values())) for m, labels in d.classified.items()}
    return f"{len(d.images)} photos through <model>_image: " + ", ".join(
        f"{m} {n} different labels" for m, n in distinct.items()
    )


def step_verify(d: Demo) -> str:
    models = [name for m in d.models for name in (m, f"{m}_image")]
    _python(d, "clients", "verify", "--url", d.http_url, *[a for m in models for a in ("--model", m)])
    return f"{len(d.models)} models and their image ensembles match their golden sets over HTTP"


def step_self_test(d: Demo) -> str:
    _python(
        d,
        "clients",
        "loadtest",
        "--url",
        d.grpc_url,
        "--self-test",
        "--concurrency",
        "1,4,16",
        "--warmup-s",
        "1",
        "--window-s",
        "1",
        "--max-windows",
        "5",
        "--output",
        str(d.output),
    )
    d.reports += sorted(d.output.glob("loadtest-identity.*"))
    return "load generator capacity measured against the identity model"


def step_loadtest(d: Demo) -> str:
    m = d.loadtest_model
    _python(
        d,
        "clients",
        "loadtest",
        "--url",
        d.grpc_url,
        "--model",
        m,
        "--concurrency",
        "1,2,4",
        "--warmup-s",
        "2",
        "--window-s",
        "2",
        "--max-windows",
        "6",
        "--output",
        str(d.output),
    )
    d.reports += sorted(d.output.glob(f"loadtest-{m}.*"))
    return f"{m}: concurrency 1, 2, 4 with every answer verified"


def step_stop(d: Demo) -> str:
    if not d.started:
        raise SkipStep("no server was started")
    _python(d, "serving", "down")
    return "server stopped"


STEPS: list[Step[Demo]] = [
    Step("export", step_export),
    Step("serve", step_serve),
    Step("classify", step_classify),
    Step("verify", step_verify),
    Step("generator self-test", step_self_test),
    Step("load test", step_loadtest),
]


def run_demo(
    *, models: list[str], weights: str, image: Path | None, output: Path, as_json: bool = False
) -> int:
    """Run the demo's steps; with `as_json` the commands' tables go to stderr, the summary to stdout."""
    demo = Demo(
        models=models,
        weights=weights,
        images=[image] if image else sample_photos(),
        output=output,
        json=as_json,
    )
    ensure_writable_dir(output)
    os.environ.setdefault("COLUMNS", "120")
    try:
        results = run_steps(
            STEPS,
            demo,
            on_start=lambda s: stderr.rule(f"[bold]{s.name}"),
            on_finish=_explain,
            user_errors=USER_ERRORS,
        )
    finally:
        stderr.rule("[bold]stop")
        results_stop = run_steps([Step("stop", step_stop, required=False)], demo, user_errors=USER_ERRORS)
    results += results_stop
    ok = all(r.status is not Status.FAIL for r in results)
    if as_json:
        print(
            json.dumps(
                {
                    "succeeded": ok,
                    "steps": [r.to_dict() for r in results],
                    "classified": demo.classified,
                    "reports": [str(p) for p in demo.reports],
                },
                indent=2,
            )
        )
        return 0 if ok else 1
    table = Table(title="make demo: summary")
    for col in ("step", "status", "detail", "time"):
        table.add_column(col)
    color = {Status.OK: "green", Status.FAIL: "bold red", Status.SKIPPED: "yellow"}
    for r in results:
        table.add_row(r.name, f"[{color[r.status]}]{r.status.value}[/]", r.detail, f"{r.seconds:.0f}s")
    stdout.print(table)
    if demo.reports:
        stdout.print("reports: " + "  ".join(str(p) for p in demo.reports))
    return 0 if ok else 1


def _explain(result: StepResult) -> None:
    if result.status is Status.FAIL:
        stderr.print(f"[red]step {result.name} failed:[/] {result.detail}", highlight=False)
