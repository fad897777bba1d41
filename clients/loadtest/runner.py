"""Load generator for a served model: concurrency sweeps (closed loop) and request rates (open loop).

Modelled on Triton's perf_analyzer: a warm-up, then measurement windows repeated until the last
three agree (throughput and p99 within `stability` of their mean); a step's result is those three
windows merged. One asyncio loop and one shared AsyncTritonClient keep every request in flight, so
the generator is cheap; `self_test` measures its capacity against the `identity` model. Answers
are checked against the golden set and wrong answers are counted apart from errors.

    report = run_loadtest(LoadTestConfig(url="grpc://localhost:8001", model="resnet18"))
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from clients import BadInputError, ClientError, LoadTestError
from clients.client import AsyncTritonClient
from clients.loadtest.config import STABLE_WINDOWS, LoadTestConfig, Slo
from clients.loadtest.report import (
    Latency,
    LoadTestReport,
    ServerBreakdown,
    StepResult,
    Totals,
    error_kinds,
    evaluate,
    flatten_statistics,
)
from clients.loadtest.workload import Workload, build_workload
from cnn_deploy_core.layout import IDENTITY_MODEL

TICK_S = 0.25  # progress refresh while a window runs
SELF_TEST_CONCURRENCY = (1, 4, 16)  # for --self-test after a rate sweep


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no inf


@dataclass
class _Window:
    """What completed (or, in rate mode, was sent) between two boundaries."""

    start: float
    end: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: Counter = field(default_factory=Counter)
    verified: int = 0
    wrong: int = 0
    sent: int = 0
    lags: list[float] = field(default_factory=list)  # rate mode: actual send - scheduled send
    capped: int = 0  # rate mode: sends that waited for the outstanding cap
    stats_start: dict[str, int] | None = None
    stats_end: dict[str, int] | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99)) * 1e3 if self.latencies else math.inf


@dataclass(frozen=True)
class Progress:
    model: str
    step: int  # 1-based
    steps: int
    label: str
    phase: str  # "warm-up" | "measure" | "done"
    window: int
    max_windows: int
    inferences_per_s: float
    p99_ms: float | None
    result: StepResult | None = None


ProgressFn = Callable[[Progress], None]


class _Sweep:
    """Runs the steps of one sweep against one model with one shared client."""

    def __init__(
        self,
        client: AsyncTritonClient,
        config: LoadTestConfig,
        workload: Workload,
        version: str,
        progress: ProgressFn | None,
    ):
        self.client, self.config, self.workload, self.version = client, config, workload, version
        self.progress = progress or (lambda _: None)
        self.totals = Totals()
        self.window = _Window(start=time.perf_counter())
        self.counter = itertools.count()
        self.sample = random.Random(config.seed)
        self.stopping = False
        self.aborted: str | None = None
        self.steps: list[StepResult] = []

    async def run(self) -> None:
        for number, level in enumerate(self.config.levels, 1):
            self.steps.append(await self._step(number, level))
            if self.aborted:
                break

    async def _one(self, index: int) -> None:
        batch = self.workload.batch(index)
        verify = self.workload.enabled and self.sample.random() < self.config.verify_fraction
        start = time.perf_counter()
        try:
            output = await self.client.infer(self.config.model, batch, version=self.version, retry=False)
        except ClientError as e:  # counted, not hidden: measurement runs without retries
            kind = type(e).__name__
            self.window.errors[kind] += 1
            self.totals.errors[kind] = self.totals.errors.get(kind, 0) + 1
            self.totals.requests += 1
            return
        self.totals.requests += 1
        window = self.window  # the window it completed in
        window.latencies.append(time.perf_counter() - start)
        if verify:
            ok, max_abs_err = self.workload.verify(index, output)
            window.verified += 1
            self.totals.verified += 1
            if not ok:
                window.wrong += 1
                self.totals.wrong += 1
                if len(self.totals.wrong_examples) < 5:
                    self.totals.wrong_examples.append(
                        {
                            "request": index,
                            "rows": self.workload.rows(index),
                            "max_abs_err": _finite(max_abs_err),
                        }
                    )

    async def _closed_loop(self) -> None:
        while not self.stopping:
            self.window.sent += 1
            await self._one(next(self.counter))

    async def _open_loop(self, rate: float, in_flight: set[asyncio.Task]) -> None:
        rng = random.Random(self.config.seed)
        slots = asyncio.Semaphore(self.config.max_outstanding)
        due = time.perf_counter()
        while not self.stopping:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # behind schedule: still let responses be handled
            if slots.locked():
                self.window.capped += 1
            await slots.acquire()
            if self.stopping:
                break
            self.window.lags.append(time.perf_counter() - due)
            self.window.sent += 1
            task = asyncio.create_task(self._one(next(self.counter)))
            in_flight.add(task)
            task.add_done_callback(lambda t: (in_flight.discard(t), slots.release()))
            due += rng.expovariate(rate) if self.config.arrival == "poisson" else 1 / rate

    async def _statistics(self) -> dict[str, int] | None:
        try:
            return flatten_statistics(await self.client.statistics(self.config.model, self.version))
        except ClientError:
            return None  # the breakdown is then missing; the client-side numbers still stand

    @staticmethod
    async def _wait(until: float, report: Callable[[str, int], None], phase: str, window: int) -> None:
        while (left := until - time.perf_counter()) > 0:
            await asyncio.sleep(min(TICK_S, left))
            report(phase, window)

    async def _step(self, number: int, level: float) -> StepResult:
        cfg = self.config
        label = cfg.label(level)
        started = time.perf_counter()
        self.stopping = False
        self.window = _Window(start=started)
        drivers: set[asyncio.Task] = set()
        in_flight: set[asyncio.Task] = set()
        if cfg.mode == "concurrency":
            drivers = {asyncio.create_task(self._closed_loop()) for _ in range(int(level))}
        else:
            drivers = {asyncio.create_task(self._open_loop(level, in_flight))}

        def report(phase: str, window: int) -> None:
            w = self.window
            elapsed = max(time.perf_counter() - w.start, 1e-9)
            p99 = w.p99()
            self.progress(
                Progress(
                    cfg.model,
                    number,
                    len(cfg.levels),
                    label,
                    phase,
                    window,
                    cfg.max_windows,
                    len(w.latencies) * cfg.batch_size / elapsed,
                    None if math.isinf(p99) else p99,
                )
            )

        windows: list[_Window] = []
        stable = False
        try:
            await self._wait(started + cfg.warmup_s, report, "warm-up", 0)
            stats = await self._statistics()
            self.window = _Window(start=time.perf_counter(), stats_start=stats)
            while len(windows) < cfg.max_windows:
                current = self.window
                await self._wait(current.start + cfg.window_s, report, "measure", len(windows) + 1)
                # Windows are contiguous: the next one opens before the statistics call returns.
                current.end = time.perf_counter()
                self.window = _Window(start=current.end)
                current.stats_end = self.window.stats_start = await self._statistics()
                windows.append(current)
                self._check_drivers(drivers)
                stable = self._stable(windows)
                if (
                    stable
                    or self._hopeless(current, label)
                    or time.perf_counter() + cfg.window_s > started + cfg.max_step_s
                ):
                    break
        finally:
            self.stopping = True
            if cfg.mode == "rate":  # the scheduler may sleep until its next arrival: stop it now
                for task in drivers:
                    task.cancel()
            await self._drain(drivers | in_flight)
        result = self._result(level, label, windows, stable)
        p99 = result.latency_ms.p99 if result.latency_ms else None
        self.progress(
            Progress(
                cfg.model,
                number,
                len(cfg.levels),
                label,
                "done",
                len(windows),
                cfg.max_windows,
                result.inferences_per_s,
                p99,
                result,
            )
        )
        return result

    def _hopeless(self, window: _Window, label: str) -> bool:
        """A window of nothing but errors ends the sweep: the next load level would only repeat them
        (a server shutting down answers "not ready", then nothing at all)."""
        if window.latencies or not window.errors:
            return False
        self.aborted = (
            f"{label}: a whole window of errors and no answer ({error_kinds(window.errors)}); "
            "the sweep stopped there"
        )
        return True

    @staticmethod
    def _check_drivers(drivers: set[asyncio.Task]) -> None:
        for task in drivers:  # a crashed driver is a bug in the generator: surface it
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()

    async def _drain(self, tasks: set[asyncio.Task]) -> None:
        """Let requests in flight finish (bounded), so the next step starts from a quiet server."""
        tasks = {t for t in tasks if not t.done()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=min(self.config.timeout, 10.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _stable(self, windows: list[_Window]) -> bool:
        if len(windows) < STABLE_WINDOWS:
            return False
        last = windows[-STABLE_WINDOWS:]
        for values in ([len(w.latencies) / w.duration for w in last], [w.p99() for w in last]):
            mean = sum(values) / len(values)
            if not 0 < mean < math.inf or any(abs(v - mean) > self.config.stability * mean for v in values):
                return False
        return True

    def _result(self, level: float, label: str, windows: list[_Window], stable: bool) -> StepResult:
        cfg = self.config
        used = windows[-STABLE_WINDOWS:]
        duration = sum(w.duration for w in used)
        latencies = [x for w in used for x in w.latencies]
        errors = sum((w.errors for w in used), Counter())
        responses, failed = len(latencies), sum(errors.values())
        server = None
        if used[0].stats_start is not None and used[-1].stats_end is not None:
            server = ServerBreakdown.between(used[0].stats_start, used[-1].stats_end)
        rate_fields = {}
        if cfg.mode == "rate":
            lags = [x for w in used for x in w.lags]
            lag = Latency.of(lags)
            capped = sum(w.capped for w in used)
            achieved = sum(w.sent for w in used) / duration
            # Kept up when sends slipped by less than one mean arrival interval (5 ms at least: a
            # busy shared machine delays timers by that much without changing the offered load).
            kept_up = capped == 0 and lag is not None and lag.p99 <= max(5.0, 1e3 / level)
            rate_fields = dict(
                offered_rate=level,
                achieved_rate=achieved,
                capped=capped,
                kept_up=kept_up,
                schedule_lag_ms=None if lag is None else {"p50": lag.p50, "p99": lag.p99, "max": lag.max},
            )
        return StepResult(
            mode=cfg.mode,
            level=level,
            label=label,
            stable=stable,
            windows=len(used),
            windows_run=len(windows),
            duration_s=duration,
            requests=responses + failed,
            responses=responses,
            inferences=responses * cfg.batch_size,
            inferences_per_s=responses * cfg.batch_size / duration,
            requests_per_s=responses / duration,
            latency_ms=Latency.of(latencies),
            errors=dict(errors),
            error_rate=failed / (responses + failed) if responses + failed else 0.0,
            verified=sum(w.verified for w in used),
            wrong=sum(w.wrong for w in used),
            server=server,
            window_log=[
                {
                    "duration_s": w.duration,
                    "inferences_per_s": len(w.latencies) * cfg.batch_size / w.duration,
                    "p99_ms": None if math.isinf(w.p99()) else w.p99(),
                    "errors": sum(w.errors.values()),
                }
                for w in windows
            ],
            **rate_fields,
        )


async def _prepare(client: AsyncTritonClient, config: LoadTestConfig) -> tuple[Workload, str]:
    info = await client.model_info(config.model)  # ModelNotFoundError / ServerUnavailableError
    if info.max_batch_size < 1:
        raise LoadTestError(
            f"{config.model}: the model has no batch dimension (max_batch_size 0); "
            "the load test needs a batching model"
        )
    if config.batch_size > info.max_batch_size:
        raise BadInputError(
            f"{config.model}: batch size {config.batch_size} exceeds the model's "
            f"max_batch_size {info.max_batch_size}"
        )
    if info.latest_version is None:
        raise LoadTestError(f"{config.model}: the server reports no version for it")
    return build_workload(
        info,
        batch_size=config.batch_size,
        seed=config.seed,
        golden=config.golden,
        repository=config.repository,
    ), info.latest_version


async def _sweep(client: AsyncTritonClient, config: LoadTestConfig, progress: ProgressFn | None) -> _Sweep:
    workload, version = await _prepare(client, config)
    sweep = _Sweep(client, config, workload, version, progress)
    await sweep.run()
    return sweep


def _generator(config: LoadTestConfig, main: _Sweep, self_test: _Sweep | None) -> dict:
    """How the load was generated and, with a self-test, how much the generator can generate."""
    info: dict = {
        "engine": "asyncio, one event loop",
        "client": f"AsyncTritonClient ({config.protocol})",
        "retry_during_measurement": False,
        "capacity": None,
        "self_test": None,
    }
    if self_test is None:
        return info
    best = max(self_test.steps, key=lambda s: s.inferences_per_s, default=None)
    if best is not None and best.responses:
        # Client and server share this machine's cores here: a lower bound of the client's capacity.
        info["capacity"] = {
            "model": IDENTITY_MODEL,
            "inferences_per_s": best.inferences_per_s,
            "requests_per_s": best.requests_per_s,
            "at": best.label,
        }
        if main is not self_test:
            info["model_share_of_capacity"] = (
                max(s.inferences_per_s for s in main.steps) / best.inferences_per_s
            )
    totals = self_test.totals
    info["self_test"] = {
        "model": IDENTITY_MODEL,
        "verification": self_test.workload.describe(config.verify_fraction)["summary"],
        "verified": totals.verified,
        "wrong": totals.wrong,
        "errors": dict(totals.errors),
        "steps": [
            {
                "label": s.label,
                "inferences_per_s": s.inferences_per_s,
                "requests_per_s": s.requests_per_s,
                "stable": s.stable,
                "p99_ms": s.latency_ms.p99 if s.latency_ms else None,
            }
            for s in self_test.steps
        ],
    }
    return info


async def run_loadtest_async(
    config: LoadTestConfig,
    *,
    slo: Slo | None = None,
    self_test: bool = False,
    progress: ProgressFn | None = None,
    command: str = "",
) -> LoadTestReport:
    """Run the sweep (and with `self_test`, the same sweep against `identity`); never raises on SLO misses."""
    slo = slo or Slo()
    started_at, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    # Created inside the running loop: grpc.aio channels and aiohttp sessions bind to it.
    client = AsyncTritonClient(config.url, timeout=config.timeout)
    try:
        main = await _sweep(client, config, progress)
        calibration = main if config.model == IDENTITY_MODEL and config.mode == "concurrency" else None
        if self_test and calibration is None and not main.aborted:
            # Capacity is what a closed loop achieves: a rate sweep would only echo its offered rates.
            levels = config.levels if config.mode == "concurrency" else SELF_TEST_CONCURRENCY
            calibration_config = replace(
                config,
                model=IDENTITY_MODEL,
                golden=None,
                mode="concurrency",
                levels=levels,
                arrival="constant",
            )
            calibration = await _sweep(client, calibration_config, progress)
    finally:
        await client.close()
    steps, totals = main.steps, main.totals
    failures = [
        f"{s.label}: no successful response ({error_kinds(s.errors)})" for s in steps if not s.responses
    ]
    failures += [sweep.aborted for sweep in (main, calibration) if sweep is not None and sweep.aborted]
    if calibration is not None and calibration is not main and calibration.totals.wrong:
        failures.append(
            f"self-test: {calibration.totals.wrong} wrong answers from {IDENTITY_MODEL}: "
            "requests or responses are corrupted on the way"
        )
    return LoadTestReport(
        command=command,
        url=config.url,
        protocol=config.protocol,
        model=config.model,
        version=main.version,
        batch_size=config.batch_size,
        mode=config.mode,
        arrival=config.arrival if config.mode == "rate" else None,
        started_at=started_at,
        duration_s=time.perf_counter() - t0,
        settings={
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(config).items()
            if k not in ("url", "model", "mode", "arrival", "batch_size")
        },
        verification=main.workload.describe(config.verify_fraction),
        steps=steps,
        totals=totals,
        slo=evaluate(slo, steps, totals),
        generator=(generator := _generator(config, main, calibration)),
        generator_capacity=generator["capacity"],
        failures=failures,
    )


def run_loadtest(config: LoadTestConfig, **kwargs) -> LoadTestReport:
    """Synchronous wrapper of :func:`run_loadtest_async` (starts its own event loop)."""
    return asyncio.run(run_loadtest_async(config, **kwargs))
