"""The load test's verdicts: small pure functions over the measured figures, each with a test that
makes it say no, and the exit code they add up to.

Exit codes (`python -m clients loadtest --help` shows them):
  0   every objective held: no failed request (beyond --max-error-rate), no wrong answer (beyond
      --max-wrong), every step answered and verified, p99 within --p99-ms
  1   the run failed: a request failed, an answer was wrong or could not be verified, a step got no
      answer, or the test could not run (bad settings, server unreachable, unknown model)
  2   bad command-line usage (argparse)
  99  the run was sound but missed a latency objective (--p99-ms), as k6 exits 99 for a missed threshold
  130 interrupted
"""

from __future__ import annotations

from dataclasses import asdict

from clients.loadtest.config import Slo
from cnn_deploy_core.loadtest_report import LoadTestReport, SloResult, StepResult, Totals

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SLO_MISSED = 99
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0    every objective held: no failed request, no wrong answer, every step answered and verified
       (--max-error-rate R and --max-wrong N allow some), p99 within --p99-ms
  1    the run failed: a request failed or an answer was wrong beyond what was allowed, an answer
       could not be verified, a step got no answer, or the test could not run
  2    bad command-line usage
  99   the run was sound but missed the latency objective (--p99-ms), like k6's missed threshold
  130  interrupted"""


def error_kinds(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(errors.items())) or "none"


def _labels(steps: list[StepResult]) -> str:
    return ", ".join(s.label for s in steps)


def latency_violation(p99_ms: float | None, steps: list[StepResult]) -> str | None:
    """Every step's p99 over every request after warm-up, failures counted at their time to failure,
    within `p99_ms`: a step full of timeouts cannot pass."""
    if p99_ms is None:
        return None
    bad = [s for s in steps if s.latency_all_ms is None or s.latency_all_ms.p99 > p99_ms]
    if not bad:
        return None
    worst = max((s.latency_all_ms.p99 for s in bad if s.latency_all_ms), default=None)
    detail = "no request completed" if worst is None else f"worst {worst:.2f} ms, failures included"
    return f"p99 latency above {p99_ms:g} ms at {_labels(bad)} ({detail})"


def error_violation(max_error_rate: float | None, steps: list[StepResult]) -> str | None:
    """Every step's failed requests over all its requests after warm-up (not only the windows kept)."""
    if max_error_rate is None:
        return None
    bad = [s for s in steps if s.all_error_rate > max_error_rate]
    if not bad:
        return None
    worst = max(bad, key=lambda s: s.all_error_rate)
    failed = sum(worst.all_errors.values())
    return (
        f"error rate above {max_error_rate:g} at {_labels(bad)} (worst {worst.all_error_rate:.3g}: "
        f"{failed} of {worst.all_requests} requests after warm-up: {error_kinds(worst.all_errors)})"
    )


def wrong_violation(max_wrong: int | None, totals: Totals) -> str | None:
    if max_wrong is None or totals.wrong <= max_wrong:
        return None
    return f"{totals.wrong} wrong answers of {totals.verified} verified (allowed {max_wrong})"


def evaluate(slo: Slo, steps: list[StepResult], totals: Totals) -> SloResult:
    """Which objectives the run missed, one line each; `failing` holds those that fail the run."""
    latency = latency_violation(slo.p99_ms, steps)
    errors, wrong = error_violation(slo.max_error_rate, steps), wrong_violation(slo.max_wrong, totals)
    failing = [v for v in (errors, wrong) if v]
    violations = [*([latency] if latency else []), *failing]
    return SloResult(objectives=asdict(slo), passed=not violations, violations=violations, failing=failing)


def unverified_steps(steps: list[StepResult], verification_enabled: bool) -> list[str]:
    """With verification on, a step that got answers but verified none of them proves nothing."""
    if not verification_enabled:
        return []
    return [
        f"{s.label}: {s.all_responses or s.responses} answers and none verified"
        for s in steps
        if (s.all_responses or s.responses) and not s.verified
    ]


def unanswered_steps(steps: list[StepResult]) -> list[str]:
    return [
        f"{s.label}: no successful response ({error_kinds(s.all_errors or s.errors)})"
        for s in steps
        if not s.responses and not s.all_responses
    ]


def exit_code(report: LoadTestReport) -> int:
    """0 passed; 1 the run failed (failures, failed requests, wrong answers); 99 only a latency
    objective was missed."""
    if report.failures or report.slo.failing:
        return EXIT_FAILED
    if report.slo.violations:
        return EXIT_SLO_MISSED
    return EXIT_OK
