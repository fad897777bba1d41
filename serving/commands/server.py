"""`serving up | status | down`: the local CPU server's commands."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from rich.table import Table

from cnn_deploy_core.console import stderr, stdout
from serving import ServingError
from serving.commands import repository as _repository
from serving.threads import DEFAULT_POLICY, POLICIES

# Triton takes its keys only as command-line flags: say so wherever the server is described.
ARGV_NOTE = (
    "note: tritonserver takes the admin key in its own command line (the inference key too, when "
    "given), which every local user can read (/proc/PID/cmdline); keep this machine to its operators "
    "(docs/security.md)"
)


def add_parsers(sub, repo_opt, json_opt, state_opt) -> dict:
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
        choices=POLICIES,
        default=DEFAULT_POLICY,
        help="ONNX Runtime threads of sessions without their own count: adapt (default) gives a run "
        "every core (÷ replicas) when no other model computes, and its share of them beside another "
        "(a narrow twin of the session, built when first needed); turns gives each every core and "
        "lets executions of different models take turns on them (Triton's rate limiter); cores "
        "gives each every core; share splits the cores among all sessions. When several sessions "
        "share the cores, ORT's spinning is off, but within an adapt run",
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
        help="key for the admin APIs (default: $TRITON_ADMIN_KEY, else a random one); prefer "
        "--admin-key-file: a key on the command line is readable by every local user",
    )
    u.add_argument(
        "--admin-key-file",
        type=Path,
        default=None,
        help="file holding the admin key (not readable by other users: chmod 600)",
    )
    u.add_argument(
        "--inference-key-file",
        type=Path,
        default=None,
        help="keyed inference: requests need the header 'api-key' (gRPC: triton-grpc-protocol-api-key) "
        "holding the key in this file (chmod 600); health stays open",
    )
    u.add_argument(
        "--inference-key-apis",
        default="inference",
        help="API categories behind the inference key, comma-separated from inference, metadata, "
        "model-config, statistics (default inference)",
    )
    u.add_argument(
        "--tls-cert", type=Path, default=None, help="gRPC over TLS: the server's certificate (PEM)"
    )
    u.add_argument(
        "--tls-key", type=Path, default=None, help="gRPC over TLS: the server's private key (PEM, chmod 600)"
    )
    u.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="mutual TLS: accept only gRPC clients whose certificate this CA signed (PEM)",
    )
    u.add_argument(
        "--http-plaintext",
        action="store_true",
        help="with --tls-cert and a --host beyond loopback, open Triton's HTTP (which has no TLS) on "
        "--host too; by default it then listens on loopback only",
    )
    u.add_argument(
        "--no-verify",
        action="store_true",
        help="count a replica ready once its models are READY, without sending each its golden set",
    )
    u.add_argument("--detach", action="store_true", help="return once ready; stop with `serving down`")
    u.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for readiness")
    sub.add_parser(
        "status", parents=[json_opt, state_opt], help="is the local server up, and which models are ready"
    )
    sub.add_parser("down", parents=[json_opt, state_opt], help="stop a detached local server")
    return {"up": cmd_up, "status": cmd_status, "down": cmd_down}


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


def _exposure_warning(opts, inference_key_file) -> None:
    """Beyond loopback, say what is open (Triton's HTTP and metrics have no TLS): one line each."""
    from cnn_deploy_core.secrets import is_loopback

    if is_loopback(opts.host):
        return
    if opts.tls_cert and opts.http_host != opts.host:
        plain = "metrics are"  # HTTP stays on loopback: no inference around the TLS
    else:
        plain = "HTTP and metrics are" if opts.tls_cert else "HTTP, gRPC and metrics are"
    keyless = "" if inference_key_file else ", and inference needs no key (--inference-key-file)"
    stderr.print(
        f"[yellow]warning:[/] listening on {opts.host}: {plain} plaintext{keyless}; see docs/security.md",
        highlight=False,
    )
    if opts.tls_cert and opts.http_plaintext:
        stderr.print(
            f"[yellow]warning:[/] --http-plaintext: inference over plaintext HTTP on {opts.host} port "
            f"{opts.http_port}, around the gRPC TLS and its client CA",
            highlight=False,
        )


def cmd_up(args) -> int:
    from serving.local import admin_key, forget, inference_key, start, state_file
    from serving.triton import ServerOptions, server_share

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
        admin_key=admin_key(args.admin_key, args.admin_key_file),
        backend_dir=(args.state_dir / "backends") if args.state_dir else None,
        ort_threads=args.ort_threads,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        inference_key=inference_key(args.inference_key_file),
        inference_apis=args.inference_key_apis,
        http_plaintext=args.http_plaintext,
    )
    _exposure_warning(opts, args.inference_key_file)
    what = f"{args.replicas} tritonserver replicas" if args.replicas > 1 else "tritonserver"
    with stderr.status(f"starting {what} and warming up the models..."):
        supervisor, state = start(
            opts, detach=args.detach, timeout=args.timeout, state_dir=args.state_dir, replicas=args.replicas,
            verify=not args.no_verify, say=lambda line: stderr.print(line, highlight=False),
        )  # fmt: skip
    if not args.json:
        stderr.print(server_share(replace(opts, replicas=args.replicas)).describe(), highlight=False)
    if args.detach:
        _announce(args, state)
        stdout.print(
            f"detached, supervised by pid {state.supervisor_pid} (a replica that dies or hangs is "
            "restarted; log: supervisor.log beside the state file); stop it with `python -m serving down`"
        )
        return 0 if all(r["state"] == "ready" for r in state.all()) else 1
    try:  # whatever happens now, a foreground server stops with us
        _announce(args, state)
        stdout.print("serving; a replica that dies is restarted; press Ctrl-C to stop")
        code = supervisor.run()
    finally:
        supervisor.stop_all()
        forget(state_file(args.state_dir))
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
            "replicas": state.all(),
            "models": models,
        }
        print(json.dumps(info, indent=2))
    else:
        stdout.print(
            f"Triton ready (pid {state.pid}, config '{state.config_name}', repository {state.repository})"
        )
        stdout.print(f"  HTTP    {state.http_url}\n  gRPC    {state.grpc_url}\n  metrics {state.metrics_url}")
        stdout.print(
            f"  log     {state.log}\n  admin APIs need header 'admin-key' (key in {state.admin_key_file})"
        )
        stdout.print(f"  {ARGV_NOTE}", highlight=False)
        for k, replica in enumerate(state.replicas, 2):
            stdout.print(f"  replica {k}: pid {replica['pid']}, {replica['http_url']}, {replica['grpc_url']}")
        stdout.print(_models_table(models))
    if not any(m.get("state") == "READY" for m in models):
        stderr.print("[yellow]warning:[/] no model is READY; see the reasons above and the log")
    for k, replica in enumerate(state.all(), 1):
        if replica["state"] != "ready":
            stderr.print(
                f"[red]error:[/] replica {k} ({replica['http_url']}) is NOT ready: {replica['problem']}; "
                "it keeps serving its other models (the record says which failed: `serving status`)",
                highlight=False,
            )


