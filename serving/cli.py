"""`python -m serving repo|up|status|down|rollback`: thin commands over public functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.table import Table

from cnn_deploy_core import paths, registry
from cnn_deploy_core.console import dispatch, stderr, stdout
from serving import ServingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    repo_opt = argparse.ArgumentParser(add_help=False)
    repo_opt.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="Triton model repository (default: model_repository in the project)",
    )
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    state_opt = argparse.ArgumentParser(add_help=False)
    state_opt.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the local server's record and log live (default: build/serving in the project, "
        f"or ${paths.STATE_ENV})",
    )

    r = sub.add_parser("repo", parents=[repo_opt, json_opt], help="place exported models in the repository")
    r.add_argument("architectures", nargs="*", metavar="ARCH", help=f"one of: {', '.join(registry.names())}")
    r.add_argument("--all", action="store_true", help="every registered architecture")
    r.add_argument("--models", type=Path, default=None, help="export output (default build/models)")
    r.add_argument("--tensorrt", action="store_true", help="also add <name>_trt TensorRT-plan models (GPU)")
    r.add_argument("--cpu-instances", type=int, default=None, help="CPU model instances (default 1)")
    r.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads per instance (default: each session's share of the "
        "cores among all the server loads, decided at `serving up`)",
    )
    from serving.repository import DEFAULT_KEEP

    r.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        help="version directories kept per model; older ones are deleted unless served "
        f"(default {DEFAULT_KEEP})",
    )

    u = sub.add_parser(
        "up", parents=[repo_opt, json_opt, state_opt], help="start the local Triton server (CPU)"
    )
    u.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    u.add_argument("--http-port", type=int, default=8000)
    u.add_argument("--grpc-port", type=int, default=8001)
    u.add_argument("--metrics-port", type=int, default=8002)
    u.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="servers of this repository to start, replica k on every port + 3k; the cores are "
        "shared among them (default 1)",
    )
    u.add_argument(
        "--ort-threads",
        choices=("share", "cores"),
        default="share",
        help="ONNX Runtime intra-op threads of sessions without their own count: share (default) "
        "splits the cores among all sessions (best when several models are busy at once); cores "
        "gives each every core, spinning off (best when one model at a time is busy)",
    )
    u.add_argument(
        "--config-name",
        default="cpu",
        help="which configs/<name>.pbtxt to serve: cpu (default), gpu (needs onnxruntime-gpu and a GPU), "
        "or a named one such as tuned",
    )
    u.add_argument(
        "--admin-key",
        default=None,
        help="key for the admin APIs (default: $TRITON_ADMIN_KEY, else a random one)",
    )
    u.add_argument("--detach", action="store_true", help="return once ready; stop with `serving down`")
    u.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for readiness")

    rb = sub.add_parser(
        "rollback",
        parents=[repo_opt, json_opt, state_opt],
        help="serve an earlier version of a model (reloads it on a running local server)",
    )
    rb.add_argument("model", metavar="MODEL", help="a model in the repository, e.g. resnet50")
    rb.add_argument("--to", type=int, default=None, help="version to serve (default: the one before)")

    t = sub.add_parser(
        "tune",
        parents=[repo_opt, json_opt],
        help="the fastest serving configuration under a p99 SLO, every answer verified",
    )
    t.add_argument("model", metavar="MODEL", help="a model in the repository, e.g. resnet50")
    t.add_argument("--p99-ms", type=float, required=True, help="the latency objective (client p99, ms)")
    t.add_argument("--budget-s", type=float, default=900.0, help="search time at most (default 900)")
    t.add_argument(
        "--precisions", default=None, help="comma-separated: fp32,int8 (default: what is exported)"
    )
    t.add_argument(
        "--plans", default=None, help="instances x threads, e.g. 1x2,2x1 (default: within the cores)"
    )
    t.add_argument("--delays", default=None, help="queue delays to try, us (default 2000,500,8000)")
    t.add_argument(
        "--max-batch-sizes", default=None, help="max_batch_size values (default: registry's, a quarter)"
    )
    t.add_argument("--preferred", default=None, help="preferred batch sizes to try, e.g. none,4+8 (default)")
    t.add_argument(
        "--concurrency", default=None, help="client concurrencies, doubled until saturated (1..32)"
    )
    t.add_argument("--window-s", type=float, default=2.0, help="load test window, seconds (default 2)")
    t.add_argument(
        "--config-name", default="tuned", help="the config the winner is written as (default tuned)"
    )
    t.add_argument("--force", action="store_true", help="allow --config-name cpu or gpu (overwrites it)")
    t.add_argument("--output", type=Path, default=None, help="JSON report (default reports/tune-MODEL.json)")

    sub.add_parser(
        "status", parents=[json_opt, state_opt], help="is the local server up, and which models are ready"
    )
    sub.add_parser("down", parents=[json_opt, state_opt], help="stop a detached local server")
    return parser


def _repository(args) -> Path:
    return args.repository or paths.repository()


def _cpu_plan(args):
    from serving.repository import CpuPlan

    if args.cpu_instances is None and args.cpu_threads is None:
        return None  # keep what the model is served with (default: one instance on every core)
    cores = os.cpu_count() or 1
    instances = 1 if args.cpu_instances is None else args.cpu_instances
    threads = args.cpu_threads or 0  # 0: a share of the cores, decided by `serving up`
    if instances * threads > cores:
        stderr.print(f"[yellow]warning:[/] {instances} instances x {threads} threads > {cores} cores")
    return CpuPlan(instances=instances, threads=threads)


def cmd_repo(args) -> int:
    from serving.repository import place_models

    archs = registry.resolve(args.architectures, all_=args.all)
    placed = place_models(
        archs,
        models_dir=args.models or paths.models_dir(),
        repository=_repository(args),
        tensorrt=args.tensorrt,
        cpu=_cpu_plan(args),
        keep=args.keep,
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
    from cnn_deploy_core.layout import TRT_SUFFIX

    if config_name != "gpu":
        gpu_only = sorted(p.name for p in repository.glob(f"*{TRT_SUFFIX}") if p.is_dir())
        if gpu_only:
            stderr.print(
                f"[yellow]warning:[/] {', '.join(gpu_only)} are TensorRT (GPU) models; "
                "they will be UNAVAILABLE on CPU"
            )


def cmd_up(args) -> int:
    from serving.local import admin_key, serve_foreground, start, state_file
    from serving.triton import ServerOptions

    repository = _repository(args)
    if not repository.is_dir():
        raise ServingError(
            f"model repository {repository} does not exist; create it with `python -m serving repo ARCH...`"
        )
    _gpu_repository_check(repository, args.config_name)
    opts = ServerOptions(
        repository=repository,
        config_name=args.config_name,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        admin_key=admin_key(args.admin_key),
        backend_dir=(args.state_dir / "backends") if args.state_dir else None,
        ort_threads=args.ort_threads,
    )
    what = f"{args.replicas} tritonserver replicas" if args.replicas > 1 else "tritonserver"
    with stderr.status(f"starting {what} and warming up the models..."):
        processes, state = start(
            opts, detach=args.detach, timeout=args.timeout, state_dir=args.state_dir, replicas=args.replicas
        )
    if not args.json and processes[0].share is not None:
        stderr.print(processes[0].share.describe(), highlight=False)
    if args.detach:
        _announce(args, state)
        stdout.print("detached; stop it with `python -m serving down`")
        return 0
    try:  # whatever happens now, a foreground server stops with us
        _announce(args, state)
        stdout.print("serving; press Ctrl-C to stop")
        code = serve_foreground(processes)
    finally:
        for process in processes:
            process.stop()
        state_file(args.state_dir).unlink(missing_ok=True)
    stdout.print("server stopped")
    return code


def _announce(args, state) -> None:
    """Endpoints and every model's state; a listing failure must not orphan the server."""
    from serving.local import model_table, state_file

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
            "replicas": state.all(),
            "models": models,
        }
        print(json.dumps(info, indent=2))
    else:
        stdout.print(
            f"Triton ready (pid {state.pid}, config '{state.config_name}', repository {state.repository})"
        )
        stdout.print(f"  HTTP    {state.http_url}\n  gRPC    {state.grpc_url}\n  metrics {state.metrics_url}")
        key_file = state_file(args.state_dir)
        stdout.print(f"  log     {state.log}\n  admin APIs need header 'admin-key' (key in {key_file})")
        for k, replica in enumerate(state.replicas, 2):
            stdout.print(f"  replica {k}: pid {replica['pid']}, {replica['http_url']}, {replica['grpc_url']}")
        stdout.print(_models_table(models))
    if not any(m.get("state") == "READY" for m in models):
        stderr.print("[yellow]warning:[/] no model is READY; see the reasons above and the log")


