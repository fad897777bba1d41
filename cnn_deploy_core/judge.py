"""The one judge of a load-test run: was it sound, and did it meet its objectives?

    found = problems(report, Objectives(p99_ms=50))
    for p in found: print(p)             # one line each
    only_latency(found)                  # the run was sound and missed a latency objective only

The load test's exit code, the tuner's accept/reject, the benchmarks' verified steps, the drills
and the report all call :func:`problems` on the typed report, each with its own
:class:`Objectives` (data, as k6's thresholds are). The defaults cannot flatter a run: no failed
request (warm-up included), no wrong answer, every answer verified, no dropped request, every
replica answered and none failed over away from, and something measured at all. A caller that
expects failures says so in its objectives (the kill drill tolerates the killed replica's loss).
Pure: no server, no clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.loadtest_report import LoadTestReport, ReportSchemaError, SloResult, StepResult

# Problem kinds. Only LATENCY leaves the run sound (the load test exits 99 for it alone).
UNMEASURED = "unmeasured"  # nothing to judge: no step, no answer, no execution, no report
RUN = "run"  # the run itself went wrong (a sweep that stopped, a corrupted self-test)
FAILED = "failed"
WRONG = "wrong"
UNVERIFIED = "unverified"
DROPPED = "dropped"
REPLICA = "replica"
LATENCY = "latency"


class ObjectiveError(CnnDeployError):
    """Objectives that cannot be judged (a negative count, a rate above 1)."""


@dataclass(frozen=True)
class Objectives:
    """What a run must meet; the defaults are the strictest."""

    # every step's p99 response time over every request after warm-up, failures at their time to
    # failure, at most this (ms); None: not judged. The only objective whose miss leaves a run sound.
    p99_ms: float | None = None
    # failed / all requests, over the whole run (warm-up included) and over each step after warm-up
    max_error_rate: float = 0.0
    # error kinds that are not failures here (a drill that makes the server shed load on purpose)
    allowed_errors: frozenset[str] = frozenset()
    max_wrong: int = 0  # wrong answers over the whole run, warm-up included
    verify: bool = True  # answers must have been checked (False: --no-verify, the report says so)
    every_answer_verified: bool = True  # and every one of them (False: a sampled --verify-fraction)
    max_dropped: int | None = 0  # rate mode: arrivals never sent; None: not judged
    # several replicas: one that never answered, or had requests failed over away from it, fails
    # the run unless this says the loss of a replica is expected
    tolerate_replica_loss: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_errors", frozenset(self.allowed_errors))
        if self.p99_ms is not None and not self.p99_ms > 0:
            raise ObjectiveError(f"--p99-ms must be > 0, got {self.p99_ms:g}")
        if not 0 <= self.max_error_rate <= 1:
            raise ObjectiveError(f"--max-error-rate must be in [0, 1], got {self.max_error_rate:g}")
        if self.max_wrong < 0:
            raise ObjectiveError(f"--max-wrong must be >= 0, got {self.max_wrong}")
        if self.max_dropped is not None and self.max_dropped < 0:
            raise ObjectiveError(f"--max-dropped must be >= 0, got {self.max_dropped}")

    def to_dict(self) -> dict:
        return {
            "p99_ms": self.p99_ms,
            "max_error_rate": self.max_error_rate,
            "allowed_errors": sorted(self.allowed_errors),
            "max_wrong": self.max_wrong,
            "verify": self.verify,
            "every_answer_verified": self.every_answer_verified,
            "max_dropped": self.max_dropped,
            "tolerate_replica_loss": self.tolerate_replica_loss,
        }


@dataclass(frozen=True)
class Problem:
    kind: str  # UNMEASURED, RUN, FAILED, WRONG, UNVERIFIED, DROPPED, REPLICA or LATENCY
    message: str

    def __str__(self) -> str:
        return self.message


def error_kinds(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(errors.items())) or "none"


def problems(report: LoadTestReport, objectives: Objectives = Objectives()) -> list[Problem]:
    """Every reason the run is not sound or missed an objective, one line each; empty: it passed."""
    o = objectives
    found = [Problem(RUN, line) for line in report.failures]
    found += _unmeasured(report)
    found += _failed(report, o)
    if report.totals.wrong > o.max_wrong:
        found.append(
            Problem(
                WRONG,
                f"{report.totals.wrong} wrong answers of {report.totals.verified} verified "
                f"(allowed {o.max_wrong})",
            )
        )
    found += _unverified(report, o)
    if o.max_dropped is not None and report.totals.dropped > o.max_dropped:
        at = ", ".join(f"{s.label} {s.dropped}" for s in report.steps if s.dropped)
        found.append(
            Problem(
                DROPPED,
                f"{report.totals.dropped} requests dropped: scheduled and never sent ({at or 'the run'}; "
                f"allowed {o.max_dropped})",
            )
        )
    if not o.tolerate_replica_loss:
        found += _replicas(report)
    if (latency := _latency(o.p99_ms, report.steps)) is not None:
        found.append(latency)
    return found


def problems_of_json(text: str, objectives: Objectives = Objectives()) -> list[Problem]:
    """`problems` of a report's JSON; a report that cannot be read is itself the problem."""
    try:
        report = LoadTestReport.from_json(text)
    except ReportSchemaError as e:
        return [Problem(UNMEASURED, f"no readable load-test report: {e}")]
    return problems(report, objectives)


