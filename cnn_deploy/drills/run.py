"""Failure drills: what a deployment promises when a replica dies, restarts, is overloaded, runs long.

    python -m cnn_deploy drills [--short] [--model resnet18]      (make drills)

Each drill runs real tritonservers (loopback only) on a scratch repository of one exported model,
loads them with our load test (every answer verified), does something bad, and checks a promise.
The servers are pinned to all CPUs but one and the load generator to that one (`split_cpus`), as
if it ran on another machine: sharing the cores, the generator itself slowed a backlogged server.

- kill:     2 replicas, one SIGKILLed mid-load: failed requests <= those in flight on it at that
            moment, the other keeps answering, no wrong answer.
- restart:  1 replica crashes (SIGKILL) and is started again mid-load: the load test neither hangs
            nor crashes, errors are counted by kind, answers are exact again afterwards.
- overload: 3x the measured capacity, open loop: the server stays up, its memory (server and
            backend processes) levels off, every request ends (answer or error) within the
            client's timeout, and throughput is back to 90% of capacity within 10 s.
- soak:     80% of capacity for 10 minutes: no error, no wrong answer, memory growth < 5% from
            minute 2 to the end, p99 drift < 20% (the median minute's p99 of the second half
            against the first half's, from minute 2; a p99 that falls is not a drift: the soak
            looks for wear).

`--short` runs every drill briefly (what CI runs); the promises are the same, except the soak's
wear figures (memory growth, p99 drift), which are reported but not judged: half a minute cannot show
wear, and a p99 over a few hundred answers on a shared machine is noise. Exit code 1 when any
judged promise is broken.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.machine import tree_pss_mb

LOAD_TIMEOUT_S = 10.0  # the clients' per-request timeout during the drills
RECOVERY_LIMIT_S = 10.0
# Overload: memory must level off while the overload goes on. It does grow at first (the Python
# backend's shared-memory pool and ORT's arena take the queued requests and bigger batches, up to
# what max_batch_size and the clients' outstanding requests allow); it must not keep growing.
MEMORY_PLATEAU = 1.05  # peak of the second half of the overload <= this x the peak of the first
MEMORY_GROWTH_LIMIT = 0.05
P99_DRIFT_LIMIT = 0.20


@dataclass(frozen=True)
class Durations:
    kill_s: float
    restart_s: float
    overload_s: float
    soak_s: float
    window_s: float  # the load test's measurement window


FULL = Durations(kill_s=30, restart_s=40, overload_s=30, soak_s=600, window_s=2)
SHORT = Durations(kill_s=14, restart_s=30, overload_s=8, soak_s=30, window_s=1)


@dataclass
class Check:
    promise: str
    measured: str
    passed: bool
    judged: bool = True  # False: reported only (a short soak is too short to find wear)


@dataclass
class DrillResult:
    name: str
    checks: list[Check] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks if c.judged)

    def check(self, promise: str, measured: str, passed: bool, *, judged: bool = True) -> None:
        self.checks.append(Check(promise, measured, bool(passed), judged))
        stderr.print(f"  {_mark(self.checks[-1])} {promise}: {measured}", highlight=False)


def _mark(check: Check) -> str:
    if not check.judged:
        return "[dim]info[/]"
    return "[green]ok[/]" if check.passed else "[bold red]BROKEN[/]"


# ---- servers ----------------------------------------------------------------------------------


def tree_memory_mb(pid: int) -> float:
    """The memory of a tritonserver and its backend processes (Triton's Python stubs are its
    children): their PSS summed, so the shared-memory pool they both map counts once (summed RSS
    counted it twice, and a one-time growth of the pool looked twice as big)."""
    return tree_pss_mb(pid) or 0.0  # the server gone meanwhile: 0


class Replicas:
    """N tritonservers of one repository on consecutive port blocks; killed, restarted at will."""

    def __init__(self, repository: Path, scratch: Path, count: int, cpus: tuple[int, ...] = ()):
        from serving.local import replica_options
        from serving.triton import ServerOptions, free_port_block

        base = free_port_block(3 * count)
        opts = ServerOptions(
            repository=repository,
            http_port=base,
            grpc_port=base + 1,
            metrics_port=base + 2,
            backend_dir=scratch / "backends",
            cpus=cpus,
        )
        self.options = replica_options(opts, count)
        self.scratch = scratch
        self.processes: list = []

    def __enter__(self) -> Replicas:
        try:
            for k in range(len(self.options)):
                self.processes.append(self._start(k))  # recorded at once: stop() sees it
            for p in self.processes:
                p.wait_ready(600)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, k: int):
        from serving.triton import TritonProcess

        return TritonProcess(self.options[k], log_path=self.scratch / f"triton-{k + 1}.log").start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for p in self.processes:
            p.stop()

    @property
    def grpc_urls(self) -> list[str]:
        return [o.grpc_url for o in self.options]

    def pid(self, k: int = 0) -> int:
        return self.processes[k].process.pid

    def kill(self, k: int) -> None:
        """SIGKILL replica k with its backend processes: what a node or container failure does."""
        self.processes[k].kill()

    def restart(self, k: int) -> float:
        """Start replica k again (after a kill); seconds until it is ready."""
        started = time.perf_counter()
        self.processes[k].stop()
        self.processes[k] = self._start(k)
        self.processes[k].wait_ready(600)
        return time.perf_counter() - started

    def alive(self, k: int = 0) -> bool:
        from serving.triton import is_ready

        return self.processes[k].process.poll() is None and is_ready(self.options[k].http_url)


# ---- load ---------------------------------------------------------------------------------------


def _load(urls: list[str], model: str, repository: Path, d: Durations, **kw):
    """A load test that runs for its whole max_step_s (it never waits for stability to stop)."""
    from clients.loadtest import LoadTestConfig

    settings = dict(
        url=",".join(urls),
        model=model,
        repository=repository,
        warmup_s=0.0,
        window_s=d.window_s,
        max_windows=10_000,
        min_samples=10**9,
        timeout=LOAD_TIMEOUT_S,
    )
    settings.update(kw)
    return LoadTestConfig(**settings)


def _ticker(every_s: float = 15.0):
    """Progress for the long drills: a line every `every_s` with the current window's figures."""
    started = last = time.perf_counter()

    def tick(p) -> None:
        nonlocal last
        now = time.perf_counter()
        if p.phase == "measure" and now - last >= every_s:
            last = now
            p99 = f", p99 {p.p99_ms:.0f} ms" if p.p99_ms is not None else ""
            stderr.print(
                f"    {now - started:4.0f} s: {p.inferences_per_s:.1f} infer/s{p99}", highlight=False
            )

    return tick