def cmd_status(args) -> int:
    from serving.local import model_table, status

    state, ready = status(args.state_dir)
    models = model_table(state.http_url, state.admin_key) if ready else []
    if args.json:
        print(
            json.dumps(
                {
                    "running": ready,
                    "http": state and state.http_url,
                    "grpc": state and state.grpc_url,
                    "pid": state and state.pid,
                    "replicas": state and state.all(),
                    "models": models,
                },
                indent=2,
            )
        )
    elif state is None:
        stdout.print("no local server recorded (start one with `python -m serving up --detach`)")
    else:
        from serving.local import replica_ready

        for r in state.all():
            word = "ready" if replica_ready(r) else f"NOT ready (log: {r['log']})"
            stdout.print(f"server pid {r['pid']} {word} at {r['http_url']} and {r['grpc_url']}")
        if ready:
            stdout.print(_models_table(models))
    return 0 if ready else 1


def cmd_down(args) -> int:
    from serving.local import down

    message = down(state_dir=args.state_dir)
    if args.json:
        print(json.dumps({"result": message}))
    else:
        stdout.print(message)
    return 0


def cmd_rollback(args) -> int:
    from serving.local import reload_model, status
    from serving.repository import rollback

    repository = _repository(args)
    arch = registry.get(args.model)
    previous, now = rollback(arch, repository, args.to)
    result = {"model": arch.name, "previous": previous, "serving": now, "reloaded": None}
    state, _ = status(args.state_dir)
    if state is not None and Path(state.repository).resolve() == repository.resolve():
        from serving.local import replica_ready

        live = [r["http_url"] for r in state.all() if replica_ready(r)]
        for url in live:  # every replica, one after the other: the others keep serving meanwhile
            reload_model(url, state.admin_key, arch.name)
        result["reloaded"] = ", ".join(live) or None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        stdout.print(f"{arch.name}: now serving version {now} (was {previous})")
        if result["reloaded"]:
            stdout.print(f"reloaded on the running server(s) at {result['reloaded']}")
        else:
            stdout.print("no local server is serving this repository: the change applies at its next start")
        stdout.print(f"roll forward again with `python -m serving repo {arch.name}`")
    return 0


