"""Failure drills: what a deployment promises when a replica dies, restarts, is overloaded, runs long.

    python -m cnn_deploy drills [--short] [--model resnet18]      (make drills)

Each drill runs real tritonservers (loopback only) on a scratch repository of one exported model,
loads them with our load test (every answer verified), does something bad, and hands the measured
figures to a pure judge (judges.py). The servers are pinned to all CPUs but one and the load
generator to that one (`split_cpus`), as if it ran on another machine.

- kill:             2 replicas, one SIGKILLed mid-load, failover on: no request fails, the survivor
                    keeps >= 80% of its own rate.
- kill-no-failover: the same without failover: what fails is what was in flight on the killed one.
- restart:          1 replica crashes and is started again mid-load: the load test rides it out,
                    counts errors by kind, answers are exact again afterwards.
- overload:         3x capacity, open loop, a queue policy in the model's config: the server stays
                    up, sheds load fast as ServerOverloadedError, answers what it accepts in time,
                    its memory levels off, and it is back to 90% of capacity within 10 s.
- soak:             80% of capacity for a full 10 minutes: no error, no wrong answer, memory's
                    fitted trend grows < 5%, the median p99 < 20%.

Every drill's load-test run is judged by cnn_deploy_core.judge under the drill's own objectives
(judges.py: the kill drills tolerate the killed replica's loss, the overload drill its shedding):
answers verified, none wrong. `--short` runs each briefly (what CI
runs); the promises are the same except the soak's wear (memory trend, p99 drift), reported but
not judged: half a minute cannot show wear. Exit code 1 when any judged promise is broken.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnn_deploy.drills import judges
from cnn_deploy.drills.harness import (
    LOAD_TIMEOUT_S,
    FirstFailure,
    QueuePolicy,
    RequestClock,
    capacity,
    load,
    run_load,
    run_load_sampling_memory,
    split_cpus,
    start_replicas,
    start_supervised,
    with_queue_policy,
)
from cnn_deploy.drills.judges import Check
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.judge import Objectives, problems
from cnn_deploy_core.machine import provenance

REPROBE_S = 4.0  # the client leaves a failed replica out for 5 s: failures before that are the kill's
OVERLOAD_QUEUE = QueuePolicy(max_queue_size=16, timeout_s=2.0)


@dataclass(frozen=True)
class Durations:
    kill_s: float
    restart_s: float
    overload_s: float
    soak_s: float
    window_s: float  # the load test's measurement window


# The kill drills run long enough after the kill for the supervisor's restart (a few seconds on one
# core) and the client's cooldown (5 s) before it tries the replica again.
FULL = Durations(kill_s=45, restart_s=40, overload_s=30, soak_s=600, window_s=2)
SHORT = Durations(kill_s=30, restart_s=30, overload_s=8, soak_s=30, window_s=1)
KILL_AT = 0.3  # of the kill drills' load


@dataclass
class DrillResult:
    name: str
    checks: list[Check] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks if c.judged)

    def record(self, figures, checks: list[Check]) -> DrillResult:
        self.figures = asdict(figures) if not isinstance(figures, dict) else figures
        self.checks = checks
        for c in checks:
            stderr.print(f"  {_mark(c)} {c.promise}: {c.measured}", highlight=False)
        return self


def _mark(check: Check) -> str:
    if not check.judged:
        return "[dim]info[/]"
    return "[green]ok[/]" if check.passed else "[bold red]BROKEN[/]"


def _failed(errors: dict[str, int]) -> int:
    return sum(errors.values())


def _problems(report, objectives: Objectives) -> tuple[str, ...]:
    """What the one judge finds in a drill's load-test run, under the drill's objectives."""
    return tuple(str(p) for p in problems(report, objectives))


def drill_kill(model, repository, scratch, d: Durations, *, failover: bool = True, cpus=()) -> DrillResult:
    name = "kill" if failover else "kill-no-failover"
    stderr.print(
        f"[bold]{name}[/]: `serving up --replicas 2`, c=4 for {d.kill_s:g} s, replica 2's tritonserver "
        f"SIGKILLed at {KILL_AT:.0%}; its supervisor restarts it"
    )
    with start_supervised(repository, scratch / name, 2, cpus) as servers:
        config = load(
            servers.grpc_urls,
            model,
            repository,
            d.window_s,
            levels=(4,),
            max_step_s=d.kill_s,
            failover=failover,
        )

        noticed = FirstFailure()

        async def kill(transport):
            opened = time.perf_counter()
            noticed.attach(transport, 1)  # now: a request sent before it would pass it by
            await asyncio.sleep(KILL_AT * d.kill_s)
            survivor, killed = transport.figures
            old_pid = servers.pid(1)
            # No await between the snapshot and the kill: no request leaves in between.
            at = {"t": time.perf_counter(), "in_flight": killed.in_flight, "survivor": survivor.responses}
            servers.kill(1)
            at["rate_before"] = at["survivor"] / (at["t"] - opened)
            await asyncio.sleep(REPROBE_S)
            at["failed_before_reprobe"] = _failed(killed.errors)
            at["restarted_in_s"] = None
            while time.perf_counter() - at["t"] < judges.READY_AGAIN_S:  # its supervisor restarts it
                if servers.ready_again(1, old_pid):
                    at["restarted_in_s"] = time.perf_counter() - at["t"]
                    break
                await asyncio.sleep(0.25)
            at["killed_answers_at_restart"] = killed.responses
            return at, transport

        report, (at, transport) = asyncio.run(run_load(config, during=kill))
        after_s = time.perf_counter() - at["t"]  # before the servers stop (that takes a while)
    survivor, killed = transport.figures
    figures = judges.KillFigures(
        failover=failover,
        in_flight_on_killed=at["in_flight"],
        in_flight_when_noticed=noticed.in_flight or 0,
        failed=_failed(report.totals.errors),
        failed_before_reprobe=at["failed_before_reprobe"],
        failovers=killed.failovers,
        survivor_rate_before=at["rate_before"],
        survivor_rate_after=(survivor.responses - at["survivor"]) / after_s,
        verified=report.totals.verified,
        wrong=report.totals.wrong,
        restarted_in_s=at["restarted_in_s"],
        answers_after_restart=killed.responses - at["killed_answers_at_restart"],
        problems=_problems(
            report, judges.KILL_OBJECTIVES if failover else judges.KILL_NO_FAILOVER_OBJECTIVES
        ),
    )
    return DrillResult(name).record(figures, judges.judge_kill(figures))


def drill_restart(model, repository, scratch, d: Durations, *, cpus=()) -> DrillResult:
    stderr.print(f"[bold]restart[/]: 1 replica, c=2 for {d.restart_s:g} s, crashed and restarted at 25%")
    with start_replicas(repository, scratch / "restart", 1, cpus) as servers:
        config = load(servers.grpc_urls, model, repository, d.window_s, levels=(2,), max_step_s=d.restart_s)

        async def crash(transport):
            await asyncio.sleep(0.25 * d.restart_s)
            servers.kill(0)
            return await asyncio.to_thread(servers.restart, 0)

        started = time.perf_counter()
        report, restart_s = asyncio.run(run_load(config, during=crash))
        took = time.perf_counter() - started
        from clients.loadtest import run_loadtest

        after = run_loadtest(
            load(servers.grpc_urls, model, repository, d.window_s, levels=(2,), max_step_s=3 * d.window_s)
        )
    figures = judges.RestartFigures(
        ran_s=took,
        planned_s=d.restart_s,
        restart_s=restart_s,
        errors=dict(report.totals.errors),
        verified=report.totals.verified,
        wrong=report.totals.wrong,
        after_verified=after.totals.verified,
        after_wrong=after.totals.wrong,
        after_failed=_failed(after.totals.errors),
        problems=_problems(report, judges.RESTART_OBJECTIVES),
        after_problems=_problems(after, judges.AFTER_RESTART_OBJECTIVES),
    )
    return DrillResult("restart").record(figures, judges.judge_restart(figures))


def drill_overload(model, repository, scratch, d: Durations, capacity_: float, *, cpus=()) -> DrillResult:
    rate = 3 * capacity_
    q = OVERLOAD_QUEUE
    stderr.print(
        f"[bold]overload[/]: {rate:.0f} req/s (3x capacity {capacity_:.1f}), open loop, {d.overload_s:g} s; "
        f"queue policy: at most {q.max_queue_size} queued, {q.timeout_s:g} s queue timeout"
    )
    # The drill's own copy of the repository: the queue policy belongs to this drill only.
    shedding = scratch / "overload-repository"
    shutil.copytree(repository, shedding)
    with_queue_policy(shedding, model, q)
    clock = RequestClock()
    with start_replicas(shedding, scratch / "overload", 1, cpus) as servers:
        # Open loop: enough slots for every request the timeout lets be in flight at this rate,
        # so the generator never waits for a free one (waiting makes it a closed loop in disguise).
        slots = int(rate * (LOAD_TIMEOUT_S + 1)) + 1
        config = load(
            servers.grpc_urls, model, shedding, d.window_s,
            mode="rate", levels=(rate,), max_step_s=d.overload_s, max_outstanding=slots,
        )  # fmt: skip
        from clients.loadtest import run_loadtest

        # Recovery is judged against this server's own rate just before the overload: on a shared
        # machine the rate of minutes ago (the capacity run) is not what "back" means.
        steady = load(servers.grpc_urls, model, shedding, d.window_s, levels=(4,), max_step_s=4 * d.window_s)
        (before,) = run_loadtest(steady).steps
        report, samples = run_load_sampling_memory(config, servers.pid(), 0.5, clock)
        ended = time.perf_counter()
        alive = servers.alive()
        recovery = load(servers.grpc_urls, model, shedding, d.window_s, levels=(4,), max_step_s=15)
        recovery_started = time.perf_counter()
        (back,) = run_loadtest(recovery).steps
    peaks = [mb for _, mb in samples]
    half = len(peaks) // 2
    (over,) = report.steps
    windows = [(w["duration_s"], w["inferences_per_s"]) for w in back.window_log]
    figures = judges.OverloadFigures(
        capacity=capacity_,
        offered=rate,
        sent_per_s=over.achieved_rate or 0.0,
        dropped=report.totals.dropped,
        alive=alive,
        errors=dict(report.totals.errors),
        shed_max_s=clock.slowest_failure_s(judges.OVERLOADED),
        queue_timeout_s=q.timeout_s,
        slowest_answer_s=clock.slowest_answer_s,
        timeout_s=LOAD_TIMEOUT_S,
        memory_peaks_mb=(max(peaks[:half], default=0.0), max(peaks[half:], default=0.0)),
        rate_before=before.inferences_per_s,
        recovery_windows=windows,
        recovered_after_s=judges.recovered_after(recovery_started - ended, windows, before.inferences_per_s),
        verified=report.totals.verified,
        wrong=report.totals.wrong,
        problems=_problems(report, judges.OVERLOAD_OBJECTIVES),
    )
    return DrillResult("overload").record(figures, judges.judge_overload(figures))


def drill_soak(
    model, repository, scratch, d: Durations, capacity_: float, *, judged=True, cpus=()
) -> DrillResult:
    """`judged=False` (--short): wear is not judged on a half-minute run, only reported."""
    rate = 0.8 * capacity_
    window = max(d.window_s, d.soak_s / 10)
    stderr.print(f"[bold]soak[/]: {rate:.1f} req/s (80% of capacity) for {d.soak_s:g} s")
    with start_replicas(repository, scratch / "soak", 1, cpus) as servers:
        # Half a window of slack: the step stops before a window that would end past max_step_s,
        # so a step of exactly soak_s would measure one window short of its planned time.
        config = load(
            servers.grpc_urls, model, repository, window,
            mode="rate", levels=(rate,), max_step_s=d.soak_s + window / 2,
        )  # fmt: skip
        report, samples = run_load_sampling_memory(config, servers.pid(), max(1.0, d.soak_s / 120))
    (step,) = report.steps
    trend = judges.memory_trend(samples, 0.2 * d.soak_s)
    p99s = [w["p99_ms"] for w in step.window_log if w["p99_ms"] is not None]
    figures = judges.SoakFigures(
        planned_s=d.soak_s,
        measured_s=sum(w["duration_s"] for w in step.window_log),
        failed=_failed(report.totals.errors),
        verified=report.totals.verified,
        wrong=report.totals.wrong,
        memory_per_min_mb=trend[0] if trend else None,
        memory_growth=trend[1] if trend else None,
        p99=judges.p99_drift(p99s),
        memory_samples=len(samples),
        problems=_problems(report, judges.SOAK_OBJECTIVES),
    )
    result = DrillResult("soak").record(figures, judges.judge_soak(figures, wear_judged=judged))
    result.figures.update(rate_req_s=rate, memory_mb=samples, window_p99_ms=p99s)
    return result


DRILLS = ("kill", "kill-no-failover", "restart", "overload", "soak")


def _run(model, models_dir: Path, d: Durations, chosen: list[str], short: bool, cpus) -> tuple:
    from cnn_deploy.harness import place
    from cnn_deploy_core.registry import get
    from serving.repository import CpuPlan

    results: list[DrillResult] = []
    with tempfile.TemporaryDirectory(prefix="drills-") as tmp:
        scratch = Path(tmp)
        # One instance: the drills are about failures, not speed; the share of the cores is
        # decided at start like `serving up` does.
        repository = place([get(model)], models_dir=models_dir, scratch=scratch, plan=CpuPlan(1, 0))
        cap = None
        if {"overload", "soak"} & set(chosen):
            with start_replicas(repository, scratch / "capacity", 1, cpus) as servers:
                cap = capacity(servers.grpc_urls, model, repository, d.window_s)
            stderr.print(f"capacity: {cap:.1f} req/s at c=4 (1 replica, every answer verified)")
        for name in chosen:
            if name in ("kill", "kill-no-failover"):
                results.append(drill_kill(model, repository, scratch, d, failover=name == "kill", cpus=cpus))
            elif name == "restart":
                results.append(drill_restart(model, repository, scratch, d, cpus=cpus))
            elif name == "overload":
                results.append(drill_overload(model, repository, scratch, d, cap, cpus=cpus))
            else:
                results.append(drill_soak(model, repository, scratch, d, cap, judged=not short, cpus=cpus))
    return cap, results


def _cpu_list(cpus) -> str:
    return ",".join(map(str, sorted(cpus)))


def run_drills(*, model: str, models_dir: Path, short: bool, only: list[str] | None, output: Path) -> int:
    d = SHORT if short else FULL
    server_cpus, client_cpus = split_cpus()
    started = time.perf_counter()
    own = os.sched_getaffinity(0)
    try:
        if client_cpus:
            # Threads and processes started from here on (the load test's gRPC threads, its
            # verifier process) inherit this: the generator keeps off the servers' cores.
            os.sched_setaffinity(0, client_cpus)
            stderr.print(
                f"servers pinned to CPU {_cpu_list(server_cpus)}, the load generator to CPU "
                f"{_cpu_list(client_cpus)} (as if it ran on another machine)"
            )
        else:
            stderr.print("a single CPU: servers and load generator share it (noisier figures)")
        cap, results = _run(model, models_dir, d, only or list(DRILLS), short, server_cpus)
    finally:
        os.sched_setaffinity(0, own)
    took = time.perf_counter() - started
    report = {
        "model": model,
        "short": short,
        "durations": asdict(d),
        "capacity_req_s": cap,
        "server_cpus": list(server_cpus),
        "client_cpus": sorted(client_cpus),
        "took_s": took,
        "passed": all(r.passed for r in results),
        "drills": [{"name": r.name, "passed": r.passed, **asdict(r)} for r in results],
    }
    report["provenance"] = provenance()
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2, default=str))
    for r in results:
        verdict = "[green]passed[/]" if r.passed else "[bold red]FAILED[/]"
        stdout.print(f"{r.name}: {verdict}")
        for c in r.checks:
            stdout.print(f"  {_mark(c)}  {c.promise}: {c.measured}", highlight=False)
    stdout.print(f"drills took {took / 60:.1f} min; JSON in {output}")
    return 0 if report["passed"] else 1
