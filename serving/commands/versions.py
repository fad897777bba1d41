"""`serving repo | rollback`: place exports as new versions, serve an earlier one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cnn_deploy_core import paths, registry
from cnn_deploy_core.console import stderr, stdout
from serving import ServingError
from serving.commands import repository as _repository


def add_parsers(sub, repo_opt, json_opt, state_opt) -> dict:
    r = sub.add_parser(
        "repo",
        parents=[repo_opt, json_opt, state_opt],
        help="place exported models in the repository (reloads them on a running local server)",
        description="Place exports as new versions. A model and its variants (_int8, _image, _trt, "
        "the preprocessing model) move together. When the local server (`serving up`) serves this "
        "repository, every changed model is reloaded on every replica and checked READY at its new "
        "versions; if one fails, the previous files are restored and reloaded, and the command exits "
        "non-zero naming it. Old versions are pruned only after that.",
    )
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
    from serving.repository.placement import DEFAULT_KEEP

    r.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        help="version directories kept per model; older ones are deleted unless served "
        f"(default {DEFAULT_KEEP})",
    )
    r.add_argument(
        "--no-reload",
        dest="reload",
        action="store_false",
        help="leave a running local server as it is (it keeps serving the versions it has loaded, "
        "and they are not pruned; they change at its next start or `serving repo` without this)",
    )
    rb = sub.add_parser(
        "rollback",
        parents=[repo_opt, json_opt, state_opt],
        help="serve an earlier version of a model and its variants (reloaded on a running local server)",
        description="Serve an earlier version alone, for the model and its variants (_int8, _image, "
        "_trt, the preprocessing model). On a running local server every changed model is reloaded "
        "and checked READY at that version; if one fails, everything goes back to the versions "
        "served before and the command exits non-zero. Roll forward with `serving repo MODEL`.",
    )
    rb.add_argument("model", metavar="MODEL", help="a model in the repository, e.g. resnet50")
    rb.add_argument("--to", type=int, default=None, help="version to serve (default: the one before)")
    return {"repo": cmd_repo, "rollback": cmd_rollback}


def _cpu_plan(args):
    from serving.repository.configs import CpuPlan

    if args.cpu_instances is None and args.cpu_threads is None:
        return None  # keep what the model is served with (default: one instance on every core)
    cores = os.cpu_count() or 1
    instances = 1 if args.cpu_instances is None else args.cpu_instances
    threads = args.cpu_threads or 0  # 0: a share of the cores, decided by `serving up`
    if instances * threads > cores:
        stderr.print(f"[yellow]warning:[/] {instances} instances x {threads} threads > {cores} cores")
    return CpuPlan(instances=instances, threads=threads)


def cmd_repo(args) -> int:
    from serving import live as live_module
    from serving.repository.placement import place_models

    archs = registry.resolve(args.architectures, all_=args.all)
    if args.keep < 1:
        raise ServingError(f"--keep must be >= 1, got {args.keep}")
    repository = _repository(args)
    live = live_module.find(repository, args.state_dir) if repository.is_dir() else None

    def place():
        return place_models(
            archs,
            models_dir=args.models or paths.models_dir(),
            repository=repository,
            tensorrt=args.tensorrt,
            cpu=_cpu_plan(args),
            keep=None,
            console=stderr,
            defer_prune=True,
        )

    placed, applied = live_module.apply(
        repository, archs, place, live=live, reload=args.reload, keep=args.keep
    )
    for p in placed:
        p.pruned = applied.pruned.get(p.name, [])
        if p.pruned:
            stderr.print(f"{p.name}: pruned {', '.join(map(str, p.pruned))}", highlight=False)
    _report_reload(live, args.reload, applied)
    if args.json:
        extra = {"reloaded": applied.reloaded, "unloaded": applied.unloaded, "servers": list(applied.urls)}
        print(json.dumps([{**p.to_dict(), **extra} for p in placed], indent=2))
    return 0


def _report_reload(live, reload: bool, applied) -> None:
    if live is None:
        stderr.print("no local server serves this repository: nothing to reload", highlight=False)
    elif not reload:
        stderr.print(
            "[yellow]warning:[/] --no-reload: the running server keeps serving what it has loaded "
            "(see `python -m serving status`)"
        )
    elif applied.reloaded or applied.unloaded:
        what = ", ".join(applied.reloaded + [f"{m} (unloaded)" for m in applied.unloaded])
        stderr.print(
            f"reloaded {what}: READY at the new versions on {', '.join(applied.urls)}", highlight=False
        )
    else:
        stderr.print("nothing changed: the running server keeps serving as it was")


def cmd_rollback(args) -> int:
    from serving import live as live_module
    from serving.repository.rollback import rollback

    repository = _repository(args)
    arch = registry.get(args.model)
    live = live_module.find(repository, args.state_dir)
    (previous, now), applied = live_module.apply(
        repository, [arch], lambda: rollback(arch, repository, args.to, defer_prune=True), live=live
    )
    result = {
        "model": arch.name,
        "previous": previous,
        "serving": now,
        "reloaded": ", ".join(applied.urls) or None,
        "models_reloaded": applied.reloaded,
        "models_unloaded": applied.unloaded,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        stdout.print(f"{arch.name}: now serving version {now} (was {previous})")
        if result["reloaded"]:
            what = ", ".join(applied.reloaded + [f"{m} (unloaded)" for m in applied.unloaded])
            stdout.print(f"reloaded {what}, READY at version {now}, on {result['reloaded']}", highlight=False)
        else:
            stdout.print("no local server is serving this repository: the change applies at its next start")
        stdout.print(f"roll forward again with `python -m serving repo {arch.name}`")
    return 0