def only_latency(found: list[Problem]) -> bool:
    """The run was sound and missed a latency objective only."""
    return bool(found) and all(p.kind == LATENCY for p in found)


def slo_result(found: list[Problem], objectives: Objectives) -> SloResult:
    """The verdict as the report records it."""
    lines = [p.message for p in found]
    failing = [p.message for p in found if p.kind != LATENCY]
    return SloResult(objectives=objectives.to_dict(), passed=not found, violations=lines, failing=failing)


# ---- the rules ---------------------------------------------------------------------------------


def _answers(s: StepResult) -> int:
    return s.all_responses or s.responses


def _unmeasured(report: LoadTestReport) -> list[Problem]:
    if not report.steps:
        return [Problem(UNMEASURED, "no step was measured")]
    found = []
    for s in report.steps:
        if not _answers(s):
            errors = error_kinds(s.all_errors or s.errors)
            found.append(Problem(UNMEASURED, f"{s.label}: no answer ({errors})"))
        elif s.server is not None:
            executions = s.server.executions + sum(c.executions for c in s.composing.values())
            if not executions:
                found.append(
                    Problem(
                        UNMEASURED,
                        f"{s.label}: {_answers(s)} answers and Triton's statistics show no execution: "
                        "the server's figures could not be measured",
                    )
                )
    return found


def _counted(errors: dict[str, int], allowed: frozenset[str]) -> dict[str, int]:
    return {k: v for k, v in errors.items() if v and k not in allowed}


def _failed(report: LoadTestReport, o: Objectives) -> list[Problem]:
    found = []
    in_steps: Counter = Counter()
    for s in report.steps:
        failed = _counted(s.all_errors, o.allowed_errors)
        in_steps.update(failed)
        n = sum(failed.values())
        if n and n / max(s.all_requests, 1) > o.max_error_rate:
            found.append(
                Problem(
                    FAILED,
                    f"{s.label}: {n} of {s.all_requests} requests failed after warm-up "
                    f"({error_kinds(failed)})"
                    + (f"; allowed rate {o.max_error_rate:g}" if o.max_error_rate else ""),
                )
            )
    failed = _counted(report.totals.errors, o.allowed_errors)
    total = sum(failed.values())
    outside = {k: v - in_steps[k] for k, v in failed.items() if v > in_steps[k]}
    # Failures outside the steps' measured part (their warm-ups): judged on the whole run's rate.
    if outside and total / max(report.totals.requests, 1) > o.max_error_rate:
        found.append(
            Problem(
                FAILED,
                f"{sum(outside.values())} requests failed during warm-up ({error_kinds(outside)}); "
                f"{total} of {report.totals.requests} over the whole run",
            )
        )
    return found


def _unverified(report: LoadTestReport, o: Objectives) -> list[Problem]:
    if not o.verify:
        return []
    if not report.verified:
        reason = report.verification.get("reason") or "verification disabled"
        return [Problem(UNVERIFIED, f"answers were not verified ({reason})")]
    found = [
        Problem(UNVERIFIED, f"{s.label}: {_answers(s)} answers and none verified")
        for s in report.steps
        if _answers(s) and not s.verified
    ]
    t = report.totals
    if o.every_answer_verified and not found and t.verified < t.responses:
        found.append(Problem(UNVERIFIED, f"{t.responses - t.verified} of {t.responses} answers not verified"))
    return found


def _replicas(report: LoadTestReport) -> list[Problem]:
    if len(report.replicas) < 2:
        return []
    found = []
    for r in report.replicas:
        errors = f" ({error_kinds(r.errors)})" if r.errors else ""
        if not r.responses:
            found.append(Problem(REPLICA, f"replica {r.url}: no answer{errors}"))
        elif r.failovers:
            moved = f"{r.failovers} requests failed over to another replica"
            found.append(Problem(REPLICA, f"replica {r.url}: {moved}{errors}"))
    return found


def _latency(p99_ms: float | None, steps: list[StepResult]) -> Problem | None:
    """Every step's p99 over every request after warm-up, failures counted at their time to failure,
    within `p99_ms`: a step full of timeouts cannot pass."""
    if p99_ms is None:
        return None
    bad = [s for s in steps if s.latency_all_ms is None or s.latency_all_ms.p99 > p99_ms]
    if not bad:
        return None
    worst = max((s.latency_all_ms.p99 for s in bad if s.latency_all_ms), default=None)
    detail = "no request completed" if worst is None else f"worst {worst:.2f} ms, failures included"
    labels = ", ".join(s.label for s in bad)
    return Problem(LATENCY, f"p99 latency above {p99_ms:g} ms at {labels} ({detail})")
