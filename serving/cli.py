"""`python -m serving repo|up|status|down`: thin commands over public functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.table import Table

from export import ExportError, registry
from export.console import dispatch, stderr, stdout
from serving import ServingError
from serving.repository import DEFAULT_REPOSITORY

DEFAULT_MODELS = Path("build/models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    repo_opt = argparse.ArgumentParser(add_help=False)
    repo_opt.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help=f"Triton model repository (default {DEFAULT_REPOSITORY})",
    )
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")

    r = sub.add_parser("repo", parents=[repo_opt, json_opt], help="place exported models in the repository")
    r.add_argument("architectures", nargs="*", metavar="ARCH", help=f"one of: {', '.join(registry.names())}")
    r.add_argument("--all", action="store_true", help="every registered architecture")
    r.add_argument(
        "--models", type=Path, default=DEFAULT_MODELS, help=f"export output (default {DEFAULT_MODELS})"
    )
    r.add_argument("--tensorrt", action="store_true", help="also add <name>_trt TensorRT-plan models (GPU)")
    r.add_argument("--cpu-instances", type=int, default=None, help="CPU model instances (default 1)")
    r.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads per instance (default: the cores / instances)",
    )

    u = sub.add_parser("up", parents=[repo_opt, json_opt], help="start the local Triton server (CPU)")
    u.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    u.add_argument("--http-port", type=int, default=8000)
    u.add_argument("--grpc-port", type=int, default=8001)
    u.add_argument("--metrics-port", type=int, default=8002)
    u.add_argument(
        "--config-name",
        default="cpu",
        choices=["cpu", "gpu"],
        help="which configs/<name>.pbtxt to serve (gpu needs onnxruntime-gpu and a GPU)",
    )
    u.add_argument(
        "--admin-key",
        default=None,
        help="key for the admin APIs (default: $TRITON_ADMIN_KEY, else a random one)",
    )
    u.add_argument("--detach", action="store_true", help="return once ready; stop with `serving down`")
    u.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for readiness")

    b = sub.add_parser(
        "benchmark",
        parents=[json_opt],
        help="a model served by Triton vs in-process ONNX Runtime, in one run",
    )
    b.add_argument("--model", default="resnet50")
    b.add_argument(
        "--models", type=Path, default=DEFAULT_MODELS, help=f"export output (default {DEFAULT_MODELS})"
    )
    b.add_argument("--plans", default="1x2,2x1", help="CPU instances x threads to try (default 1x2,2x1)")
    b.add_argument("--queue-delay-us", default="2000", help="dynamic batcher delays to try (default 2000)")
    b.add_argument(
        "--concurrency", default="1,4,8,16", help="single-image requests in flight (default 1,4,8,16)"
    )
    b.add_argument("--seconds", type=float, default=8.0, help="measuring time per point (default 8)")
    b.add_argument("--output", type=Path, default=Path("reports/serving-benchmark.json"))

    sub.add_parser("status", parents=[json_opt], help="is the local server up, and which models are ready")
    sub.add_parser("down", parents=[json_opt], help="stop a detached local server")
    return parser


def _cpu_plan(args):
    import os

    from serving.repository import CpuPlan

    cores = os.cpu_count() or 1
    instances = 1 if args.cpu_instances is None else args.cpu_instances
    threads = max(1, cores // max(instances, 1)) if args.cpu_threads is None else args.cpu_threads
    if instances * threads > cores:
        stderr.print(f"[yellow]warning:[/] {instances} instances x {threads} threads > {cores} cores")
    return CpuPlan(instances=instances, threads=threads)


def cmd_repo(args) -> int:
    from serving.repository import place_models

    archs = registry.resolve(args.architectures, all_=args.all)
    placed = place_models(
        archs,
        models_dir=args.models,
        repository=args.repository,
        tensorrt=args.tensorrt,
        cpu=_cpu_plan(args),
        console=stderr,
    )
    if args.json:
        print(json.dumps([p.to_dict() for p in placed], indent=2))
    return 0


def _models_table(models: list[dict]) -> Table:
    table = Table(title="models")
    for col in ("model", "version", "state", "reason"):
        table.add_column(col)
    for m in models:
        state = m.get("state", "")
        color = "green" if state == "READY" else "red"
        table.add_row(m["name"], m.get("version", ""), f"[{color}]{state}[/]", m.get("reason", ""))
    return table


def _gpu_repository_check(repository: Path, config_name: str) -> None:
    from serving.repository import TRT_SUFFIX

    if config_name == "cpu":
        gpu_only = sorted(p.name for p in repository.glob(f"*{TRT_SUFFIX}") if p.is_dir())
        if gpu_only:
            stderr.print(
                f"[yellow]warning:[/] {', '.join(gpu_only)} are TensorRT (GPU) models; "
                "they will be UNAVAILABLE on CPU"
            )


def cmd_up(args) -> int:
    from serving.local import STATE_FILE, admin_key, serve_foreground, start
    from serving.triton import ServerOptions

    if not args.repository.is_dir():
        raise ServingError(
            f"model repository {args.repository} does not exist; "
            "create it with `python -m serving repo ARCH...`"
        )
    _gpu_repository_check(args.repository, args.config_name)
    opts = ServerOptions(
        repository=args.repository,
        config_name=args.config_name,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        admin_key=admin_key(args.admin_key),
    )
    with stderr.status("starting tritonserver and warming up the models..."):
        process, state = start(opts, detach=args.detach, timeout=args.timeout)
    if args.detach:
        _announce(args, state)
        stdout.print("detached; stop it with `python -m serving down`")
        return 0
    try:  # whatever happens now, a foreground server stops with us
        _announce(args, state)
        stdout.print("serving; press Ctrl-C to stop")
        code = serve_foreground(process)
    finally:
        process.stop()
        STATE_FILE.unlink(missing_ok=True)
    stdout.print("server stopped")
    return code


def _announce(args, state) -> None:
    """Endpoints and every model's state; a listing failure must not orphan the server."""
    from serving.local import model_table

    try:
        models = model_table(state.http_url, state.admin_key)
    except ServingError as e:
        models = []
        stderr.print(f"[yellow]warning:[/] {e}", highlight=False)
    if args.json:
        info = {
            "pid": state.pid,
            "http": state.http_url,
            "grpc": state.grpc_url,
            "metrics": state.metrics_url,
            "log": state.log,
            "models": models,
        }
        print(json.dumps(info, indent=2))
    else:
        stdout.print(
            f"Triton ready (pid {state.pid}, config '{state.config_name}', repository {state.repository})"
        )
        stdout.print(f"  HTTP    {state.http_url}\n  gRPC    {state.grpc_url}\n  metrics {state.metrics_url}")
        stdout.print(
            f"  log     {state.log}\n  admin APIs need header 'admin-key' (key in build/serving/server.json)"
        )
        stdout.print(_models_table(models))
    if not any(m.get("state") == "READY" for m in models):
        stderr.print("[yellow]warning:[/] no model is READY; see the reasons above and the log")