def cmd_status(args) -> int:
    from serving.live import versions_of
    from serving.local import model_table, status

    state, ready = status(args.state_dir)
    models = model_table(state.http_url, state.admin_key) if ready else []
    # Per model: the versions served and those on disk (a disagreement is flagged).
    rows = versions_of(Path(state.repository), models, state.config_name) if ready else []
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
                    "versions": rows,
                    "admin_key_in_server_argv": bool(state and state.admin_key),
                },
                indent=2,
            )
        )
    elif state is None:
        stdout.print("no local server recorded (start one with `python -m serving up --detach`)")
    else:
        from serving.local import replica_ready

        for r in state.all():
            problem = f" ({r['problem']})" if r.get("problem") else ""
            word = "ready" if replica_ready(r, state) else f"NOT ready: {r.get('state', '?')}{problem}"
            word += "" if word == "ready" else f" (log: {r['log']})"
            history = f"; restarts {r.get('restarts', 0)}" + (
                f", last exit: {r['last_exit']}" if r.get("last_exit") else ""
            )
            stdout.print(f"server pid {r['pid']} {word} at {r['http_url']} and {r['grpc_url']}{history}")
        if state.supervisor_pid:
            stdout.print(f"supervisor pid {state.supervisor_pid}")
        if state.admin_key:
            stdout.print(ARGV_NOTE, highlight=False)
        if ready:
            stdout.print(_versions_table(rows))
            for row in rows:
                if not row["agrees"]:
                    stderr.print(
                        f"[yellow]warning:[/] {row['model']} serves version(s) "
                        f"{_numbers(row['served'])} but its files on disk say {_numbers(row['on_disk'])}; "
                        f"`python -m serving repo` (or rollback) reloads it",
                        highlight=False,
                    )
    return 0 if ready else 1


def _numbers(versions: list[int] | None) -> str:
    return ", ".join(map(str, versions)) if versions else "none"


def _versions_table(rows: list[dict]) -> Table:
    table = Table(title="models: versions served and on disk")
    for col in ("model", "served", "on disk", "", "reason"):
        table.add_column(col)
    for r in rows:
        flag = "[green]ok[/]" if r["agrees"] else "[red]DIFFERS[/]"
        on_disk = _numbers(r["on_disk"]) if r["on_disk"] is not None else "- (no config)"
        table.add_row(r["model"], _numbers(r["served"]), on_disk, flag, r["reason"])
    return table


def cmd_down(args) -> int:
    from serving.local import down

    message = down(state_dir=args.state_dir)
    if args.json:
        print(json.dumps({"result": message}))
    else:
        stdout.print(message)
    return 0
