"""`python -m cnn_deploy demo|bench-serving|gpu-check`: the commands that run several stages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    b.add_argument("--plans", default="1x2,2x1", help="CPU instances x threads to try (default 1x2,2x1)")
    b.add_argument("--queue-delay-us", default="2000", help="dynamic batcher delays to try (default 2000)")
    b.add_argument(
        "--concurrency", default="1,4,8,16", help="single-image requests in flight (default 1,4,8,16)"
    )
    b.add_argument("--seconds", type=float, default=8.0, help="measuring time per point (default 8)")
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

    g = sub.add_parser("gpu-check", help="every GPU check in one run (exit 2 without a GPU)")
    g.add_argument(
        "--repository", type=Path, default=None, help="model repository (default model_repository)"
    )
    g.add_argument("--model", action="append", dest="models", metavar="NAME", help="only these models")
    g.add_argument("--output", type=Path, default=None, help="JSON report (default reports/gpu-check.json)")
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
    from cnn_deploy.benchmark_serving import run_benchmark
    from cnn_deploy_core.console import stderr, stdout
    from serving.repository import CpuPlan

    try:
        plans = [CpuPlan(*map(int, p.lower().split("x"))) for p in args.plans.split(",")]
    except (TypeError, ValueError):
        raise CnnDeployError(
            f"--plans must look like 1x2,2x1 (instances x threads), got {args.plans!r}"
        ) from None
    run_benchmark(
        models_dir=args.models or paths.models_dir(),
        model=registry.get(args.model).name,
        plans=plans,
        delays=_ints(args.queue_delay_us, "--queue-delay-us"),
        concurrencies=_ints(args.concurrency, "--concurrency"),
        seconds=args.seconds,
        output=args.output or paths.reports_dir() / "serving-benchmark.json",
        console=stderr,
        out=stdout,
        as_json=args.json,
    )
    return 0


def cmd_bench_loadgen(args) -> int:
    from cnn_deploy.bench_loadgen import run_bench

    return run_bench(
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        concurrencies=_ints(args.concurrency, "--concurrency"),
        shared_memory=args.shared_memory,
        window_s=args.window_s,
        output=args.output or paths.reports_dir() / "bench-loadgen.json",
    )


def cmd_gpu_check(args) -> int:
    from cnn_deploy.gpu_check import main_args

    return main_args(args.repository, args.models, args.output)


COMMANDS = {
    "demo": cmd_demo,
    "bench-serving": cmd_bench_serving,
    "bench-loadgen": cmd_bench_loadgen,
    "gpu-check": cmd_gpu_check,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return dispatch(COMMANDS, args)


if __name__ == "__main__":
    sys.exit(main())
