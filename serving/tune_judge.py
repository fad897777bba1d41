"""The tuner's verdicts, pure functions over what a load test reported: which precisions may be
tried, whether a load test produced a report at all, and whether a run disqualifies a candidate."""

from __future__ import annotations

from cnn_deploy_core.loadtest_report import LoadTestReport, ReportSchemaError
from serving import ServingError

PRECISIONS = ("fp32", "int8")  # what the CPU configs can serve (fp16 is the GPU config's)
LOADTEST_TIMEOUT_S = 600
SATURATION = 1.05  # more concurrency must add 5 % throughput to be worth its latency


class CandidateFailed(ServingError):
    """A candidate could not be measured (its load test failed, timed out or said nothing)."""


def check_precisions(precisions: tuple[str, ...], has_int8: bool) -> tuple[str, ...]:
    """The precisions to try, or a one-line error: unknown ones, or int8 without an INT8 export."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ServingError(
            f"--precisions: {', '.join(unknown) or 'none given'} not served on CPU; choose from "
            f"{', '.join(PRECISIONS)} (fp16 is the gpu config's)"
        )
    if "int8" in precisions and not has_int8:
        raise ServingError("--precisions int8: no INT8 export; run `python -m export build NAME --int8`")
    return tuple(dict.fromkeys(precisions))


def read_loadtest(returncode: int | None, stdout: str, stderr: str, where: str) -> LoadTestReport:
    """The load test's JSON report, or CandidateFailed saying why there is none. A non-zero exit with
    a report is judged by run_verdict (failed requests, wrong answers: the report says which)."""
    tail = stderr.strip()[-300:] or "no output"
    if returncode is None:
        raise CandidateFailed(f"the load test timed out {where} after {LOADTEST_TIMEOUT_S}s")
    try:
        return LoadTestReport.from_json(stdout)
    except ReportSchemaError as e:
        raise CandidateFailed(f"the load test failed {where} (exit code {returncode}): {tail} ({e})") from e


def run_verdict(report: LoadTestReport, returncode: int) -> str | None:
    """Why this load-test run disqualifies the candidate (None: it does not): every answer of the
    whole run, warm-up included, verified (verified == answered > 0) and right, no request failed,
    none dropped, and the load test itself content."""
    totals = report.totals
    step = report.steps[0] if report.steps else None
    # The run's totals hold every request, warm-up included; the step's all_errors those after it.
    failed = max((totals.errors, step.all_errors if step else {}), key=lambda e: sum(e.values()))
    if not report.verified:
        return "answers were not verified"
    if sum(failed.values()):
        return f"failed requests ({', '.join(f'{n} {kind}' for kind, n in failed.items())})"
    if totals.wrong:
        return f"{totals.wrong} wrong answers of {totals.verified} checked"
    if totals.responses <= 0:
        return "no answer"
    if totals.verified != totals.responses:
        return f"{totals.responses - totals.verified} of {totals.responses} answers not verified"
    if totals.dropped:
        return f"{totals.dropped} requests dropped"
    if report.failures:
        return "; ".join(report.failures)
    if returncode != 0:
        return f"the load test failed (exit code {returncode})"
    return None


def point_of(report: LoadTestReport, c: int) -> dict | None:
    """One concurrency's figures; the p99 counts failures at their time to failure when known."""
    step = report.steps[0] if report.steps else None
    if step is None or not step.responses or step.latency_ms is None:
        return None
    latency = step.latency_all_ms or step.latency_ms
    t = report.totals
    return {
        "concurrency": c,
        "infer_per_s": step.inferences_per_s,
        "p50_ms": step.latency_ms.p50,
        "p99_ms": max(latency.p99, step.latency_ms.p99),
        "answered": t.responses,
        "verified": t.verified,
        "wrong": t.wrong,
        "errors": sum(t.errors.values()),
    }


def within_slo(point: dict, slo_ms: float) -> bool:
    """The point's p99 (failures counted at their time to failure) meets the objective."""
    return point["p99_ms"] <= slo_ms


def saturated(point: dict, previous_infer_per_s: float) -> bool:
    """More concurrency did not add SATURATION's share of throughput: the search stops climbing."""
    return point["infer_per_s"] < previous_infer_per_s * SATURATION
