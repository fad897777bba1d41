"""The load generator's measurement: concurrency sweeps (closed loop) and request rates (open loop).

Modelled on Triton's perf_analyzer, with its known pitfalls avoided:
- **No coordinated omission.** In rate mode every request has a scheduled send time; its
  *response time* runs from that schedule, its *service time* from the moment it really left,
  and the difference (the schedule slip) is reported. When the server falls behind, requests wait
  for a free slot (`max_outstanding`) and the response times grow with the backlog, as a user's
  would. SLOs are judged on response time, over every request after the warm-up, failures at their
  time to failure; arrivals due within the measured time and never sent are counted as dropped.
- **Stable, well-founded percentiles.** After a warm-up, measurement windows repeat until the
  last three agree on throughput and median latency (robust, unlike p99); the result merges the
  trailing windows that agree, and keeps measuring until the percentiles rest on `min_samples`
  answers (time allowing). Each step reports how many samples its percentiles rest on.
- **Every answer checked, off the timing path.** The loop hands each answer's bytes to a verifier
  process (see verifier.py); its counts are read when the step is over. A model whose answers
  cannot be checked is an error unless `verify=False` (`--no-verify`) says otherwise.
- **Nothing lost.** Every request ends as an answer or an error classified by clients.errors,
  whatever was raised (windows and stability: measure.py; setup: prepare.py). Whether the run was
  sound is judged by cnn_deploy_core.judge over the finished report.
- **A cheap generator.** Prebuilt requests (transport.py), optionally through shared memory; the
  generator's and the verifier's CPU time per request are measured and reported.

    report = run_loadtest(LoadTestConfig(url="grpc://localhost:8001", model="resnet18"))
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from clients import LoadTestError, RequestTimeoutError, ServerOverloadedError, ServerUnavailableError
from clients.aio import AsyncTritonClient
from clients.errors import classify
from clients.keys import api_headers
from clients.loadtest.capacity import describe_generator
from clients.loadtest.config import LoadTestConfig
from clients.loadtest.measure import (
    Schedule,
    StepContext,
    StepLog,
    Window,
    _Window,
    agreeing_suffix,
    step_result,
)
from clients.loadtest.prepare import StatsFn, make_transport, prepare, statistics_reader
from clients.loadtest.verifier import InlineVerifier, ProcessVerifier
from clients.loadtest.workload import Workload, image_model
from cnn_deploy_core.judge import Objectives, error_kinds, problems, slo_result
from cnn_deploy_core.layout import IDENTITY_MODEL
from cnn_deploy_core.loadtest_report import LoadTestReport, ReplicaResult, SloResult, StepResult, Totals
from cnn_deploy_core.machine import provenance
from cnn_deploy_core.secrets import redact_command, redact_url

__all__ = ["Progress", "ProgressFn", "_Window", "agreeing_suffix", "run_loadtest", "run_loadtest_async"]

TICK_S = 0.25  # progress refresh while a window runs
# A closed loop that meets an unreachable server, or one whose queue policy sheds its request at
# once, pauses before its next request: spinning on instant errors would take the cores a
# restarting or overloaded server needs, and measure nothing. The failures are counted all the same.
UNAVAILABLE_PAUSE_S = 0.05
PAUSE_AFTER = frozenset({ServerUnavailableError.__name__, ServerOverloadedError.__name__})
HOPELESS_S = 10.0  # errors and no answer for this long (one window at least): the sweep stops
SELF_TEST_CONCURRENCY = (1, 4, 16)  # for --self-test after a rate sweep
DRAIN_S = 10.0  # requests still in flight at a step's end get this long (at most their timeout)


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
    """Runs the steps of one sweep against one model through one transport."""

    def __init__(
        self,
        transport,
        verifier,
        config: LoadTestConfig,
        workload: Workload,
        stats: StatsFn,
        progress: ProgressFn | None,
        *,
        version: str,
        request_bytes: list[int],
    ):
        self.transport, self.verifier, self.config, self.workload = transport, verifier, config, workload
        self.stats, self.progress = stats, progress or (lambda _: None)
        self.version, self.request_bytes = version, request_bytes
        self.verifier_cpu = 0.0
        self.totals = Totals()
        self.window = Window(start=time.perf_counter())
        self.log: StepLog | None = None  # None during warm-up: what is judged starts after it
        self.next_item = 0
        self.sample = random.Random(config.seed)
        self.stopping = False
        self.aborted: str | None = None
        self.errors_only_s = 0.0
        self.steps: list[StepResult] = []
        self.step_id = 0

    async def run(self) -> None:
        for number, level in enumerate(self.config.levels, 1):
            self.steps.append(await self._step(number, level))
            if self.aborted:
                break

    def _item(self) -> int:
        item, self.next_item = self.next_item, self.next_item + 1
        return item

    def _failed(self, kind: str, seconds: float) -> str:
        self.window.errors[kind] += 1
        self.totals.errors[kind] = self.totals.errors.get(kind, 0) + 1
        self.totals.requests += 1
        if self.log is not None:
            self.log.failure(kind, seconds)
        return kind

    async def _one(self, item: int, slot: int, scheduled: float | None = None) -> str | None:
        """One request; the kind of error it ended in, if any. Every request ends as an answer or a
        classified error, whatever was raised: in rate mode nobody awaits this task."""
        sent = time.perf_counter()
        start = sent if scheduled is None else scheduled
        try:
            kind, data = await self.transport.send(item, slot)
        except asyncio.CancelledError:  # still in flight when the step's drain gave up on it
            self._failed(RequestTimeoutError.__name__, time.perf_counter() - start)
            raise
        except Exception as e:  # counted, not hidden: measurement runs without retries
            error = classify(e, self.config.url, self.config.model)
            return self._failed(type(error).__name__, time.perf_counter() - start)
        done = time.perf_counter()
        if self.verifier.enabled and self.sample.random() < self.config.verify_fraction:
            try:
                self.verifier.submit(self.step_id, item, kind, data)
            except Exception as e:  # an answer that cannot be checked is not a good answer
                error = LoadTestError(f"the verifier did not take an answer: {type(e).__name__}: {e}")
                return self._failed(type(error).__name__, done - start)
        window = self.window  # the window it completed in
        window.service.append(done - sent)
        window.response.append(done - start)
        self.totals.requests += 1
        self.totals.responses += 1
        if self.log is not None:
            self.log.answer(done - start)
        return None

    async def _closed_loop(self, slot: int) -> None:
        while not self.stopping:
            self.window.sent += 1
            if await self._one(self._item(), slot) in PAUSE_AFTER:
                await asyncio.sleep(UNAVAILABLE_PAUSE_S)

    async def _open_loop(self, schedule: Schedule, in_flight: set[asyncio.Task]) -> None:
        free = asyncio.Queue()
        for slot in range(self.config.max_outstanding):
            free.put_nowait(slot)
        while not self.stopping:
            delay = schedule.due - time.perf_counter()
            await asyncio.sleep(max(delay, 0))  # behind schedule: still let answers be handled
            if free.empty():
                self.window.capped += 1
            slot = await free.get()
            if self.stopping:
                free.put_nowait(slot)
                break
            self.window.lags.append(time.perf_counter() - schedule.due)
            self.window.sent += 1
            task = asyncio.create_task(self._one(self._item(), slot, scheduled=schedule.due))
            in_flight.add(task)
            task.add_done_callback(lambda t, s=slot: (in_flight.discard(t), free.put_nowait(s)))
            schedule.advance()

    @staticmethod
    async def _wait(until: float, report: Callable[[str, int], None], phase: str, window: int) -> None:
        while (left := until - time.perf_counter()) > 0:
            await asyncio.sleep(min(TICK_S, left))
            report(phase, window)

    async def _step(self, number: int, level: float) -> StepResult:
        cfg = self.config
        label = cfg.label(level)
        self.step_id = number
        started = time.perf_counter()
        cpu_started = time.process_time()
        requests_before = self.totals.requests
        self.stopping = False
        self.window = Window(start=started)
        self.log = None
        in_flight: set[asyncio.Task] = set()
        schedule = None
        if cfg.mode == "concurrency":
            drivers = {asyncio.create_task(self._closed_loop(slot)) for slot in range(int(level))}
        else:
            schedule = Schedule(level, cfg.arrival, cfg.seed)
            drivers = {asyncio.create_task(self._open_loop(schedule, in_flight))}

        def report(phase: str, window: int) -> None:
            w = self.window
            p99 = w.p99()
            rate = len(w.response) * cfg.batch_size / max(time.perf_counter() - w.start, 1e-9)
            self._report(number, label, phase, window, rate, None if math.isinf(p99) else p99)

        windows: list[Window] = []
        used = 0
        log = StepLog()
        try:
            await self._wait(started + cfg.warmup_s, report, "warm-up", 0)
            self.log = log
            self.window = Window(start=time.perf_counter(), stats_start=await self.stats())
            while len(windows) < cfg.max_windows:
                current = self.window
                await self._wait(current.start + cfg.window_s, report, "measure", len(windows) + 1)
                # Windows are contiguous: the next one opens before the statistics call returns.
                current.end = time.perf_counter()
                self.window = Window(start=current.end)
                current.stats_end = self.window.stats_start = await self.stats()
                windows.append(current)
                self._check_drivers(drivers)
                used = agreeing_suffix(windows, cfg.stability)
                enough = sum(len(w.response) for w in windows[-used:]) >= cfg.min_samples if used else False
                if (used and enough) or self._hopeless(current, label):
                    break
                if time.perf_counter() + cfg.window_s > started + cfg.max_step_s:
                    break
        finally:
            self.stopping = True
            if schedule is not None:  # the scheduler may sleep until its next arrival: stop it now
                for task in drivers:
                    task.cancel()
                # Dropped: due within the measured time and never sent. Not those that fell due
                # after the last window closed, while this step was deciding to stop: the event
                # loop was busy with that, not behind.
                measured_until = windows[-1].end if windows else time.perf_counter()
                log.dropped = schedule.unsent_until(measured_until)
                self.totals.dropped += log.dropped
            await self._drain(drivers | in_flight)
            self.log = None
        cpu = time.process_time() - cpu_started
        counts = self.verifier.take(number)
        requests = self.totals.requests - requests_before
        result = self._result(level, label, windows, used, counts, cpu, requests, log)
        p99 = result.latency_ms.p99 if result.latency_ms else None
        self._report(number, label, "done", len(windows), result.inferences_per_s, p99, result)
        return result

    def _report(self, number, label, phase, window, rate, p99, result=None) -> None:
        c = self.config
        steps, windows = len(c.levels), c.max_windows
        self.progress(Progress(c.model, number, steps, label, phase, window, windows, rate, p99, result))

    def _hopeless(self, window: Window, label: str) -> bool:
        """Nothing but errors for HOPELESS_S (one window at least) ends the sweep: the next load level
        would only repeat them (a server shutting down answers "not ready", then nothing at all).
        A shorter gap, such as a server restarting, is counted and ridden out."""
        if window.response or not window.errors:
            self.errors_only_s = 0.0
            return False
        self.errors_only_s += window.duration
        if self.errors_only_s < HOPELESS_S:
            return False
        self.aborted = (
            f"{label}: {self.errors_only_s:.0f} s of errors and no answer ({error_kinds(window.errors)}); "
            "the sweep stopped there"
        )
        return True

    @staticmethod
    def _check_drivers(drivers: set[asyncio.Task]) -> None:
        for task in drivers:  # a crashed driver is a bug in the generator: surface it
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()

    async def _drain(self, tasks: set[asyncio.Task]) -> None:
        """Let requests in flight finish (bounded), so the next step starts from a quiet server; those
        that do not are counted as timed out (see _one)."""
        tasks = {t for t in tasks if not t.done()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=min(self.config.timeout, DRAIN_S))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _result(self, level, label, windows, used, counts, cpu_s, requests, log: StepLog) -> StepResult:
        self.totals.verified += counts.verified
        self.totals.wrong += counts.wrong
        for example in counts.examples:
            if len(self.totals.wrong_examples) < 5:
                self.totals.wrong_examples.append(example)
        verifier_cpu = max(0.0, counts.cpu_s - self.verifier_cpu)  # process-wide: this step's share
        self.verifier_cpu = max(counts.cpu_s, self.verifier_cpu)
        context = StepContext(
            mode=self.config.mode,
            level=level,
            label=label,
            model=self.config.model,
            batch_size=self.config.batch_size,
            verified=counts.verified,
            wrong=counts.wrong,
            generator_cpu_ms_per_request=cpu_s / requests * 1e3 if requests else None,
            verifier_cpu_ms_per_request=verifier_cpu / counts.verified * 1e3 if counts.verified else None,
        )
        return step_result(context, windows, used, log)


async def _sweep(
    client: AsyncTritonClient,
    config: LoadTestConfig,
    progress: ProgressFn | None,
    in_process: bool = False,
    on_open: Callable | None = None,
) -> _Sweep:
    workload, version, payloads, info = await prepare(client, config)
    slots = int(max(config.levels)) if config.mode == "concurrency" else config.max_outstanding
    transport = make_transport(config, payloads, slots)
    verifier = (InlineVerifier if in_process else ProcessVerifier)(workload, payloads.output_shape)
    stats, extra_clients = statistics_reader(client, config, payloads.version, info.composing)
    sizes = [len(payloads.raw(i)) for i in range(len(payloads.batches))]
    sweep = _Sweep(
        transport, verifier, config, workload, stats, progress, version=version, request_bytes=sizes
    )
    try:
        await transport.open()
        if on_open is not None:
            on_open(transport)  # e.g. a failure drill that watches the requests in flight
        await sweep.run()
    finally:
        await transport.close()
        verifier.close()
        for c in extra_clients:
            await c.close()
    return sweep


async def run_loadtest_async(
    config: LoadTestConfig,
    *,
    objectives: Objectives | None = None,
    self_test: bool = False,
    progress: ProgressFn | None = None,
    command: str = "",
    on_open: Callable | None = None,
) -> LoadTestReport:
    """Run the sweep (and with `self_test`, the same sweep against `identity`); the report records the
    judge's verdict under `objectives` (default: the strictest). Never raises on a failed run."""
    objectives = objectives or Objectives()
    if config.input == "image":
        config = replace(config, model=image_model(config.model))
    started_at, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    # Created inside the running loop: grpc.aio channels and aiohttp sessions bind to it.
    client = AsyncTritonClient(
        config.url,
        timeout=config.timeout,
        tls=config.tls,
        headers=api_headers(config.api_key, config.protocol),
    )
    calibration = None
    try:
        main = await _sweep(client, config, progress, on_open=on_open)
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
                input="tensor",
            )
            calibration = await _sweep(client, calibration_config, progress)
    finally:
        await client.close()
    steps, totals = main.steps, main.totals
    verification = main.workload.describe(config.verify_fraction)
    failures = [sweep.aborted for sweep in (main, calibration) if sweep is not None and sweep.aborted]
    if calibration is not None and calibration is not main and calibration.totals.wrong:
        failures.append(
            f"self-test: {calibration.totals.wrong} wrong answers from {IDENTITY_MODEL}: "
            "requests or responses are corrupted on the way"
        )
    report = LoadTestReport(
        command=redact_command(command),
        url=redact_url(config.url),
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
            if k not in ("url", "model", "mode", "arrival", "batch_size", "admin_key", "api_key", "tls")
        },
        verification=verification,
        steps=steps,
        totals=totals,
        slo=SloResult(objectives.to_dict(), passed=False, violations=[]),  # judged below
        generator=(generator := describe_generator(config, main, calibration)),
        generator_capacity=generator["capacity"],
        failures=failures,
        replicas=[ReplicaResult(**f.to_dict()) for f in getattr(main.transport, "figures", [])],
        provenance=provenance(redact_command(command)),
    )
    report.slo = slo_result(problems(report, objectives), objectives)
    return report


def run_loadtest(config: LoadTestConfig, **kwargs) -> LoadTestReport:
    """Synchronous wrapper of :func:`run_loadtest_async` (starts its own event loop)."""
    return asyncio.run(run_loadtest_async(config, **kwargs))