def _list(text: str | None, parse, option: str):
    if text is None:
        return None
    try:
        return tuple(parse(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise ServingError(f"{option}: cannot read {text!r}") from None


def cmd_tune(args) -> int:
    from serving import tune

    repository = _repository(args)
    name = registry.get(args.model).name
    if not (repository / name).is_dir():
        raise ServingError(f"{name} is not in {repository}; place it first: python -m serving repo {name}")
    arch = registry.get(name)
    space = tune.default_space(arch.max_batch_size, tune.cores(), tune.has_int8(repository, name))
    plans = _list(args.plans, lambda v: tuple(int(x) for x in v.lower().split("x")), "--plans")
    preferred = _list(
        args.preferred, lambda v: () if v == "none" else tuple(int(x) for x in v.split("+")), "--preferred"
    )
    space = tune.Space(
        precisions=_list(args.precisions, str, "--precisions") or space.precisions,
        plans=plans or space.plans,
        max_batch_sizes=_list(args.max_batch_sizes, int, "--max-batch-sizes") or space.max_batch_sizes,
        preferred=preferred or space.preferred,
        delays=_list(args.delays, int, "--delays") or space.delays,
        concurrency=_list(args.concurrency, int, "--concurrency") or space.concurrency,
    )
    if "int8" in space.precisions and not tune.has_int8(repository, name):
        raise ServingError(f"no INT8 export of {name}: python -m export build {name} --int8")
    output = args.output or paths.reports_dir() / f"tune-{name}.json"
    stderr.print(f"tuning {name} for p99 <= {args.p99_ms:g} ms within {args.budget_s:.0f}s", highlight=False)
    results = tune.search(
        name,
        repository,
        slo_ms=args.p99_ms,
        budget_s=args.budget_s,
        space=space,
        window_s=args.window_s,
        progress=lambda m: stderr.print(m, highlight=False, markup=False),
    )
    best = tune.winner(results)
    baseline = results[0]
    written = (
        tune.write_tuned(name, repository, best.candidate, args.config_name, args.force) if best else None
    )
    report = {
        "command": "python -m serving tune " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "",
        "model": name,
        "slo_p99_ms": args.p99_ms,
        "space": {k: list(v) for k, v in vars(space).items()},
        "candidates": [m.to_dict() for m in results],
        "baseline": baseline.to_dict(),
        "winner": best.to_dict() if best else None,
        "speedup_vs_baseline": (best.best["infer_per_s"] / baseline.best["infer_per_s"])
        if best and baseline.best
        else None,
        "written": str(written) if written else None,
        "state": str(repository / name / "serving.json"),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    from cnn_deploy_core.fsutil import atomic_write_text

    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    tune.plot(results, args.p99_ms, output.with_suffix(".png"))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        table = Table(title=f"{name}: candidates (p99 objective {args.p99_ms:g} ms)")
        for col in ("#", "configuration", "best infer/s", "at c", "p50", "p99", "verified", "rejected", "s"):
            table.add_column(col, justify="left" if col in ("configuration", "rejected") else "right")
        for i, m in enumerate(results, 1):
            b = m.best or {}
            mark = " [green]<- winner[/]" if best is m else ""
            table.add_row(
                str(i),
                m.candidate.label() + mark,
                f"{b['infer_per_s']:.1f}" if b else "-",
                str(b.get("concurrency", "-")),
                f"{b['p50_ms']:.1f}" if b else "-",
                f"{b['p99_ms']:.1f}" if b else "-",
                str(sum(p["verified"] for p in m.points)),
                m.rejected or "",
                f"{m.seconds:.0f}",
            )
        stdout.print(table)
        if best:
            speed = report["speedup_vs_baseline"]
            point = best.best
            line = f"winner: {best.candidate.label()}, {point['infer_per_s']:.1f} infer/s"
            line += f" at c={point['concurrency']}"
            stdout.print(line + (f" ({speed:.2f}x the current config)" if speed else ""), highlight=False)
            stdout.print(
                f"written: {written}; serve it with `python -m serving up --config-name {args.config_name}`"
            )
        stdout.print(f"JSON: {output}  chart: {output.with_suffix('.png')}", highlight=False)
    if best is None:
        raise ServingError(
            f"no configuration of {name} met p99 <= {args.p99_ms:g} ms with every answer right"
        )
    return 0


COMMANDS = {
    "tune": cmd_tune,
    "repo": cmd_repo,
    "up": cmd_up,
    "status": cmd_status,
    "down": cmd_down,
    "rollback": cmd_rollback,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return dispatch(COMMANDS, args)


if __name__ == "__main__":
    sys.exit(main())
