"""The drills' verdicts: pure functions over measured figures, each a list of checks (a promise, what
was measured, kept or BROKEN). No server, no clock: tests/test_judges.py makes each one say BROKEN.

Whether a drill's load-test run was sound (failed requests, wrong or unverified answers, drops, a
lost replica, nothing measured) is not decided here: cnn_deploy_core.judge decides it under each
drill's objectives below, and its problems arrive in the figures (`problems`). The checks here are
the drill's own promises (a restart in time, a survivor's rate, shedding fast, memory).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from cnn_deploy_core.judge import Objectives

SURVIVOR_SHARE = 0.8  # after a kill, the survivor keeps >= this x its own rate before it
RECOVERY_LIMIT_S = 10.0  # from the end of the overload back to 90% of the rate before it
RECOVERED = 0.9
# Overload: memory must level off while the overload goes on. It does grow at first (the Python
# backend's shared-memory pool and ORT's arena take the queued requests and bigger batches, up to
# what max_batch_size and the queue policy allow); it must not keep growing.
MEMORY_PLATEAU = 1.05  # peak of the second half of the overload <= this x the peak of the first
SHED_SLACK_S = 1.0  # a shed request fails within the queue timeout + this
OVERLOAD_OFFERED = 2.0  # the generator really offered >= this x capacity (of the 3x asked)
MEMORY_GROWTH_LIMIT = 0.05  # soak: growth over the run on the fitted trend
P99_DRIFT_LIMIT = 0.20
FULL_RUN = 0.98  # a soak measured at least this share of its planned time
OVERLOADED = "ServerOverloadedError"
TIMEOUT = "RequestTimeoutError"

# Each drill's objectives for the judge. The kill drills take a replica away on purpose: its loss
# (no answers for a while, requests failed over away from it) is what they measure, not a fault.
KILL_OBJECTIVES = Objectives(tolerate_replica_loss=True)  # with failover: still no request fails
# Without failover the killed replica's requests fail; judge_kill bounds how many.
KILL_NO_FAILOVER_OBJECTIVES = Objectives(tolerate_replica_loss=True, max_error_rate=1.0)
# The crash is seen as errors (judge_restart requires some); the sweep must ride it out.
RESTART_OBJECTIVES = Objectives(max_error_rate=1.0)
AFTER_RESTART_OBJECTIVES = Objectives()
# Shedding is the point; the generator's own drops are reported by judge_overload, not judged.
OVERLOAD_OBJECTIVES = Objectives(allowed_errors=frozenset({OVERLOADED}), max_dropped=None)
SOAK_OBJECTIVES = Objectives()


@dataclass
class Check:
    promise: str
    measured: str
    passed: bool
    judged: bool = True  # False: reported only (a short soak is too short to find wear)


def run_sound(problems: tuple[str, ...], promise: str) -> Check:
    """Every drill: the judge found no problem in its load-test run under the drill's objectives."""
    return Check(promise, "; ".join(problems) if problems else "no problem found", not problems)