async def _run_load(config, *, during=None):
    """Run the load test; `during(transport)` runs beside it. Bounded: a hang is a broken promise."""
    from clients.loadtest.runner import run_loadtest_async

    opened: asyncio.Future = asyncio.get_running_loop().create_future()
    load = asyncio.create_task(
        run_loadtest_async(
            config, on_open=lambda t: opened.done() or opened.set_result(t), progress=_ticker()
        )
    )
    extra = None
    if during is not None:
        await asyncio.wait({opened, load}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if not opened.done():  # the load test failed (or never got going) before its first request
            opened.cancel()
            await asyncio.wait_for(load, config.timeout + 60)  # raises the load test's own error
            raise CnnDeployError("the load test ended before it sent a request: nothing was drilled")
        extra = await during(opened.result())
    bound = config.max_step_s + config.timeout + 60
    try:
        report = await asyncio.wait_for(load, bound)
    except TimeoutError:
        raise CnnDeployError(f"the load test did not end within {bound:.0f} s: it hangs") from None
    return report, extra


def _run_load_sampling_memory(config, pid: int, every_s: float) -> tuple:
    """The load test, with the server's memory (MB) sampled beside it every `every_s`, from the first
    request: (report, [(seconds since then, MB), ...])."""
    samples: list[tuple[float, float]] = []

    async def watch(transport):
        t0 = time.perf_counter()

        async def sample():
            while True:
                samples.append((time.perf_counter() - t0, tree_memory_mb(pid)))
                await asyncio.sleep(every_s)

        return asyncio.create_task(sample())

    async def run():
        report, sampler = await _run_load(config, during=watch)
        sampler.cancel()
        return report

    return asyncio.run(run()), samples


def _capacity(urls, model, repository, d: Durations) -> float:
    from clients.loadtest import run_loadtest

    config = _load(urls, model, repository, d, levels=(4,), min_samples=200, max_step_s=20, warmup_s=2)
    (step,) = run_loadtest(config).steps
    if not step.responses or step.wrong:
        raise CnnDeployError(
            f"capacity: {step.responses} answers, {step.wrong} wrong; the drill cannot start"
        )
    return step.requests_per_s


def _errors(report) -> int:
    return sum(report.totals.errors.values())


# ---- the drills -------------------------------------------------------------------------------


def drill_kill(
    model: str, repository: Path, scratch: Path, d: Durations, *, cpus: tuple[int, ...] = ()
) -> DrillResult:
    result = DrillResult("kill")
    stderr.print(f"[bold]kill[/]: 2 replicas, c=4 for {d.kill_s:g} s, replica 2 SIGKILLed at 40%")
    with Replicas(repository, scratch / "kill", 2, cpus) as servers:
        config = _load(servers.grpc_urls, model, repository, d, levels=(4,), max_step_s=d.kill_s)

        async def kill(transport):
            await asyncio.sleep(0.4 * d.kill_s)
            at_kill = {
                "in_flight_on_killed": transport.figures[1].in_flight,
                "answers_by_survivor": transport.figures[0].responses,
                "t": time.perf_counter(),
            }
            servers.kill(1)
            return at_kill

        report, at_kill = asyncio.run(_run_load(config, during=kill))
        after_s = time.perf_counter() - at_kill["t"]  # before the servers stop (that takes a while)
    survivor = report.replicas[0]["responses"] - at_kill["answers_by_survivor"]
    failed = _errors(report)
    result.figures = {
        **{k: v for k, v in at_kill.items() if k != "t"},
        "failed": failed,
        "errors": report.totals.errors,
        "failovers": report.replicas[1]["failovers"],
        "survivor_answers_after_kill": survivor,
        "survivor_answers_per_s_after_kill": survivor / after_s,
        "verified": report.totals.verified,
        "wrong": report.totals.wrong,
    }
    result.check(
        "failed requests <= those in flight on the killed replica",
        f"{failed} failed, {at_kill['in_flight_on_killed']} in flight, "
        f"{report.replicas[1]['failovers']} sent on to the survivor",
        failed <= at_kill["in_flight_on_killed"],
    )
    result.check(
        "throughput continues on the other replica",
        f"{survivor} answers in {after_s:.1f} s after the kill ({survivor / after_s:.1f}/s)",
        survivor > 0,
    )
    result.check(
        "no wrong answer", f"{report.totals.wrong} wrong of {report.totals.verified}", not report.totals.wrong
    )
    return result


def drill_restart(
    model: str, repository: Path, scratch: Path, d: Durations, *, cpus: tuple[int, ...] = ()
) -> DrillResult:
    result = DrillResult("restart")
    stderr.print(
        f"[bold]restart[/]: 1 replica, c=2 for {d.restart_s:g} s, crashed (SIGKILL) and restarted at 25%"
    )
    with Replicas(repository, scratch / "restart", 1, cpus) as servers:
        config = _load(servers.grpc_urls, model, repository, d, levels=(2,), max_step_s=d.restart_s)

        async def crash(transport):
            await asyncio.sleep(0.25 * d.restart_s)
            servers.kill(0)
            return await asyncio.to_thread(servers.restart, 0)

        started = time.perf_counter()
        report, restart_s = asyncio.run(_run_load(config, during=crash))
        took = time.perf_counter() - started
        from clients.loadtest import run_loadtest

        after = run_loadtest(
            _load(servers.grpc_urls, model, repository, d, levels=(2,), max_step_s=3 * d.window_s)
        )
    result.figures = {
        "restart_s": restart_s,
        "load_test_s": took,
        "errors": report.totals.errors,
        "answers": report.totals.requests - _errors(report),
        "sweep_stopped": report.failures,
        "after": {
            "verified": after.totals.verified,
            "wrong": after.totals.wrong,
            "errors": after.totals.errors,
        },
    }
    kinds = ", ".join(f"{k} {v}" for k, v in report.totals.errors.items()) or "none"
    # A hang raises in _run_load and a crash propagates; a sweep that gave up is a failure here.
    result.check(
        "the load test neither hangs nor crashes, and rides out the restart",
        f"ran {took:.1f} s of {d.restart_s:g} (bound {d.restart_s + LOAD_TIMEOUT_S + 60:.0f} s); the "
        f"server was back in {restart_s:.1f} s"
        + (f"; but: {'; '.join(report.failures)}" if report.failures else ""),
        not report.failures,
    )
    result.check("the crash is seen, and errors are counted by kind", kinds, _errors(report) > 0)
    result.check(
        "answers are exact after the restart",
        f"{after.totals.verified} verified, {after.totals.wrong} wrong, {_errors(after)} errors",
        after.totals.verified > 0 and not after.totals.wrong and not _errors(after),
    )
    return result


def drill_overload(
    model: str, repository: Path, scratch: Path, d: Durations, capacity: float, *, cpus: tuple[int, ...] = ()
) -> DrillResult:
    result = DrillResult("overload")
    rate = 3 * capacity
    stderr.print(f"[bold]overload[/]: {rate:.0f} req/s (3x capacity {capacity:.1f}) for {d.overload_s:g} s")
    with Replicas(repository, scratch / "overload", 1, cpus) as servers:
        pid = servers.pid()
        before = tree_memory_mb(pid)
        config = _load(
            servers.grpc_urls, model, repository, d, mode="rate", levels=(rate,), max_step_s=d.overload_s
        )
        report, samples = _run_load_sampling_memory(config, pid, 0.5)
        peak = [mb for _, mb in samples]
        alive = servers.alive()
        recovery = _load(servers.grpc_urls, model, repository, d, levels=(4,), max_step_s=15)
        from clients.loadtest import run_loadtest

        (step,) = run_loadtest(recovery).steps
    elapsed, back_after = 0.0, None
    for w in step.window_log:
        elapsed += w["duration_s"]
        if w["inferences_per_s"] >= 0.9 * capacity:
            back_after = elapsed
            break
    half = len(peak) // 2
    first, second = max(peak[:half], default=before), max(peak[half:], default=before)
    (over,) = report.steps
    # From the moment each request left: the client's timeout runs from there. The response time
    # (from the schedule) also counts the generator's own backlog, which an open loop at 3x
    # capacity grows without bound; it is reported, not judged.
    worst = over.service_ms.max if over.service_ms else None
    result.figures = {
        "capacity_req_s": capacity,
        "offered_req_s": rate,
        "answered_req_s": over.requests_per_s,
        "errors": over.errors,
        "response_ms": asdict(over.latency_ms) if over.latency_ms else None,
        "service_ms": asdict(over.service_ms) if over.service_ms else None,
        "memory_mb_before": before,
        "memory_mb_peak": max(peak, default=before),
        "memory_mb_peak_halves": [first, second],
        "recovered_after_s": back_after,
        "wrong": report.totals.wrong,
    }
    result.check("the server stays up", "ready after the overload" if alive else "DOWN", alive)
    result.check(
        f"memory levels off (2nd half's peak <= {MEMORY_PLATEAU}x the 1st half's)",
        f"{before:.0f} MB before, peaks {first:.0f} MB (1st half), {second:.0f} MB (2nd half)",
        second <= MEMORY_PLATEAU * first,
    )
    # A request past its deadline becomes a RequestTimeoutError, never a late answer: the promise
    # is that none timed out over the whole run (the slowest answer is shown for scale).
    result.check(
        "every request ends within the client's timeout (no timeout over the whole run)",
        f"{over.responses} answers at {over.requests_per_s:.1f}/s, errors "
        f"{', '.join(f'{k} {v}' for k, v in over.errors.items()) or 'none'}, slowest answer "
        f"{worst or 0:.0f} ms after it left (timeout {LOAD_TIMEOUT_S * 1e3:.0f} ms; "
        f"{over.latency_ms.max if over.latency_ms else 0:.0f} ms from its schedule)",
        worst is not None and "RequestTimeoutError" not in report.totals.errors,
    )
    result.check(
        f"back to 90% of capacity within {RECOVERY_LIMIT_S:g} s",
        f"after {back_after:.1f} s" if back_after is not None else "not within 15 s",
        back_after is not None and back_after <= RECOVERY_LIMIT_S,
    )
    result.check("no wrong answer", f"{report.totals.wrong} wrong", not report.totals.wrong)
    return result


def drill_soak(
    model: str,
    repository: Path,
    scratch: Path,
    d: Durations,
    capacity: float,
    *,
    judged: bool = True,
    cpus: tuple[int, ...] = (),
) -> DrillResult:
    """`judged=False` (--short): wear is not judged on a half-minute run, only reported."""
    result = DrillResult("soak")
    rate = 0.8 * capacity
    window = max(d.window_s, d.soak_s / 10)  # 10 windows: the 2nd is "minute 2" of a 10-minute soak
    stderr.print(f"[bold]soak[/]: {rate:.1f} req/s (80% of capacity) for {d.soak_s:g} s")
    with Replicas(repository, scratch / "soak", 1, cpus) as servers:
        config = _load(
            servers.grpc_urls,
            model,
            repository,
            replace(d, window_s=window),
            mode="rate",
            levels=(rate,),
            max_step_s=d.soak_s,
        )
        report, samples = _run_load_sampling_memory(config, servers.pid(), max(1.0, d.soak_s / 120))
    (step,) = report.steps
    mark = 0.2 * d.soak_s
    if not samples or samples[-1][1] <= 0:
        raise CnnDeployError("soak: no memory sample of the server was taken")
    mem_start = next((mb for t, mb in samples if t >= mark), samples[-1][1])
    mem_end = samples[-1][1]
    growth = (mem_end - mem_start) / max(mem_start, 1e-9)
    windows = [w for w in step.window_log if w["p99_ms"] is not None]
    # Drift = the median minute's p99 in the second half of the steady run (minute 2 on) against
    # the first half's. One minute's p99 against another's is noise here: at 80% load on a shared
    # machine it swung 55-244 ms from minute to minute with no trend; wear moves the medians.
    steady = [w["p99_ms"] for w in windows[1:]]
    half = len(steady) // 2
    p99_start = statistics.median(steady[:half]) if half else None
    p99_end = statistics.median(steady[-half:]) if half else None
    # Signed: a soak looks for degradation. A p99 that falls means the start was disturbed (the
    # machine is shared), not that the server wears out.
    drift = (p99_end - p99_start) / p99_start if p99_start and p99_end else None
    result.figures = {
        "rate_req_s": rate,
        "answered_req_s": step.requests_per_s,
        "errors": report.totals.errors,
        "verified": report.totals.verified,
        "wrong": report.totals.wrong,
        "memory_mb": {"at_20pct": mem_start, "end": mem_end, "growth": growth},
        "p99_ms": {"first_half_median": p99_start, "second_half_median": p99_end, "drift": drift},
        "window_p99_ms": [w["p99_ms"] for w in windows],
    }
    result.check(
        "no error, no wrong answer",
        f"{_errors(report)} errors, {report.totals.wrong} wrong of {report.totals.verified} verified",
        not _errors(report) and not report.totals.wrong and report.totals.verified > 0,
    )
    result.check(
        f"memory (PSS) growth < {MEMORY_GROWTH_LIMIT:.0%} from 20% of the run to the end",
        f"{mem_start:.0f} -> {mem_end:.0f} MB ({growth:+.1%})",
        growth < MEMORY_GROWTH_LIMIT,
        judged=judged,
    )
    result.check(
        f"p99 grows < {P99_DRIFT_LIMIT:.0%} (median minute, 2nd half against 1st, from minute 2)",
        f"{p99_start:.1f} -> {p99_end:.1f} ms ({drift:+.0%})" if drift is not None else "too few windows",
        drift is not None and drift < P99_DRIFT_LIMIT,
        judged=judged,
    )
    return result


DRILLS = ("kill", "restart", "overload", "soak")


def _run(model, models_dir: Path, d: Durations, chosen: list[str], short: bool, cpus) -> tuple:
    from rich.console import Console

    from cnn_deploy_core.registry import get
    from serving.repository import CpuPlan, place_models

    quiet = Console(stderr=True, quiet=True)
    results: list[DrillResult] = []
    with tempfile.TemporaryDirectory(prefix="drills-") as tmp:
        scratch = Path(tmp)
        repository = scratch / "repository"
        if not (models_dir / model / "model.onnx").is_file():
            raise CnnDeployError(
                f"{model} is not exported in {models_dir}: run `python -m export build {model}` first"
            )
        # One instance: the drills are about failures, not speed; the share of the cores is
        # decided at start like `serving up` does.
        place_models(
            [get(model)], models_dir=models_dir, repository=repository, cpu=CpuPlan(1, 0), console=quiet
        )
        capacity = None
        if {"overload", "soak"} & set(chosen):
            with Replicas(repository, scratch / "capacity", 1, cpus) as servers:
                capacity = _capacity(servers.grpc_urls, model, repository, d)
            stderr.print(f"capacity: {capacity:.1f} req/s at c=4 (1 replica, every answer verified)")
        for name in chosen:
            if name == "kill":
                results.append(drill_kill(model, repository, scratch, d, cpus=cpus))
            elif name == "restart":
                results.append(drill_restart(model, repository, scratch, d, cpus=cpus))
            elif name == "overload":
                results.append(drill_overload(model, repository, scratch, d, capacity, cpus=cpus))
            else:
                results.append(
                    drill_soak(model, repository, scratch, d, capacity, judged=not short, cpus=cpus)
                )
    return capacity, results


def split_cpus() -> tuple[tuple[int, ...], set[int]]:
    """The servers' CPUs and the load generator's: the last CPU this process may use goes to the
    generator (and its verifier), the others to the servers, as if the client ran on another
    machine. Sharing the cores, a backlog slows the server down (the generator, gRPC and the
    backend copy bigger batches, all on the server's cores), so at 80% of capacity one slow
    minute of a shared machine turned into a backlog that never cleared (measured in the soak).
    With a single CPU there is nothing to split: ((), set())."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return (), set()
    return tuple(cpus[:-1]), {cpus[-1]}


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
        capacity, results = _run(model, models_dir, d, only or list(DRILLS), short, server_cpus)
    finally:
        os.sched_setaffinity(0, own)
    took = time.perf_counter() - started
    report = {
        "model": model,
        "short": short,
        "durations": asdict(d),
        "capacity_req_s": capacity,
        "server_cpus": list(server_cpus),
        "client_cpus": sorted(client_cpus),
        "took_s": took,
        "passed": all(r.passed for r in results),
        "drills": [{"name": r.name, "passed": r.passed, **asdict(r)} for r in results],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2, default=str))
    for r in results:
        verdict = "[green]passed[/]" if r.passed else "[bold red]FAILED[/]"
        stdout.print(f"{r.name}: {verdict}")
        for c in r.checks:
            stdout.print(f"  {_mark(c)}  {c.promise}: {c.measured}", highlight=False)
    stdout.print(f"drills took {took / 60:.1f} min; JSON in {output}")
    return 0 if report["passed"] else 1
