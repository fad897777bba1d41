"""The measurement's arithmetic, apart from running: windows, their stability, and a step's figures.

A step is a warm-up, then contiguous windows until the last STABLE_WINDOWS agree (perf_analyzer's
rule); its throughput and percentiles come from the trailing windows that agree. What is *judged*
(errors, the SLO's p99) covers every request that ended after the warm-up (`StepLog`): windows
that were discarded and the requests that finished while the step drained included, so no failure
can hide outside the windows that were kept. Pure functions of what was recorded: tested without
a server.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from clients.loadtest.config import STABLE_WINDOWS
from cnn_deploy_core.loadtest_report import Latency, ServerBreakdown, StepResult

Stats = dict[str, dict[str, int]]  # model -> Triton's flattened statistics (flatten_statistics)


@dataclass
class Window:
    """What completed (or, in rate mode, was sent) between two boundaries."""

    start: float
    end: float = 0.0
    response: list[float] = field(default_factory=list)  # seconds: from scheduled (or actual) send
    service: list[float] = field(default_factory=list)  # seconds: from the actual send
    errors: Counter = field(default_factory=Counter)
    sent: int = 0
    lags: list[float] = field(default_factory=list)  # rate mode: actual send - scheduled send
    capped: int = 0  # rate mode: sends that waited for a free slot
    stats_start: Stats | None = None
    stats_end: Stats | None = None

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


_Window = Window  # the older name, kept for callers that import it


@dataclass
class StepLog:
    """Every request that ended after the warm-up: answers and failures, each with its response time
    (a failure's is its time to failure), and the arrivals that were never sent."""

    response: list[float] = field(default_factory=list)  # answers, seconds
    failed: list[float] = field(default_factory=list)  # failures, seconds until they failed
    errors: Counter = field(default_factory=Counter)
    dropped: int = 0

    def answer(self, seconds: float) -> None:
        self.response.append(seconds)

    def failure(self, kind: str, seconds: float) -> None:
        self.errors[kind] += 1
        self.failed.append(seconds)

    @property
    def requests(self) -> int:
        return len(self.response) + len(self.failed)


class Schedule:
    """Rate mode's arrival times (constant or Poisson); what was due and never sent is dropped."""

    def __init__(self, rate: float, arrival: str, seed: int):
        self.rate, self.poisson, self.rng = rate, arrival == "poisson", random.Random(seed)
        self.due = time.perf_counter()

    def advance(self) -> None:
        self.due += self.rng.expovariate(self.rate) if self.poisson else 1 / self.rate

    def unsent_until(self, end: float) -> int:
        """Arrivals due by `end` that were never sent (the next one included): k6's dropped_iterations."""
        count = 0
        while self.due <= end:
            count += 1
            self.advance()
        return count


def agreeing_suffix(windows: list[Window], stability: float) -> int:
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


def kept_up(capped: int, lag: Latency | None, rate: float) -> bool:
    """Sends went out on schedule: none waited for a free slot, and they slipped by less than one
    mean arrival interval (5 ms at least: a busy shared machine delays timers by that much without
    changing the offered load)."""
    return capped == 0 and lag is not None and lag.p99 <= max(5.0, 1e3 / rate)


def breakdowns(chosen: list[Window], model: str) -> tuple[ServerBreakdown | None, dict[str, ServerBreakdown]]:
    """Triton's view of the chosen windows: the model's own, and each composing model's (ensemble)."""
    if not chosen or chosen[0].stats_start is None or chosen[-1].stats_end is None:
        return None, {}
    start, end = chosen[0].stats_start, chosen[-1].stats_end
    per_model = {m: ServerBreakdown.between(start[m], end[m]) for m in end if m in start}
    return per_model.pop(model, None), per_model


@dataclass(frozen=True)
class StepContext:
    """What a step's result needs besides its windows."""

    mode: str
    level: float
    label: str
    model: str
    batch_size: int
    verified: int
    wrong: int
    generator_cpu_ms_per_request: float | None
    verifier_cpu_ms_per_request: float | None


def step_result(ctx: StepContext, windows: list[Window], used: int, log: StepLog) -> StepResult:
    """A step's figures: throughput and percentiles from the agreeing windows (the last
    STABLE_WINDOWS when none agree), errors and the judged p99 from every request after warm-up."""
    stable = used >= STABLE_WINDOWS
    chosen = windows[-used:] if stable else windows[-STABLE_WINDOWS:]
    duration = sum(w.duration for w in chosen)
    response = [x for w in chosen for x in w.response]
    service = [x for w in chosen for x in w.service]
    errors = sum((w.errors for w in chosen), Counter())
    responses, failed = len(response), sum(errors.values())
    server, composing = breakdowns(chosen, ctx.model)
    rate_fields = {}
    if ctx.mode == "rate":
        lag = Latency.of([x for w in chosen for x in w.lags])
        capped = sum(w.capped for w in chosen)
        rate_fields = dict(
            offered_rate=ctx.level,
            achieved_rate=sum(w.sent for w in chosen) / duration if duration else 0.0,
            capped=capped,
            kept_up=kept_up(capped, lag, ctx.level),
            schedule_lag_ms=None if lag is None else {"p50": lag.p50, "p99": lag.p99, "max": lag.max},
        )
    b = ctx.batch_size
    return StepResult(
        mode=ctx.mode,
        level=ctx.level,
        label=ctx.label,
        stable=stable,
        windows=len(chosen),
        windows_run=len(windows),
        duration_s=duration,
        requests=responses + failed,
        responses=responses,
        inferences=responses * b,
        inferences_per_s=responses * b / duration if duration else 0.0,
        requests_per_s=responses / duration if duration else 0.0,
        latency_ms=Latency.of(response),
        service_ms=Latency.of(service),
        samples=responses,
        errors=dict(errors),
        error_rate=failed / (responses + failed) if responses + failed else 0.0,
        verified=ctx.verified,
        wrong=ctx.wrong,
        server=server,
        generator_cpu_ms_per_request=ctx.generator_cpu_ms_per_request,
        verifier_cpu_ms_per_request=ctx.verifier_cpu_ms_per_request,
        window_log=[
            {
                "duration_s": w.duration,
                "inferences_per_s": w.throughput * b,
                "p50_ms": None if math.isinf(w.p50()) else w.p50() * 1e3,
                "p99_ms": None if math.isinf(w.p99()) else w.p99(),
                "samples": len(w.response),
                "errors": sum(w.errors.values()),
            }
            for w in windows
        ],
        all_requests=log.requests,
        all_responses=len(log.response),
        all_errors=dict(log.errors),
        all_error_rate=len(log.failed) / log.requests if log.requests else 0.0,
        latency_all_ms=Latency.of(log.response + log.failed),
        dropped=log.dropped,
        composing=composing,
        **rate_fields,
    )
