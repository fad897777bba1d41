"""The load generator's measurement logic, with a fake in-process server: windows, stability,
merging, minimum samples, schedule slip and response time under backlog, aborting on a dead server,
and every answer checked. No Triton here: the statistics are tested on their own."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clients import ServerOverloadedError, ServerUnavailableError
from clients.loadtest.config import LoadTestConfig
from clients.loadtest.measure import Window as _Window
from clients.loadtest.measure import agreeing_suffix
from clients.loadtest.runner import _Sweep
from clients.loadtest.transport import RAW
from clients.loadtest.verifier import InlineVerifier, ProcessVerifier
from clients.loadtest.workload import Workload

ROWS = 4
CLASSES = 10
EXPECTED = np.random.default_rng(0).standard_normal((ROWS, CLASSES)).astype(np.float32)


class FakeServer:
    """Answers after `service_s`; with `workers`, at most that many at once (a queue forms behind).
    `wrong_every`: every n-th answer is corrupted; `dead`: nothing but unavailable errors;
    `shed_all_but`: only every n-th request is served, the others rejected at once as overload (a
    queue policy's), as a server too slow for the load answers."""

    description = "fake"

    def __init__(
        self,
        service_s: float,
        *,
        workers: int | None = None,
        wrong_every: int = 0,
        dead: bool = False,
        shed_all_but: int = 0,
    ):
        self.service_s, self.wrong_every, self.dead = service_s, wrong_every, dead
        self.shed_all_but = shed_all_but
        self.slots = asyncio.Semaphore(workers) if workers else None
        self.answered = 0

    async def send(self, item: int, slot: int):
        if self.dead:
            await asyncio.sleep(0.001)
            raise ServerUnavailableError("Triton server at fake is unreachable")
        if self.shed_all_but and item % self.shed_all_but:
            await asyncio.sleep(0)  # answered at once: the queue policy refused it
            raise ServerOverloadedError("fake: the server at fake is overloaded: Request timeout expired")
        if self.slots is not None:
            async with self.slots:
                await asyncio.sleep(self.service_s)
        else:
            await asyncio.sleep(self.service_s)
        self.answered += 1
        out = EXPECTED[item % ROWS].copy()
        if self.wrong_every and item % self.wrong_every == 0:
            out = out[::-1].copy()
        return RAW, out.tobytes()


def _workload() -> Workload:
    inputs = np.arange(ROWS * 2, dtype=np.float32).reshape(ROWS, 2)
    return Workload(inputs, EXPECTED, batch_size=1, check="golden", atol=1e-5, rtol=1e-4)


def _run(server: FakeServer, *, verifier=None, **config) -> _Sweep:
    settings = {"warmup_s": 0.2, "window_s": 0.4, "max_windows": 8, "max_step_s": 6.0, "min_samples": 50}
    cfg = LoadTestConfig(url="grpc://fake:1", model="fake", **{**settings, **config})
    workload = _workload()
    verifier = verifier or InlineVerifier(workload, (CLASSES,))

    async def stats():
        return None

    sweep = _Sweep(server, verifier, cfg, workload, stats, None, version="1", request_bytes=[8])

    async def main():
        await sweep.run()

    asyncio.run(main())
    verifier.close()
    return sweep


def test_closed_loop_measures_service_time_and_throughput_over_stable_windows():
    sweep = _run(FakeServer(0.01), levels=(2,))
    (step,) = sweep.steps
    assert step.stable and step.windows >= 3 and step.samples >= 50
    assert step.latency_ms.p50 == pytest.approx(10, abs=4)
    assert step.inferences_per_s == pytest.approx(2 / 0.0105, rel=0.25)
    assert step.latency_ms == step.service_ms  # closed loop: no schedule, the same clock
    assert step.generator_cpu_ms_per_request is not None and step.generator_cpu_ms_per_request > 0


def test_percentiles_rest_on_at_least_min_samples_when_time_allows():
    sweep = _run(FakeServer(0.02), levels=(1,), min_samples=120, max_windows=10)
    (step,) = sweep.steps
    # ~20 answers per window: three agreeing windows are not enough, more windows are merged.
    assert step.samples >= 120 and step.windows > 3
    assert step.samples == sum(w["samples"] for w in step.window_log[-step.windows :])


def test_agreeing_suffix_merges_the_trailing_windows_that_agree():
    def window(rate: float, p50_s: float) -> _Window:
        w = _Window(start=0.0, end=1.0)
        w.response = [p50_s] * int(rate)
        return w

    settled = [window(50, 0.1), window(100, 0.02), window(101, 0.02), window(99, 0.021), window(100, 0.02)]
    assert agreeing_suffix(settled, 0.1) == 4  # the warm first window is left out
    assert agreeing_suffix(settled[:3], 0.1) == 0  # only two agree
    assert agreeing_suffix([window(100, 0.02), window(100, 0.05), window(100, 0.02)], 0.1) == 0


def test_rate_above_capacity_grows_response_time_with_the_backlog():
    """100 answers/s of capacity, 300 requests/s offered, 4 in flight at most: sends slip, and the
    response time (from the schedule) grows window after window while the service time does not."""
    sweep = _run(
        FakeServer(0.01, workers=1),
        mode="rate",
        levels=(300,),
        max_outstanding=4,
        max_windows=5,
        min_samples=10**6,  # never enough: every window runs
    )
    (step,) = sweep.steps
    p50s = [w["p50_ms"] for w in step.window_log]
    assert p50s == sorted(p50s) and p50s[-1] > 2 * p50s[0]
    assert step.latency_ms.p50 > 5 * step.service_ms.p50
    assert step.service_ms.p50 == pytest.approx(40, rel=0.5)  # 4 queued at a 10 ms server
    assert step.capped > 0 and step.kept_up is False
    assert step.schedule_lag_ms["p99"] > 100


def test_rate_within_capacity_keeps_response_time_at_the_service_time():
    sweep = _run(FakeServer(0.005), mode="rate", levels=(50,), max_outstanding=8)
    (step,) = sweep.steps
    assert step.kept_up and step.capped == 0
    assert step.latency_ms.p50 == pytest.approx(step.service_ms.p50, abs=3)
    assert step.achieved_rate == pytest.approx(50, rel=0.2)


def test_a_dead_server_aborts_the_sweep_with_a_clear_reason():
    # Windows of 0.4 s: a gap shorter than HOPELESS_S (a restart) is ridden out, a longer one ends it.
    sweep = _run(FakeServer(0.01, dead=True), levels=(1, 2), max_windows=40, max_step_s=20)
    assert len(sweep.steps) == 1
    assert "s of errors and no answer (ServerUnavailableError" in sweep.aborted
    assert 10 <= sum(w["duration_s"] for w in sweep.steps[0].window_log) < 12
    assert sweep.steps[0].responses == 0 and sweep.steps[0].errors["ServerUnavailableError"] > 0


def test_a_closed_loop_pauses_after_an_instant_overload_rejection_and_counts_it():
    """Rejected at once by a queue policy: each loop pauses before its next request rather than
    spinning on rejections (thousands a second), and every rejection is a counted failure."""
    from clients.loadtest.runner import UNAVAILABLE_PAUSE_S

    server = FakeServer(0.01, shed_all_but=5)
    sweep = _run(server, levels=(2,), max_windows=3, max_step_s=2, min_samples=1)
    (step,) = sweep.steps
    totals = sweep.totals
    assert server.answered > 0 and totals.errors["ServerOverloadedError"] > 0
    assert totals.requests == totals.responses + totals.errors["ServerOverloadedError"]
    elapsed = 0.2 + step.duration_s  # warm-up and the measured windows
    # 2 loops, 4 of 5 requests followed by a pause: at most ~2 / (0.8 x pause) requests a second
    assert totals.requests / elapsed < 2 / (0.8 * UNAVAILABLE_PAUSE_S) * 1.5, totals


@pytest.mark.parametrize("verifier_kind", ["inline", "process"])
def test_every_answer_is_checked_and_wrong_ones_are_counted(verifier_kind):
    server = FakeServer(0.005, wrong_every=4)
    verifier = (InlineVerifier if verifier_kind == "inline" else ProcessVerifier)(_workload(), (CLASSES,))
    sweep = _run(server, levels=(2,), verifier=verifier)
    (step,) = sweep.steps
    assert step.verified == server.answered  # warm-up included: every answer
    assert step.wrong == pytest.approx(server.answered / 4, abs=2)
    assert sweep.totals.wrong_examples and all(e["rows"] == [0] for e in sweep.totals.wrong_examples)