def cmd_status(args) -> int:
    from serving.local import model_table, status

    state, ready = status()
    models = model_table(state.http_url, state.admin_key) if ready else []
    if args.json:
        print(
            json.dumps(
                {
                    "running": ready,
                    "http": state and state.http_url,
                    "grpc": state and state.grpc_url,
                    "pid": state and state.pid,
                    "models": models,
                },
                indent=2,
            )
        )
    elif state is None:
        stdout.print("no local server recorded (start one with `python -m serving up --detach`)")
    elif not ready:
        stdout.print(f"server pid {state.pid} is not ready (log: {state.log})")
    else:
        stdout.print(f"server pid {state.pid} ready at {state.http_url} and {state.grpc_url}")
        stdout.print(_models_table(models))
    return 0 if ready else 1


def cmd_down(args) -> int:
    from serving.local import down

    message = down()
    if args.json:
        print(json.dumps({"result": message}))
    else:
        stdout.print(message)
    return 0


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ServingError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise ServingError(f"{option} must be non-negative integers, got {text!r}")
    return values


def cmd_benchmark(args) -> int:
    from serving.benchmark import run_benchmark
    from serving.repository import CpuPlan

    try:
        plans = [CpuPlan(*map(int, p.lower().split("x"))) for p in args.plans.split(",")]
    except (TypeError, ValueError):
        raise ServingError(
            f"--plans must look like 1x2,2x1 (instances x threads), got {args.plans!r}"
        ) from None
    run_benchmark(
        models_dir=args.models,
        model=registry.get(args.model).name,
        plans=plans,
        delays=_ints(args.queue_delay_us, "--queue-delay-us"),
        concurrencies=_ints(args.concurrency, "--concurrency"),
        seconds=args.seconds,
        output=args.output,
        console=stderr,
        out=stdout,
        as_json=args.json,
    )
    return 0


COMMANDS = {
    "repo": cmd_repo,
    "up": cmd_up,
    "status": cmd_status,
    "down": cmd_down,
    "benchmark": cmd_benchmark,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return dispatch(COMMANDS, args, (ServingError, ExportError))


if __name__ == "__main__":
    sys.exit(main())
