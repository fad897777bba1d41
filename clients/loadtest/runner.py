"""The load generator's measurement: concurrency sweeps (closed loop) and request rates (open loop).

Modelled on Triton's perf_analyzer, with its known pitfalls avoided:
- **No coordinated omission.** In rate mode every request has a scheduled send time; its
  *response time* runs from that schedule, its *service time* from the moment it really left,
  and the difference (the schedule slip) is reported. When the server falls behind, requests wait
  for a free slot (`max_outstanding`) and the response times grow with the backlog, as a user's
  would. SLOs are judged on response time.
- **Stable, well-founded percentiles.** After a warm-up, measurement windows repeat until the
  last three agree on throughput and median latency (robust, unlike p99); the result merges the
  trailing windows that agree, and keeps measuring until the percentiles rest on `min_samples`
  answers (time allowing). Each step reports how many samples its percentiles rest on.
- **Every answer checked, off the timing path.** The loop hands each answer's bytes to a verifier
  process (see verifier.py); its counts are read when the step is over.
- **A cheap generator.** Prebuilt requests (transport.py), optionally through shared memory; the
  generator's and the verifier's CPU time per request are measured and reported.

    report = run_loadtest(LoadTestConfig(url="grpc://localhost:8001", model="resnet18"))
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from clients import BadInputError, ClientError, LoadTestError, ServerUnavailableError
from clients.client import AsyncTritonClient, parse_url, parse_urls
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
from clients.loadtest.transport import GrpcTransport, HttpTransport, Payloads, ReplicaSet
from clients.loadtest.verifier import InlineVerifier, ProcessVerifier
from clients.loadtest.workload import Workload, build_workload, image_model
from cnn_deploy_core import paths
from cnn_deploy_core.layout import IDENTITY_MODEL

TICK_S = 0.25  # progress refresh while a window runs
# A closed loop that meets an unreachable server pauses before its next request: spinning on
# instant errors would take the cores a restarting server needs, and measure nothing.
UNAVAILABLE_PAUSE_S = 0.05
HOPELESS_S = 10.0  # errors and no answer for this long (one window at least): the sweep stops
SELF_TEST_CONCURRENCY = (1, 4, 16)  # for --self-test after a rate sweep


@dataclass
class _Window:
    """What completed (or, in rate mode, was sent) between two boundaries."""

    start: float
    end: float = 0.0
    response: list[float] = field(default_factory=list)  # seconds: from scheduled (or actual) send
    service: list[float] = field(default_factory=list)  # seconds: from the actual send
    errors: Counter = field(default_factory=Counter)
    sent: int = 0
    lags: list[float] = field(default_factory=list)  # rate mode: actual send - scheduled send
    capped: int = 0  # rate mode: sends that waited for a free slot
    stats_start: dict[str, int] | None = None
    stats_end: dict[str, int] | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def throughput(self) -> float:
        return len(self.response) / self.duration if self.duration > 0 else 0.0

    def p50(self) -> float:
        return float(np.median(self.response)) if self.response else math.inf

    def p99(self) -> float:
        return float(np.percentile(self.response, 99)) * 1e3 if self.response else math.inf


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
StatsFn = Callable[[], Awaitable[dict[str, int] | None]]


def agreeing_suffix(windows: list[_Window], stability: float) -> int:
    """How many trailing windows agree (throughput and median latency within `stability` of their
    means): 0 when fewer than STABLE_WINDOWS do."""
    best = 0
    for k in range(STABLE_WINDOWS, len(windows) + 1):
        tail = windows[-k:]
        for values in ([w.throughput for w in tail], [w.p50() for w in tail]):
            mean = sum(values) / len(values)
            if not 0 < mean < math.inf or any(abs(v - mean) > stability * mean for v in values):
                return best
        best = k
    return best


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
        self.window = _Window(start=time.perf_counter())
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

    async def _one(self, item: int, slot: int, scheduled: float | None = None) -> str | None:
        """One request; the kind of error it ended in, if any."""
        sent = time.perf_counter()
        try:
            kind, data = await self.transport.send(item, slot)
        except ClientError as e:  # counted, not hidden: measurement runs without retries
            kind = type(e).__name__
            self.window.errors[kind] += 1
            self.totals.errors[kind] = self.totals.errors.get(kind, 0) + 1
            self.totals.requests += 1
            return kind
        done = time.perf_counter()
        window = self.window  # the window it completed in
        window.service.append(done - sent)
        window.response.append(done - (sent if scheduled is None else scheduled))
        self.totals.requests += 1
        if self.verifier.enabled and self.sample.random() < self.config.verify_fraction:
            self.verifier.submit(self.step_id, item, kind, data)
        return None

    async def _closed_loop(self, slot: int) -> None:
        while not self.stopping:
            self.window.sent += 1
            if await self._one(self._item(), slot) == ServerUnavailableError.__name__:
                await asyncio.sleep(UNAVAILABLE_PAUSE_S)

    async def _open_loop(self, rate: float, in_flight: set[asyncio.Task]) -> None:
        rng = random.Random(self.config.seed)
        free = asyncio.Queue()
        for slot in range(self.config.max_outstanding):
            free.put_nowait(slot)
        due = time.perf_counter()
        while not self.stopping:
            delay = due - time.perf_counter()
            await asyncio.sleep(max(delay, 0))  # behind schedule: still let answers be handled
            if free.empty():
                self.window.capped += 1
            slot = await free.get()
            if self.stopping:
                break
            self.window.lags.append(time.perf_counter() - due)
            self.window.sent += 1
            task = asyncio.create_task(self._one(self._item(), slot, scheduled=due))
            in_flight.add(task)
            task.add_done_callback(lambda t, s=slot: (in_flight.discard(t), free.put_nowait(s)))
            due += rng.expovariate(rate) if self.config.arrival == "poisson" else 1 / rate

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
        self.window = _Window(start=started)
        in_flight: set[asyncio.Task] = set()
        if cfg.mode == "concurrency":
            drivers = {asyncio.create_task(self._closed_loop(slot)) for slot in range(int(level))}
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
                    len(w.response) * cfg.batch_size / elapsed,
                    None if math.isinf(p99) else p99,
                )
            )

        windows: list[_Window] = []
        used = 0
        try:
            await self._wait(started + cfg.warmup_s, report, "warm-up", 0)
            self.window = _Window(start=time.perf_counter(), stats_start=await self.stats())
            while len(windows) < cfg.max_windows:
                current = self.window
                await self._wait(current.start + cfg.window_s, report, "measure", len(windows) + 1)
                # Windows are contiguous: the next one opens before the statistics call returns.
                current.end = time.perf_counter()
                self.window = _Window(start=current.end)
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
            if cfg.mode == "rate":  # the scheduler may sleep until its next arrival: stop it now
                for task in drivers:
                    task.cancel()
            await self._drain(drivers | in_flight)
        cpu = time.process_time() - cpu_started
        counts = self.verifier.take(number)
        result = self._result(
            level, label, windows, used, counts, cpu, self.totals.requests - requests_before
        )
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
                result.latency_ms.p99 if result.latency_ms else None,
                result,
            )
        )
        return result

    def _hopeless(self, window: _Window, label: str) -> bool:
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
        """Let requests in flight finish (bounded), so the next step starts from a quiet server."""
        tasks = {t for t in tasks if not t.done()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=min(self.config.timeout, 10.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _result(self, level, label, windows, used, counts, cpu_s, requests) -> StepResult:
        cfg = self.config
        stable = used >= STABLE_WINDOWS
        chosen = windows[-used:] if stable else windows[-STABLE_WINDOWS:]
        duration = sum(w.duration for w in chosen)
        response = [x for w in chosen for x in w.response]
        service = [x for w in chosen for x in w.service]
        errors = sum((w.errors for w in chosen), Counter())
        responses, failed = len(response), sum(errors.values())
        server = None
        if chosen and chosen[0].stats_start is not None and chosen[-1].stats_end is not None:
            server = ServerBreakdown.between(chosen[0].stats_start, chosen[-1].stats_end)
        self.totals.verified += counts.verified
        self.totals.wrong += counts.wrong
        for example in counts.examples:
            if len(self.totals.wrong_examples) < 5:
                self.totals.wrong_examples.append(example)
        rate_fields = {}
        if cfg.mode == "rate":
            lag = Latency.of([x for w in chosen for x in w.lags])
            capped = sum(w.capped for w in chosen)
            achieved = sum(w.sent for w in chosen) / duration if duration else 0.0
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
        verifier_cpu = max(0.0, counts.cpu_s - self.verifier_cpu)  # process-wide: this step's share
        self.verifier_cpu = max(counts.cpu_s, self.verifier_cpu)
        return StepResult(
            mode=cfg.mode,
            level=level,
            label=label,
            stable=stable,
            windows=len(chosen),
            windows_run=len(windows),
            duration_s=duration,
            requests=responses + failed,
            responses=responses,
            inferences=responses * cfg.batch_size,
            inferences_per_s=responses * cfg.batch_size / duration if duration else 0.0,
            requests_per_s=responses / duration if duration else 0.0,
            latency_ms=Latency.of(response),
            service_ms=Latency.of(service),
            samples=responses,
            errors=dict(errors),
            error_rate=failed / (responses + failed) if responses + failed else 0.0,
            verified=counts.verified,
            wrong=counts.wrong,
            server=server,
            generator_cpu_ms_per_request=cpu_s / requests * 1e3 if requests else None,
            verifier_cpu_ms_per_request=verifier_cpu / counts.verified * 1e3 if counts.verified else None,
            window_log=[
                {
                    "duration_s": w.duration,
                    "inferences_per_s": w.throughput * cfg.batch_size,
                    "p50_ms": None if math.isinf(w.p50()) else w.p50() * 1e3,
                    "p99_ms": None if math.isinf(w.p99()) else w.p99(),
                    "samples": len(w.response),
                    "errors": sum(w.errors.values()),
                }
                for w in windows
            ],
            **rate_fields,
        )


def _payloads(model: str, version: str, info, workload: Workload) -> Payloads:
    return Payloads(
        model=model,
        version=version,
        input_name=info.input_name,
        datatype=info.input_datatype,
        output_name=info.output_name,
        output_shape=info.output_dims,
        batches=workload.batches,
    )


def _admin_key(config: LoadTestConfig, endpoint) -> str | None:
    """--admin-key, else $TRITON_ADMIN_KEY, else the key of the local server at this endpoint."""
    import json
    import os

    if config.admin_key or os.environ.get("TRITON_ADMIN_KEY"):
        return config.admin_key or os.environ["TRITON_ADMIN_KEY"]
    try:
        state = json.loads((paths.state_dir() / "server.json").read_text())
    except (OSError, ValueError):
        return None
    replicas = [state, *state.get("replicas", [])]
    mine = {parse_url(r.get(key, "grpc://x:1")) for r in replicas for key in ("grpc_url", "http_url")}
    return state.get("admin_key") if endpoint in mine else None


def make_transport(config: LoadTestConfig, payloads: Payloads, slots: int):
    """One transport, or with several URLs a ReplicaSet of one per replica."""
    endpoints = parse_urls(config.url)
    if len(endpoints) == 1:
        return _transport(config, endpoints[0], payloads, slots)
    transports = [_transport(config, e, payloads, slots) for e in endpoints]
    return ReplicaSet(transports, [str(e) for e in endpoints], failover=config.failover)


def _transport(config: LoadTestConfig, endpoint, payloads: Payloads, slots: int):
    if endpoint.protocol == "grpc":
        return GrpcTransport(
            endpoint.address,
            payloads,
            slots=slots,
            timeout=config.timeout,
            shared_memory=config.shared_memory == "system",
            admin_key=_admin_key(config, endpoint) if config.shared_memory == "system" else None,
            ssl=endpoint.ssl,
        )
    scheme = "https" if endpoint.ssl else "http"
    return HttpTransport(f"{scheme}://{endpoint.address}", payloads, slots=slots, timeout=config.timeout)


async def _prepare(client: AsyncTritonClient, config: LoadTestConfig) -> tuple[Workload, str, Payloads]:
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
    tensor = None
    if info.input_datatype == "BYTES":  # an image ensemble: the tensor model's golden set applies
        tensor = await client.model_info(config.model.removesuffix("_image"))
    workload = build_workload(
        info,
        batch_size=config.batch_size,
        seed=config.seed,
        golden=config.golden,
        repository=config.repository,
        tensor=tensor,
    )
    # An ensemble has one version and follows its model's default version: ask for the default.
    version = "" if tensor is not None else info.latest_version
    return workload, info.latest_version, _payloads(config.model, version, info, workload)


async def _sweep(
    client: AsyncTritonClient,
    config: LoadTestConfig,
    progress: ProgressFn | None,
    in_process: bool = False,
    on_open: Callable | None = None,
) -> _Sweep:
    workload, version, payloads = await _prepare(client, config)
    slots = int(max(config.levels)) if config.mode == "concurrency" else config.max_outstanding
    transport = make_transport(config, payloads, slots)
    verifier = (InlineVerifier if in_process else ProcessVerifier)(workload, payloads.output_shape)

    # Every replica's statistics, summed: a round-robin client would ask a different replica at
    # each window boundary, and differences between two servers' counters mean nothing.
    endpoints = parse_urls(config.url)
    per_replica = (
        [client]
        if len(endpoints) == 1
        else [AsyncTritonClient(str(e), timeout=config.timeout, retries=0) for e in endpoints]
    )

    async def stats() -> dict[str, int] | None:
        try:
            results = await asyncio.gather(*(c.statistics(config.model, version) for c in per_replica))
        except ClientError:
            return None  # a replica is down: no breakdown; the client-side numbers still stand
        flats = [flatten_statistics(r) for r in results]
        return {k: sum(f[k] for f in flats) for k in flats[0]}

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
        for c in per_replica:
            if c is not client:
                await c.close()
    return sweep


def _generator(config: LoadTestConfig, main: _Sweep, self_test: _Sweep | None) -> dict:
    """How the load was generated and, with a self-test, how much the generator can generate."""
    steps = [s for s in main.steps if s.generator_cpu_ms_per_request is not None]
    info: dict = {
        "engine": "asyncio, one event loop; answers checked in a separate verifier process",
        "transport": main.transport.description,
        "shared_memory": config.shared_memory,
        "retry_during_measurement": False,
        "request_bytes": float(np.mean(main.request_bytes)) if main.request_bytes else None,
        "cpu_ms_per_request": float(np.mean([s.generator_cpu_ms_per_request for s in steps]))
        if steps
        else None,
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
    on_open: Callable | None = None,
) -> LoadTestReport:
    """Run the sweep (and with `self_test`, the same sweep against `identity`); never raises on SLO misses."""
    slo = slo or Slo()
    if config.input == "image":
        config = replace(config, model=image_model(config.model))
    started_at, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    # Created inside the running loop: grpc.aio channels and aiohttp sessions bind to it.
    client = AsyncTritonClient(config.url, timeout=config.timeout)
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
            if k not in ("url", "model", "mode", "arrival", "batch_size", "admin_key")
        },
        verification=main.workload.describe(config.verify_fraction),
        steps=steps,
        totals=totals,
        slo=evaluate(slo, steps, totals),
        generator=(generator := _generator(config, main, calibration)),
        generator_capacity=generator["capacity"],
        failures=failures,
        replicas=[f.to_dict() for f in getattr(main.transport, "figures", [])],
    )


def run_loadtest(config: LoadTestConfig, **kwargs) -> LoadTestReport:
    """Synchronous wrapper of :func:`run_loadtest_async` (starts its own event loop)."""
    return asyncio.run(run_loadtest_async(config, **kwargs))
