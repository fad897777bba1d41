"""`serving tune MODEL --p99-ms X`: the command around serving/tune.py's search."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from cnn_deploy_core import paths, registry
from cnn_deploy_core.console import error, stderr, stdout
from cnn_deploy_core.layout import INT8_FILE, INT8_S8S8_FILE, INT8_SUFFIX
from cnn_deploy_core.machine import invoked_command
from serving import ServingError
from serving.commands import repository as _repository

# as `make gpu-check` and `export benchmark --device cuda`: nothing was tried, nothing failed
NO_GPU_EXIT = 2


def add_parsers(sub, repo_opt, json_opt, state_opt) -> dict:
    t = sub.add_parser(
        "tune",
        parents=[repo_opt, json_opt],
        help="the fastest serving configuration under a p99 SLO, every answer verified",
    )
    t.add_argument("model", metavar="MODEL", help="a model in the repository, e.g. resnet50")
    t.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="the config to tune: cpu (default) or gpu (TensorRT on this machine's GPU, around the "
        "registry's GPU sizing; untested on a GPU so far; exit 2 without one)",
    )
    t.add_argument("--p99-ms", type=float, required=True, help="the latency objective (client p99, ms)")
    t.add_argument(
        "--budget-s",
        type=float,
        default=900.0,
        help="search time at most (default 900); the A/B of the winner against the current config "
        "follows it (6 short runs)",
    )
    t.add_argument(
        "--precisions",
        default=None,
        help="comma-separated, of fp32,int8 (default: what is exported); --device gpu: of fp16,fp32,int8",
    )
    t.add_argument(
        "--plans",
        default=None,
        help="instance counts, e.g. 1,2 (threads set by the server's policy for the machine: the "
        "default); or instances x threads, e.g. 1x2 (a fixed count, kept on every machine)",
    )
    t.add_argument(
        "--delays", default=None, help="queue delays to try, us (default 0,500,2000,8000; GPU 0,500,2000)"
    )
    t.add_argument(
        "--max-batch-sizes", default=None, help="max_batch_size values (default: registry's, a quarter)"
    )
    t.add_argument("--preferred", default=None, help="preferred batch sizes to try, e.g. none,4+8 (default)")
    t.add_argument(
        "--concurrency",
        default=None,
        help="client concurrencies, doubled until saturated (1..32; GPU: up to twice its largest batch)",
    )
    t.add_argument("--window-s", type=float, default=2.0, help="load test window, seconds (default 2)")
    t.add_argument(
        "--config-name", default="tuned", help="the config the winner is written as (default tuned)"
    )
    t.add_argument("--force", action="store_true", help="allow --config-name cpu or gpu (overwrites it)")
    t.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON report (default reports/tune-MODEL.json; GPU: tune-MODEL-gpu.json)",
    )
    return {"tune": cmd_tune}


def _list(text: str | None, parse, option: str):
    if text is None:
        return None
    try:
        return tuple(parse(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise ServingError(f"{option}: cannot read {text!r}") from None


def _plan(text: str) -> tuple[int, int]:
    """Instances "2" (threads: the policy's, 0) or "2x1" (instances x a fixed thread count)."""
    parts = [int(x) for x in text.lower().split("x")]
    if len(parts) == 1:
        parts.append(0)
    if len(parts) != 2 or parts[0] < 1 or parts[1] < 0:
        raise ValueError(text)
    return parts[0], parts[1]


def cmd_tune(args) -> int:
    from serving import tune

    gpu = args.device == "gpu"
    if gpu:
        from serving.gpus import nvidia_gpus

        found, why = nvidia_gpus()
        if not found:  # before anything starts: the gpu config's KIND_GPU instances need one
            error(f"no GPU: --device gpu tunes the gpu config on this machine's GPU ({why})")
            return NO_GPU_EXIT
    repository = _repository(args)
    name = registry.get(args.model).name
    if not (repository / name).is_dir():
        raise ServingError(f"{name} is not in {repository}; place it first: python -m serving repo {name}")
    arch = registry.get(name)
    int8_file = INT8_S8S8_FILE if gpu else INT8_FILE
    exported_int8 = tune.has_int8(repository, name, int8_file)
    if gpu:
        space = tune.gpu_space(arch, exported_int8)
    else:
        space = tune.default_space(arch.max_batch_size, tune.cores(), exported_int8)
    plans = _list(args.plans, _plan, "--plans")
    preferred = _list(
        args.preferred, lambda v: () if v == "none" else tuple(int(x) for x in v.split("+")), "--preferred"
    )
    precisions = _list(args.precisions, lambda v: v.lower(), "--precisions")
    if precisions is not None:
        from serving.tune_judge import check_precisions

        precisions = check_precisions(precisions, exported_int8, args.device)
    space = tune.Space(
        precisions=precisions or space.precisions,
        plans=plans or space.plans,
        max_batch_sizes=_list(args.max_batch_sizes, int, "--max-batch-sizes") or space.max_batch_sizes,
        preferred=preferred or space.preferred,
        delays=_list(args.delays, int, "--delays") or space.delays,
        concurrency=_list(args.concurrency, int, "--concurrency") or space.concurrency,
    )
    if "int8" in space.precisions and not exported_int8:
        raise ServingError(f"no INT8 export of {name}: python -m export build {name} --int8")
    output = args.output or paths.reports_dir() / f"tune-{name}{'-gpu' if gpu else ''}.json"
    stderr.print(
        f"tuning {name}'s {args.device} config for p99 <= {args.p99_ms:g} ms within {args.budget_s:.0f}s",
        highlight=False,
    )
    results = tune.search(
        name,
        repository,
        slo_ms=args.p99_ms,
        budget_s=args.budget_s,
        space=space,
        window_s=args.window_s,
        progress=lambda m: stderr.print(m, highlight=False, markup=False),
        device=args.device,
    )
    best = tune.winner(results)
    baseline = results[0]
    ab = None
    if best is not None and best is not baseline:
        stderr.print(
            f"A/B: the winner against the current config, {tune.AB_ROUNDS} rounds each, alternately",
            highlight=False,
        )
        ab = tune.ab_test(
            name,
            repository,
            best,
            slo_ms=args.p99_ms,
            window_s=args.window_s,
            progress=lambda m: stderr.print(m, highlight=False, markup=False),
            device=args.device,
        )
    written = None
    if ab is not None and ab.ahead and gpu:  # beside the report: no GPU winner has been served yet
        written = tune.write_gpu_winner(name, repository, best.candidate, output.with_suffix(".pbtxt"))
    elif ab is not None and ab.ahead:
        written = tune.write_tuned(name, repository, best.candidate, args.config_name, args.force)
    report = {
        "command": invoked_command(),  # as run, every option (provenance has it too)
        "model": name,
        "device": args.device,
        "slo_p99_ms": args.p99_ms,
        "space": {k: list(v) for k, v in vars(space).items()},
        "candidates": [m.to_dict() for m in results],
        "baseline": baseline.to_dict(),
        "winner": best.to_dict() if best else None,
        "speedup_vs_baseline": (best.best["infer_per_s"] / baseline.best["infer_per_s"])
        if best and baseline.best
        else None,
        # the winner against the current config, alternately: the figures that decided `written`
        "ab": ab.to_dict() if ab else None,
        "verdict": _verdict(best, baseline, ab),
        "written": str(written) if written else None,
        "state": str(repository / name / "serving.json"),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    from cnn_deploy_core.fsutil import atomic_write_text
    from cnn_deploy_core.machine import provenance

    report["provenance"] = provenance()

    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    tune.plot(results, args.p99_ms, output.with_suffix(".png"))
    if args.json:
        print(json.dumps(report, indent=2))
        if report["verdict"]:
            stderr.print(report["verdict"], highlight=False, markup=False)
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
            start = f"{name}'s cpu config, where the search started" if not gpu else "the gpu config"
            stdout.print(line + (f" ({speed:.2f}x {start})" if speed else ""), highlight=False)
            if ab is not None:
                stdout.print(_ab_table(ab))
            stdout.print(report["verdict"], highlight=False, markup=False)
            if written and gpu:
                model = name + (INT8_SUFFIX if best.candidate.precision == "int8" else "")
                # over the gpu config: under another name every other model would fall back to
                # its config.pbtxt, the CPU config
                target = repository / model / "configs" / "gpu.pbtxt"
                stdout.print(
                    f"written: {written}, not into the repository; to serve it, copy it over {target} "
                    "and serve with `--config-name gpu` (a later `serving repo` regenerates that file)"
                )
            elif written:
                serve = f"python -m serving up --config-name {args.config_name}"
                stdout.print(f"written: {written}; serve it with `{serve}`")
        stdout.print(f"JSON: {output}  chart: {output.with_suffix('.png')}", highlight=False)
    if best is None:
        raise ServingError(
            f"no configuration of {name} met p99 <= {args.p99_ms:g} ms with every answer right"
        )
    return 0


def _verdict(best, baseline, ab) -> str | None:
    """What the run decided, in one line."""
    if best is None:
        return None
    if best is baseline:
        return "the current config is best here: no candidate beat it in the search"
    if ab.ahead:
        return f"A/B: {ab.why}"
    return f"the current config is best here: {ab.why}"


def _ab_table(ab) -> Table:
    light = ab.light
    title = f"A/B at c={ab.concurrency}" + (f" and c={light}" if light else "")
    table = Table(title=f"{title}: {ab.current_model}'s current config and the winner, alternately")
    columns = ("round", "config", "infer/s", *((f"infer/s c={light}",) if light else ()), "p99")
    for col in (*columns, "generator ms/req", "verifier ms/req", "problems"):
        table.add_column(col, justify="left" if col in ("config", "problems") else "right")
    for run in ab.runs:
        point = run["point"] or {}
        cpu = [point.get(f"{who}_cpu_ms_per_request") for who in ("generator", "verifier")]
        light_point = run["points"].get(light) if light else None
        table.add_row(
            str(run["round"]),
            run["config"],
            f"{point['infer_per_s']:.1f}" if point else "-",
            *((f"{light_point['infer_per_s']:.1f}" if light_point else "-",) if light else ()),
            f"{point['p99_ms']:.1f}" if point else "-",
            *(f"{ms:.2f}" if ms is not None else "-" for ms in cpu),
            "; ".join(run["problems"]),
        )
    return table