def _kinds(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"


# ---- kill ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillFigures:
    failover: bool
    in_flight_on_killed: int  # at the moment of the kill
    in_flight_when_noticed: int  # on it when the client saw its first failure (sent meanwhile too)
    failed: int  # over the whole run
    failed_before_reprobe: int  # on the killed replica until the client tried it again
    failovers: int
    survivor_rate_before: float  # the survivor's answers/s before the kill (its share)
    survivor_rate_after: float
    verified: int
    wrong: int
    restarted_in_s: float | None = None  # from the kill until its supervisor had it ready again
    answers_after_restart: int = 0  # answered by the restarted replica
    problems: tuple[str, ...] = ()  # the judge's, under KILL_OBJECTIVES or KILL_NO_FAILOVER_OBJECTIVES


READY_AGAIN_S = 30.0  # a killed replica is back within this


def judge_kill(f: KillFigures) -> list[Check]:
    """With failover: no request fails and the survivor carries on at >= 80% of its own rate.
    Without: what fails is what was in flight on the killed replica (until the client probes it
    again after its cooldown), and the survivor still answers. Both: the supervisor has the killed
    replica ready again within 30 s, and it takes traffic again."""
    back = "not ready again" if f.restarted_in_s is None else f"ready again {f.restarted_in_s:.1f} s after"
    checks = [
        Check(
            f"the killed replica is restarted by its supervisor, ready within {READY_AGAIN_S:.0f} s",
            f"{back} the kill",
            f.restarted_in_s is not None and f.restarted_in_s <= READY_AGAIN_S,
        ),
        Check(
            "the restarted replica takes its share of the load again",
            f"{f.answers_after_restart} answers from it after its restart",
            f.answers_after_restart > 0,
        ),
    ]
    if f.failover:
        checks.append(
            run_sound(
                f.problems,
                "no request fails (those on the killed replica go on to the survivor: "
                f"{f.in_flight_on_killed} in flight on it, {f.failovers} sent on), every answer verified "
                "and right",
            )
        )
        floor = SURVIVOR_SHARE * f.survivor_rate_before
        checks.append(
            Check(
                f"the survivor keeps >= {SURVIVOR_SHARE:.0%} of its rate before the kill",
                f"{f.survivor_rate_before:.1f}/s before, {f.survivor_rate_after:.1f}/s after",
                f.survivor_rate_before > 0 and f.survivor_rate_after >= floor,
            )
        )
    else:
        # In flight when the client noticed, not at the kill: requests sent between the kill and
        # the first failure were on their way to a dead server too.
        checks.append(
            Check(
                "without failover, failed requests <= those in flight on the killed replica",
                f"{f.failed_before_reprobe} failed before the client tried it again; in flight on it: "
                f"{f.in_flight_on_killed} at the kill, {f.in_flight_when_noticed} when the client saw it "
                f"fail ({f.failed} failed over the run, re-probes included)",
                f.failed_before_reprobe <= f.in_flight_when_noticed,
            )
        )
        checks.append(
            Check(
                "the survivor keeps answering",
                f"{f.survivor_rate_after:.1f}/s after the kill",
                f.survivor_rate_after > 0,
            )
        )
        checks.append(run_sound(f.problems, "every answer verified and right"))
    return checks


# ---- restart ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestartFigures:
    ran_s: float
    planned_s: float
    restart_s: float
    errors: dict[str, int]
    verified: int
    wrong: int
    after_verified: int
    after_wrong: int
    after_failed: int
    problems: tuple[str, ...] = ()  # the judge's on the run, under RESTART_OBJECTIVES
    after_problems: tuple[str, ...] = ()  # on the run after it, under AFTER_RESTART_OBJECTIVES


def judge_restart(f: RestartFigures) -> list[Check]:
    """The load test rides out a crash and restart (a hang raises before a judge is reached),
    counts the errors by kind, and answers are exact again afterwards."""
    ridden = run_sound(
        f.problems,
        "the load test neither hangs nor crashes and rides out the restart, every answer verified and right",
    )
    took = f"ran {f.ran_s:.1f} s of {f.planned_s:g}; the server was back in {f.restart_s:.1f} s"
    ridden.measured = f"{took}; {ridden.measured}"
    after = run_sound(f.after_problems, "answers are exact after the restart (none failed, all verified)")
    counts = f"{f.after_verified} verified, {f.after_wrong} wrong, {f.after_failed} failed"
    after.measured = f"{counts}; {after.measured}"
    return [
        ridden,
        Check(
            "the crash is seen, and errors are counted by kind", _kinds(f.errors), sum(f.errors.values()) > 0
        ),
        after,
    ]


# ---- overload -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverloadFigures:
    capacity: float  # answers/s at c=4 before the drill
    offered: float  # req/s asked of the generator (3x capacity)
    sent_per_s: float  # what it really sent
    dropped: int  # scheduled but never sent (the client's own drops)
    alive: bool
    errors: dict[str, int]  # by kind, the whole run
    shed_max_s: float | None  # the slowest ServerOverloadedError, from its send
    queue_timeout_s: float
    slowest_answer_s: float | None  # from its send
    timeout_s: float  # the client's
    memory_peaks_mb: tuple[float, float]  # first half, second half of the overload
    rate_before: float  # answers/s at c=4 on the same server just before the overload
    recovery_windows: list[tuple[float, float]]  # (seconds, answers/s) after it
    recovered_after_s: float | None  # from the end of the overload to 90% of rate_before
    verified: int
    wrong: int
    problems: tuple[str, ...] = ()  # the judge's, under OVERLOAD_OBJECTIVES


def judge_overload(f: OverloadFigures) -> list[Check]:
    """3x capacity, open loop, with a queue policy: the server stays up and sheds what it cannot
    take, fast and as ServerOverloadedError; what it accepts is answered in time; its memory levels
    off; it is back to 90% of its rate before within 10 s of the end."""
    shed = f.errors.get(OVERLOADED, 0)
    other = {k: v for k, v in f.errors.items() if k != OVERLOADED}
    first, second = f.memory_peaks_mb
    back = f.recovered_after_s
    return [
        Check("the server stays up", "ready after the overload" if f.alive else "DOWN", f.alive),
        Check(
            f"the load offered really was an overload (sent >= {OVERLOAD_OFFERED:g}x capacity)",
            f"{f.sent_per_s:.1f} req/s sent of {f.offered:.1f} asked (capacity {f.capacity:.1f}); "
            f"{f.dropped} dropped at the client",
            f.sent_per_s >= OVERLOAD_OFFERED * f.capacity,
        ),
        Check(
            "the server sheds load: refused requests fail as ServerOverloadedError", f"{shed} shed", shed > 0
        ),
        run_sound(
            f.problems,
            f"nothing else fails (other errors: {_kinds(other)}), every answer verified and right",
        ),
        Check(
            f"shed requests fail fast (within the queue timeout {f.queue_timeout_s:g} s + {SHED_SLACK_S:g})",
            "none shed" if f.shed_max_s is None else f"the slowest failed after {f.shed_max_s:.2f} s",
            f.shed_max_s is not None and f.shed_max_s <= f.queue_timeout_s + SHED_SLACK_S,
        ),
        Check(
            f"accepted requests are answered within the client's timeout ({f.timeout_s:g} s)",
            "no answer" if f.slowest_answer_s is None else f"the slowest after {f.slowest_answer_s:.2f} s",
            f.slowest_answer_s is not None and f.slowest_answer_s < f.timeout_s and TIMEOUT not in f.errors,
        ),
        Check(
            f"memory levels off (2nd half's peak <= {MEMORY_PLATEAU}x the 1st half's)",
            f"peaks {first:.0f} MB (1st half), {second:.0f} MB (2nd half)"
            if first > 0 and second > 0
            else "could not measure: no PSS sample in a half of the overload",
            first > 0 and second > 0 and second <= MEMORY_PLATEAU * first,
        ),
        Check(
            f"back to {RECOVERED:.0%} of its rate before within {RECOVERY_LIMIT_S:g} s of the end",
            f"{f.rate_before:.1f}/s before; " + ("not back" if back is None else f"back after {back:.1f} s"),
            back is not None and back <= RECOVERY_LIMIT_S,
        ),
    ]


def recovered_after(gap_s: float, windows: list[tuple[float, float]], rate_before: float) -> float | None:
    """Seconds from the end of the overload until a window of the recovery load reached 90% of the
    rate before it: `gap_s` (overload end to recovery start) plus the windows (duration, answers/s) up to
    and including that one; None when none did."""
    elapsed = gap_s
    for duration, rate in windows:
        elapsed += duration
        if rate >= RECOVERED * rate_before:
            return elapsed
    return None


# ---- soak ---------------------------------------------------------------------------------------


def memory_trend(samples: list[tuple[float, float]], from_s: float) -> tuple[float, float] | None:
    """Least-squares line through the memory samples (seconds, MB) from `from_s` on: (slope in MB per
    minute, growth over that span as a fraction of the fitted start). None with < 3 samples."""
    points = [(t, mb) for t, mb in samples if t >= from_s]
    if len(points) < 3:
        return None
    ts, mbs = [t for t, _ in points], [mb for _, mb in points]
    slope, intercept = statistics.linear_regression(ts, mbs)
    start = slope * ts[0] + intercept
    return slope * 60, slope * (ts[-1] - ts[0]) / max(start, 1e-9)


def p99_drift(window_p99_ms: list[float]) -> tuple[float, float, float] | None:
    """(first half's median window p99, second half's, signed drift) from the second window on.
    One window's p99 against another's is noise on a shared machine (it swings severalfold minute to
    minute at 80% load, with no trend); wear moves the medians. A p99 that falls is no wear."""
    steady = window_p99_ms[1:]
    half = len(steady) // 2
    if not half:
        return None
    start, end = statistics.median(steady[:half]), statistics.median(steady[-half:])
    return start, end, (end - start) / start if start else float("inf")


@dataclass(frozen=True)
class SoakFigures:
    planned_s: float
    measured_s: float  # the windows' total
    failed: int
    verified: int
    wrong: int
    memory_per_min_mb: float | None  # the fitted slope
    memory_growth: float | None  # over the run, on the fitted line
    p99: tuple[float, float, float] | None  # p99_drift's answer
    memory_samples: int = 0  # PSS readings of the server tree (none: memory could not be measured)
    problems: tuple[str, ...] = ()  # the judge's, under SOAK_OBJECTIVES


def judge_soak(f: SoakFigures, *, wear_judged: bool = True) -> list[Check]:
    """The whole planned time at 80% load: no error, no wrong answer; memory's fitted trend grows
    < 5% over the run and the median p99 < 20% (wear: judged on a full soak only)."""
    growth = f.memory_growth
    return [
        Check(
            f"runs its full time (>= {FULL_RUN:.0%} of {f.planned_s:g} s measured)",
            f"{f.measured_s:.0f} s measured",
            f.measured_s >= FULL_RUN * f.planned_s,
        ),
        run_sound(f.problems, f"no request fails ({f.failed} failed), every answer verified and right"),
        Check(
            "the server's memory (PSS) could be measured",
            f"{f.memory_samples} samples",
            f.memory_samples > 0,
        ),
        Check(
            f"memory (PSS) grows < {MEMORY_GROWTH_LIMIT:.0%} over the run (least-squares trend from 20%)",
            "too few samples"
            if growth is None
            else f"{f.memory_per_min_mb:+.2f} MB/min, {growth:+.1%} over the run",
            growth is not None and growth < MEMORY_GROWTH_LIMIT,
            wear_judged,
        ),
        Check(
            f"p99 grows < {P99_DRIFT_LIMIT:.0%} (median window, 2nd half against 1st, from window 2)",
            "too few windows" if f.p99 is None else f"{f.p99[0]:.1f} -> {f.p99[1]:.1f} ms ({f.p99[2]:+.0%})",
            f.p99 is not None and f.p99[2] < P99_DRIFT_LIMIT,
            wear_judged,
        ),
    ]
