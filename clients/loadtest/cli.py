"""`python -m clients loadtest`: concurrency sweeps or request rates against a served model.

Thin over :func:`clients.loadtest.run_loadtest`: options -> LoadTestConfig and Objectives, a live
progress line on stderr, then the files (JSON, CSV, PNG), a table (or `--json`) on stdout, each
problem the judge found in one line, and the exit code: 0 when every objective held, 1 when the
run failed (a failed request, a wrong or unverified answer, a dropped request, a lost replica,
nothing measured), 99 when only the latency objective was missed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.measure import Measurement
from rich.text import Text

from clients import ClientError
from clients.endpoints import add_url_argument, parse_urls
from clients.keys import add_key_argument, from_file, inference_key
from clients.loadtest.config import ARRIVALS, INPUTS, SHARED_MEMORY, LoadTestConfig, default
from clients.loadtest.report import summary_lines, summary_table, to_json, write_reports
from clients.loadtest.runner import Progress, run_loadtest
from clients.loadtest.verdict import EXIT_CODES_HELP, EXIT_FAILED, EXIT_INTERRUPTED, exit_code
from clients.tls import tls_from_args
from cnn_deploy_core import CnnDeployError, paths
from cnn_deploy_core.console import error, stderr, stdout
from cnn_deploy_core.fsutil import ensure_writable_dir
from cnn_deploy_core.judge import LATENCY, Objectives, problems
from cnn_deploy_core.layout import IDENTITY_MODEL
from cnn_deploy_core.machine import invoked_command


def _levels(number: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            values = tuple(number(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a list like 1,2,4,8, got {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive values, got {text!r}")
        return values

    return parse


def _add_arguments(p: argparse.ArgumentParser) -> None:
    # Defaults come from LoadTestConfig (`default(...)`): one place, shown by %(default)s.
    add_url_argument(p)
    p.add_argument("--model", help="the served model (not needed with --self-test alone)")
    load = p.add_mutually_exclusive_group()
    levels = ",".join(str(int(v)) for v in default("levels"))
    load.add_argument(
        "--concurrency",
        type=_levels(int),
        metavar="N,N,...",
        help=f"closed loop: sweep these numbers of outstanding requests (default {levels})",
    )
    load.add_argument(
        "--rate",
        type=_levels(float),
        metavar="R,R,...",
        help="open loop: sweep these request rates (requests/s)",
    )
    p.add_argument(
        "--arrival", choices=ARRIVALS, help=f"with --rate: inter-arrival times (default {default('arrival')})"
    )
    p.add_argument(
        "--max-outstanding",
        type=int,
        default=default("max_outstanding"),
        help="with --rate: cap on requests in flight (default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=default("batch_size"),
        help="images per request (default %(default)s)",
    )
    p.add_argument(
        "--warmup-s",
        type=float,
        default=default("warmup_s"),
        help="warm-up per step, seconds (default %(default)s)",
    )
    p.add_argument(
        "--window-s",
        type=float,
        default=default("window_s"),
        help="measurement window, seconds (default %(default)s)",
    )
    p.add_argument(
        "--stability",
        type=float,
        default=default("stability") * 100,
        metavar="PERCENT",
        help="the last 3 windows' throughput and p99 must lie within this %% of their mean "
        "(default %(default)g)",
    )
    p.add_argument(
        "--max-windows",
        type=int,
        default=default("max_windows"),
        help="windows per step at most (default %(default)s)",
    )
    p.add_argument(
        "--max-step-s",
        type=float,
        default=default("max_step_s"),
        help="time per step at most, seconds (default %(default)s)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help='do not check answers (a model without a golden set); the report says "not verified". '
        "Without it, a model whose answers cannot be checked is an error",
    )
    p.add_argument(
        "--verify-fraction",
        type=float,
        default=default("verify_fraction"),
        help="fraction of answers checked against the golden set; below 1 the run fails only when a step "
        "had answers and none was checked (default %(default)s)",
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="golden set at DIR/<model>/<version>/golden.npz (default: model_repository in the project)",
    )
    p.add_argument("--golden", type=Path, help="the golden set file to use instead")
    p.add_argument(
        "--p99-ms",
        type=float,
        help="objective: every step's p99 response time at most this (ms), over every request after "
        "warm-up with failures at their time to failure; missing it exits 99",
    )
    p.add_argument(
        "--max-error-rate",
        type=float,
        default=default("max_error_rate", Objectives),
        help="failed/all requests at most this, over the whole run (warm-up included) and each step "
        "after warm-up; by default any failed request fails the run (default %(default)g)",
    )
    p.add_argument(
        "--max-wrong",
        type=int,
        default=default("max_wrong", Objectives),
        help="wrong answers allowed over the whole run; by default a wrong answer fails the run "
        "(default %(default)s)",
    )
    p.add_argument(
        "--max-dropped",
        type=int,
        default=default("max_dropped", Objectives),
        help="with --rate: requests allowed to be dropped (scheduled and never sent: every slot of "
        "--max-outstanding busy); by default a dropped request fails the run (default %(default)s)",
    )
    p.add_argument(
        "--tolerate-replica-loss",
        action="store_true",
        help="with several --url: a replica that never answers, or whose requests went on to another "
        "replica, does not fail the run (by default it does, naming the replica)",
    )
    p.add_argument(
        "--self-test",
        action="store_true",
        help=f"also run the sweep against '{IDENTITY_MODEL}': the generator's own capacity",
    )
    p.add_argument(
        "--output", type=Path, default=None, help="report directory (default: reports in the project)"
    )
    p.add_argument("--json", action="store_true", help="print the JSON report on stdout instead of the table")
    p.add_argument(
        "--timeout", type=float, default=default("timeout"), help="per request, seconds (default %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=default("seed"),
        help="seed for Poisson arrivals, sampling and random inputs",
    )
    p.add_argument(
        "--input",
        choices=INPUTS,
        default=default("input"),
        help="tensor: preprocessed float tensors to MODEL; image: the encoded photos (JPEG/PNG) to "
        "MODEL_image, preprocessed by the server (default %(default)s)",
    )
    p.add_argument(
        "--shared-memory",
        choices=SHARED_MEMORY,
        default=default("shared_memory"),
        help="system: tensors through system shared memory, for a server on this host (gRPC; needs the "
        "admin key) (default %(default)s)",
    )
    p.add_argument(
        "--admin-key",
        default=None,
        help="Triton's admin key, for --shared-memory (default: $TRITON_ADMIN_KEY to loopback or over "
        "TLS, else the local server's); prefer --admin-key-file: a command line is public",
    )
    p.add_argument(
        "--admin-key-file",
        type=Path,
        default=None,
        help="file holding the admin key, for --shared-memory (chmod 600)",
    )
    add_key_argument(p)
    p.add_argument(
        "--min-samples",
        type=int,
        default=default("min_samples"),
        help="answers each step's percentiles rest on, at least, time allowing (default %(default)s)",
    )
    p.add_argument(
        "--no-failover",
        action="store_true",
        help="with several --url: count a request to an unreachable replica as an error instead of "
        "sending it once to another replica",
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `loadtest` on the `python -m clients` sub-command parser."""
    p = subparsers.add_parser(
        "loadtest",
        help="load test a served model: latency, throughput, correctness",
        description=__doc__,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    return p


def _warn(message: str) -> None:
    stderr.print(message, markup=False, highlight=False)


def _admin_key(args: argparse.Namespace) -> str | None:
    if args.admin_key and args.admin_key_file:
        raise ClientError("give --admin-key or --admin-key-file, not both")
    return args.admin_key or from_file(args.admin_key_file, "admin key file")


def config_from_args(args: argparse.Namespace) -> tuple[LoadTestConfig, Objectives]:
    if not args.model and not args.self_test:
        raise ClientError("--model is required (or --self-test alone to measure the generator)")
    if args.arrival and not args.rate:
        raise ClientError("--arrival applies to --rate only")
    mode = "rate" if args.rate else "concurrency"
    config = LoadTestConfig(
        url=args.url,
        model=args.model or IDENTITY_MODEL,
        mode=mode,
        levels=args.rate or args.concurrency or default("levels"),
        arrival=args.arrival or "constant",
        batch_size=args.batch_size,
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        stability=args.stability / 100,
        max_windows=args.max_windows,
        max_step_s=args.max_step_s,
        max_outstanding=args.max_outstanding,
        verify_fraction=args.verify_fraction,
        repository=args.repository,
        golden=args.golden,
        timeout=args.timeout,
        seed=args.seed,
        input=args.input,
        shared_memory=args.shared_memory,
        admin_key=_admin_key(args),
        failover=not args.no_failover,
        verify=not args.no_verify,
        min_samples=args.min_samples,
        tls=tls_from_args(args),
        api_key=inference_key(args.key_file, parse_urls(args.url), warn=_warn),
    )
    objectives = Objectives(
        p99_ms=args.p99_ms,
        max_error_rate=args.max_error_rate,
        max_wrong=args.max_wrong,
        verify=config.verify,
        every_answer_verified=config.verify_fraction >= 1,
        max_dropped=args.max_dropped,
        tolerate_replica_loss=args.tolerate_replica_loss,
    )
    return config, objectives


class _ProgressDisplay:
    """One live line on stderr (current step, window, running throughput and p99) on a terminal;
    a line per finished step otherwise (CI logs)."""

    def __init__(self) -> None:
        self.live = (
            Live(Text(""), console=stderr, transient=True, refresh_per_second=4)
            if stderr.is_terminal
            else None
        )

    def __enter__(self) -> _ProgressDisplay:
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.stop()

    def __call__(self, p: Progress) -> None:
        p99 = "-" if p.p99_ms is None else f"{p.p99_ms:.1f} ms"
        if p.phase == "done":
            stable = "stable" if p.result.stable else f"not stable after {p.result.windows_run} windows"
            stderr.print(
                f"{p.model} step {p.step}/{p.steps} {p.label}: {p.inferences_per_s:.1f} infer/s, "
                f"p99 {p99}, {stable}",
                highlight=False,
            )
            return
        if self.live:
            window = "warm-up" if p.phase == "warm-up" else f"window {p.window}/{p.max_windows}"
            self.live.update(
                Text(
                    f"{p.model} step {p.step}/{p.steps} {p.label} · {window} · "
                    f"{p.inferences_per_s:.1f} infer/s · p99 {p99}"
                )
            )


def run(args: argparse.Namespace) -> int:
    """Run the load test the options describe; returns the exit code."""
    command = getattr(args, "command_line", None) or invoked_command()  # the runner redacts it
    try:
        config, objectives = config_from_args(args)
        output = args.output or paths.reports_dir()
        ensure_writable_dir(output)  # before minutes of load, not after
        with _ProgressDisplay() as progress:
            report = run_loadtest(
                config, objectives=objectives, self_test=args.self_test, progress=progress, command=command
            )
        data = report.to_dict()
        written = write_reports(data, output)
    except CnnDeployError as e:
        error(str(e))
        return EXIT_FAILED
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    if args.json:
        stdout.out(to_json(data).rstrip("\n"), highlight=False)
    else:
        table = summary_table(data)
        # Never cut numbers to "…" on a narrow terminal: print the table at its own width.
        needed = Measurement.get(stdout, stdout.options.update_width(1000), table).maximum
        wide = Console(
            file=stdout.file,
            width=max(stdout.width, needed),
            color_system=stdout.color_system,
            force_terminal=stdout.is_terminal,
            soft_wrap=True,
        )
        wide.print(table)
        for line in summary_lines(data):
            stdout.print(line, highlight=False)
        stdout.print(f"reports: {written.json}, {written.csv}, {written.png}", highlight=False, markup=False)
    found = problems(report, objectives)
    for problem in found:
        error(f"SLO missed: {problem}" if problem.kind == LATENCY else str(problem))
    return exit_code(found)
