"""`python -m cnn_deploy demo|bench-*|report|drills|compose-test|gpu-check|benchmarks-doc`: the commands
that run several stages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from cnn_deploy_core import CnnDeployError, paths, registry
from cnn_deploy_core.console import dispatch


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CnnDeployError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise CnnDeployError(f"{option} must be non-negative integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cnn_deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the main job: export, serve, classify, verify, load-test, stop")
    d.add_argument("--models", nargs="+", default=["alexnet", "resnet18", "resnet50"])
    d.add_argument("--weights", default="random", help="random (default, offline), imagenet, or a checkpoint")
    d.add_argument("--image", type=Path, default=None, help="photo to classify (default: the sample photos)")
    d.add_argument(
        "--output", type=Path, default=None, help="report directory (default: reports in the project)"
    )
    d.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")

    b = sub.add_parser(
        "bench-serving", help="a model served by Triton vs in-process ONNX Runtime, in one run"
    )
    b.add_argument("--model", default="resnet50")
    b.add_argument("--models", type=Path, default=None, help="export output (default build/models)")
    b.add_argument(
        "--plans",
        default="1x2,2x1",
        help="CPU instances x threads to try, or 'default' (1 instance, threads from the server's "
        "--ort-threads policy) (default 1x2,2x1)",
    )
    b.add_argument(
        "--policies",
        default="adapt",
        help="`serving up --ort-threads` policies to try with the 'default' plan (default adapt, "
        "serving up's)",
    )
    b.add_argument(
        "--beside",
        default="",
        help="exported models loaded beside the measured one, idle (the demo's: alexnet,resnet18)",
    )
    b.add_argument(
        "--queue-delay-us", default="0", help="dynamic batcher delays to try (default 0: the CPU configs')"
    )
    b.add_argument(
        "--concurrency", default="1,4,8,16", help="single-image requests in flight (default 1,4,8,16)"
    )
    b.add_argument("--seconds", type=float, default=8.0, help="measuring time per point (default 8)")
    b.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternated rounds (in-process, then every served point), figures averaged (default 1)",
    )
    b.add_argument(
        "--output", type=Path, default=None, help="JSON path (default reports/serving-benchmark.json)"
    )
    b.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")

    lg = sub.add_parser("bench-loadgen", help="our load generator vs NVIDIA's perf_analyzer, side by side")
    lg.add_argument(
        "--models", default="identity,resnet18", help="comma-separated (default identity,resnet18)"
    )
    lg.add_argument("--concurrency", default="1,4,16", help="comma-separated (default 1,4,16)")
    lg.add_argument("--shared-memory", choices=("none", "system"), default="none", help="for both tools")
    lg.add_argument(
        "--window-s", type=float, default=3.0, help="measurement interval, both tools (default 3)"
    )
    lg.add_argument("--output", type=Path, default=None, help="JSON (default reports/bench-loadgen.json)")

    i8 = sub.add_parser("bench-int8", help="INT8 / fp32, in process and served, at batch 1 and 8")
    i8.add_argument("--model", default="resnet50")
    i8.add_argument(
        "--seconds", type=float, default=6.0, help="in-process time per configuration (default 6)"
    )
    i8.add_argument("--output", type=Path, default=None, help="JSON (default reports/bench-int8-MODEL.json)")

    r = sub.add_parser("report", help="the lecture's costs beside measured serving costs: HTML + JSON + PNG")
    r.add_argument("architectures", nargs="*", metavar="ARCH", help=f"one of: {', '.join(registry.names())}")
    r.add_argument("--all", action="store_true", help="every registered architecture (exported first)")
    r.add_argument("--models", type=Path, default=None, help="export output (default build/models)")
    r.add_argument(
        "--url", default=None, help="measure this server instead of a local one (grpc://HOST:PORT)"
    )
    r.add_argument("--seconds", type=float, default=3.0, help="in-process time per configuration (default 3)")
    r.add_argument("--window-s", type=float, default=1.5, help="load test window (default 1.5)")
    r.add_argument("--output", type=Path, default=None, help="report stem (default reports/lecture-report)")

    bi = sub.add_parser("bench-images", help="encoded images in vs tensors in, same server, one run")
    bi.add_argument("--model", default="resnet50")
    bi.add_argument("--concurrency", default="1,4,8", help="comma-separated (default 1,4,8)")
    bi.add_argument("--window-s", type=float, default=2.0, help="load test window (default 2)")
    bi.add_argument(
        "--output", type=Path, default=None, help="JSON (default reports/bench-images-MODEL.json)"
    )

    ct = sub.add_parser("compose-test", help="the CPU compose deployment, really run, checked and taken down")
    ct.add_argument(
        "--output", type=Path, default=None, help="JSON record (default reports/compose-test.json)"
    )

    dr = sub.add_parser(
        "drills", help="failure drills: replica killed, restarted, overload, soak (real servers)"
    )
    dr.add_argument("--short", action="store_true", help="every drill briefly (what CI runs)")
    dr.add_argument(
        "--model", default="resnet18", help="the exported model the drills serve (default resnet18)"
    )
    dr.add_argument(
        "--only",
        action="append",
        choices=("kill", "kill-no-failover", "restart", "overload", "soak"),
        help="only these",
    )
    dr.add_argument(
        "--models", type=Path, default=None, help="exports folder (default models/ in the project)"
    )
    dr.add_argument("--output", type=Path, default=None, help="JSON report (default reports/drills.json)")
    bt = sub.add_parser(
        "bench-threads", help="one and two models busy: ORT's default vs the --ort-threads policies"
    )
    bt.add_argument("--models", default="resnet18,alexnet", help="comma-separated (default resnet18,alexnet)")
    bt.add_argument("--window-s", type=float, default=3.0, help="measurement window (default 3)")
    bt.add_argument("--output", type=Path, default=None, help="JSON (default reports/bench-threads.json)")
    g = sub.add_parser("gpu-check", help="every GPU check in one run (exit 2 without a GPU)")
    g.add_argument(
        "--repository", type=Path, default=None, help="model repository (default model_repository)"
    )
    g.add_argument("--model", action="append", dest="models", metavar="NAME", help="only these models")
    g.add_argument("--output", type=Path, default=None, help="JSON report (default reports/gpu-check.json)")
    bd = sub.add_parser(
        "benchmarks-doc", help="docs/benchmarks.md and README's figures, from docs/benchmarks/*.json"
    )
    bd.add_argument(
        "--add", nargs="+", type=Path, default=[], metavar="REPORT",
        help="benchmark reports to copy into docs/benchmarks/ first (each must carry its provenance)",
    )  # fmt: skip
    return parser


def cmd_demo(args) -> int:
    from cnn_deploy.demo import run_demo

    return run_demo(
        models=args.models,
        weights=args.weights,
        image=args.image,
        output=args.output or paths.reports_dir(),
        as_json=args.json,
    )


def cmd_bench_serving(args) -> int:
    from cnn_deploy.bench.serving import run_benchmark
    from cnn_deploy_core.console import stderr, stdout
    from serving.repository import CpuPlan
    from serving.threads import POLICIES

    try:
        plans = [
            CpuPlan(1, 0) if p.strip() == "default" else CpuPlan(*map(int, p.lower().split("x")))
            for p in args.plans.split(",")
        ]
    except (TypeError, ValueError):
        raise CnnDeployError(
            f"--plans must look like 1x2,2x1 (instances x threads) or default, got {args.plans!r}"
        ) from None
    if args.rounds < 1:
        raise CnnDeployError(f"--rounds must be at least 1, got {args.rounds}")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies or set(policies) - set(POLICIES):
        raise CnnDeployError(f"--policies must be among {', '.join(POLICIES)}, got {args.policies!r}")
    run_benchmark(
        policies=policies,
        beside=[registry.get(m.strip()).name for m in args.beside.split(",") if m.strip()],
        models_dir=args.models or paths.models_dir(),
        model=registry.get(args.model).name,
        plans=plans,
        delays=_ints(args.queue_delay_us, "--queue-delay-us"),
        concurrencies=_ints(args.concurrency, "--concurrency"),
        seconds=args.seconds,
        rounds=args.rounds,
        output=args.output or paths.reports_dir() / "serving-benchmark.json",
        console=stderr,
        out=stdout,
        as_json=args.json,
    )
    return 0


def cmd_bench_loadgen(args) -> int:
    from cnn_deploy.bench.loadgen import run_bench

    return run_bench(
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        concurrencies=_ints(args.concurrency, "--concurrency"),
        shared_memory=args.shared_memory,
        window_s=args.window_s,
        output=args.output or paths.reports_dir() / "bench-loadgen.json",
    )


def cmd_bench_int8(args) -> int:
    from cnn_deploy.bench import int8 as bench_int8

    model = registry.get(args.model).name
    return bench_int8.run(
        model,
        repository=paths.repository(),
        models_dir=paths.models_dir(),
        seconds=args.seconds,
        output=args.output or bench_int8.default_output(model),
    )


def cmd_report(args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cnn_deploy.report import html as report_html
    from cnn_deploy.report.build import build_report
    from cnn_deploy_core.console import stderr, stdout
    from cnn_deploy_core.fsutil import ensure_writable_dir

    archs = registry.resolve(args.architectures, all_=args.all)
    output = args.output or paths.reports_dir() / "lecture-report"
    ensure_writable_dir(output.parent)
    steps = 1 + 3 * len(archs)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TimeElapsedColumn(), console=stderr, transient=False) as progress:
        task = progress.add_task("report", total=steps)

        def step(message: str) -> None:
            if progress.tasks[0].description != "report":
                progress.advance(task)
            progress.update(task, description=message)

        report = build_report(
            archs,
            models_dir=args.models or paths.models_dir(),
            seconds=args.seconds,
            window_s=args.window_s,
            url=args.url,
            progress=step,
        )
        progress.update(task, completed=steps, description="done")
    written = report_html.write(report, output)
    table = Table(title="the lecture, measured (fp32, ONNX Runtime and Triton on this machine)")
    for col in report_html.HEADLINE:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    for row in report_html.headline_rows(report):
        table.add_row(*row)
    stdout.print(table)
    for line in report["findings"]:
        stdout.print(f"- {line}", highlight=False)
    stdout.print(f"HTML: {written['html']}  JSON: {written['json']}", highlight=False)
    return 0


def cmd_bench_images(args) -> int:
    from cnn_deploy.bench import images as bench_images

    model = registry.get(args.model).name
    return bench_images.run(
        model,
        models_dir=paths.models_dir(),
        concurrency=_ints(args.concurrency, "--concurrency"),
        window_s=args.window_s,
        output=args.output or paths.reports_dir() / f"bench-images-{model}.json",
    )


def cmd_compose_test(args) -> int:
    from cnn_deploy.checks.compose import run_compose_test

    return run_compose_test(args.output or paths.reports_dir() / "compose-test.json")


def cmd_bench_threads(args) -> int:
    from cnn_deploy.bench.threads import run

    return run(
        [m.strip() for m in args.models.split(",") if m.strip()],
        models_dir=paths.models_dir(),
        window_s=args.window_s,
        output=args.output or paths.reports_dir() / "bench-threads.json",
    )


def cmd_drills(args) -> int:
    from cnn_deploy.drills.run import run_drills

    return run_drills(
        model=args.model,
        models_dir=args.models or paths.models_dir(),
        short=args.short,
        only=args.only,
        output=args.output or paths.reports_dir() / "drills.json",
    )


def cmd_gpu_check(args) -> int:
    from cnn_deploy.checks.gpu import main_args

    return main_args(args.repository, args.models, args.output)


def cmd_benchmarks_doc(args) -> int:
    from cnn_deploy import benchdoc

    return benchdoc.run(args.add)


COMMANDS = {
    "benchmarks-doc": cmd_benchmarks_doc,
    "demo": cmd_demo,
    "bench-serving": cmd_bench_serving,
    "bench-loadgen": cmd_bench_loadgen,
    "bench-int8": cmd_bench_int8,
    "report": cmd_report,
    "bench-images": cmd_bench_images,
    "compose-test": cmd_compose_test,
    "gpu-check": cmd_gpu_check,
    "drills": cmd_drills,
    "bench-threads": cmd_bench_threads,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return dispatch(COMMANDS, args)


if __name__ == "__main__":
    sys.exit(main())
