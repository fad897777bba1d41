"""The tuner's verdicts, pure functions over what a load test reported: which precisions may be
tried, whether a load test produced a report at all, whether a run disqualifies a candidate (that
one is cnn_deploy_core.judge's, under the tuner's objectives), and whether the winner is ahead of the
current config in the A/B that decides whether it is written."""

from __future__ import annotations

from dataclasses import dataclass, replace
from statistics import median

from cnn_deploy_core.judge import LATENCY, Objectives, problems, problems_of_json
from cnn_deploy_core.loadtest_report import LoadTestReport, ReportSchemaError
from serving import ServingError

PRECISIONS = ("fp32", "int8")  # what the CPU configs can serve (fp16 is the GPU config's)
GPU_PRECISIONS = ("fp16", "fp32", "int8")  # TensorRT's, on the gpu config's files
LOADTEST_TIMEOUT_S = 600
SATURATION = 1.05  # more concurrency must add 5 % throughput to be worth its latency
AB_ROUNDS = 3  # the winner and the current config, each measured this many times, alternately
# The winner must beat the current config by this much (median of the rounds' ratios) to replace
# it: two runs of one config differ by a few percent, and a tie is not worth a new config.
AB_MIN_GAIN = 1.02
# The A/B also measures both configs at this light load (on the same servers), and the winner must
# serve it at AB_LIGHT_FLOOR of the current config at least: a config tuned for its best load (a
# long queue delay, more instances) must not make the everyday few-clients case slower.
AB_LIGHT_CONCURRENCY = 4
AB_LIGHT_FLOOR = 0.95
TUNER_OBJECTIVES = Objectives()  # the strictest: a figure measured on a bad run is no figure


class CandidateFailed(ServingError):
    """A candidate could not be measured (its load test failed, timed out or said nothing)."""


def check_precisions(precisions: tuple[str, ...], has_int8: bool, device: str = "cpu") -> tuple[str, ...]:
    """The precisions to try on `device`'s config, or a one-line error: unknown ones, or int8
    without its INT8 file (the GPU's: the S8S8 form TensorRT builds)."""
    gpu = device == "gpu"
    allowed = GPU_PRECISIONS if gpu else PRECISIONS
    unknown = [p for p in precisions if p not in allowed]
    if unknown or not precisions:
        where = "the GPU" if gpu else "CPU"
        hint = "" if gpu else " (fp16 is the gpu config's)"
        raise ServingError(
            f"--precisions: {', '.join(unknown) or 'none given'} not served on {where}; choose from "
            f"{', '.join(allowed)}{hint}"
        )
    if "int8" in precisions and not has_int8:
        missing = "no S8S8 INT8 file (the form TensorRT builds)" if gpu else "no INT8 export"
        raise ServingError(f"--precisions int8: {missing}; run `python -m export build NAME --int8`")
    return tuple(dict.fromkeys(precisions))


def read_loadtest(returncode: int | None, stdout: str, stderr: str, where: str) -> LoadTestReport:
    """The load test's JSON report, or CandidateFailed saying why there is none. A non-zero exit with
    a report is judged by run_verdict (failed requests, wrong answers: the report says which).
    Without one, the candidate could not be measured."""
    tail = stderr.strip()[-300:] or "no output"
    if returncode is None:
        raise CandidateFailed(f"the load test timed out {where} after {LOADTEST_TIMEOUT_S}s")
    try:
        return LoadTestReport.from_json(stdout)
    except ReportSchemaError:
        # An unreadable report is the judge's call too, in its words, as every other run's verdict.
        why = "; ".join(map(str, problems_of_json(stdout, TUNER_OBJECTIVES)))
        failed = f"the load test failed {where} (exit code {returncode})"
        raise CandidateFailed(f"{failed}: {tail} ({why})") from None


def run_verdict(report: LoadTestReport, slo_ms: float) -> tuple[str | None, bool]:
    """(why this run disqualifies the candidate, or None; whether it met the p99 objective), as
    cnn_deploy_core.judge finds under TUNER_OBJECTIVES with `slo_ms` as the p99 objective: every
    answer of the whole run, warm-up included, verified and right, no request failed, none dropped.
    A missed p99 does not disqualify: the search stops climbing there."""
    found = problems(report, replace(TUNER_OBJECTIVES, p99_ms=slo_ms))
    unsound = [p.message for p in found if p.kind != LATENCY]
    return "; ".join(unsound) or None, not found


def point_of(report: LoadTestReport, c: int) -> dict | None:
    """One concurrency's figures; the p99 is the one the judge holds to the objective (every request
    after warm-up, failures at their time to failure) when known."""
    step = report.steps[0] if report.steps else None
    if step is None or not step.responses or step.latency_ms is None:
        return None
    latency = step.latency_all_ms or step.latency_ms
    t = report.totals
    return {
        "concurrency": c,
        "infer_per_s": step.inferences_per_s,
        "p50_ms": step.latency_ms.p50,
        "p99_ms": latency.p99,
        "answered": t.responses,
        "verified": t.verified,
        "wrong": t.wrong,
        "errors": sum(t.errors.values()),
        # what the load generator (and its verifier) spent per request on the server's machine
        "generator_cpu_ms_per_request": step.generator_cpu_ms_per_request,
        "verifier_cpu_ms_per_request": step.verifier_cpu_ms_per_request,
    }


def saturated(point: dict, previous_infer_per_s: float) -> bool:
    """More concurrency did not add SATURATION's share of throughput: the search stops climbing."""
    return point["infer_per_s"] < previous_infer_per_s * SATURATION


@dataclass(frozen=True)
class AbRound:
    """One round of the A/B: the current config and the winner, each on a fresh server of its own,
    at the same concurrency. `problems`: what the judge found unsound in either run."""

    current_infer_per_s: float
    winner_infer_per_s: float
    current_within: bool  # its p99 met the objective
    winner_within: bool
    problems: tuple[str, ...] = ()
    # at AB_LIGHT_CONCURRENCY (None: the winner's concurrency is that one already)
    light_current_infer_per_s: float | None = None
    light_winner_infer_per_s: float | None = None


def ab_ratio(rounds: list[AbRound]) -> float | None:
    """The winner's throughput / the current config's: the median of the rounds' ratios."""
    if not rounds or any(r.current_infer_per_s <= 0 for r in rounds):
        return None
    return median(r.winner_infer_per_s / r.current_infer_per_s for r in rounds)


def light_ratio(rounds: list[AbRound]) -> float | None:
    """The winner's throughput / the current config's at AB_LIGHT_CONCURRENCY: the median of the
    rounds' ratios; None when not measured (or the current config answered nothing there)."""
    pairs = [(r.light_winner_infer_per_s, r.light_current_infer_per_s) for r in rounds]
    if not pairs or any(w is None or c is None or c <= 0 for w, c in pairs):
        return None
    return median(w / c for w, c in pairs)


def ab_verdict(rounds: list[AbRound]) -> tuple[bool, str]:
    """(whether the winner is ahead of the current config, why): every run sound, AB_ROUNDS rounds at
    least, at AB_LIGHT_CONCURRENCY (where measured) at least AB_LIGHT_FLOOR of the current config,
    the winner within the p99 objective in every round, and either faster in every round and
    ahead by AB_MIN_GAIN (median of the per-round ratios), or the only one of the two within the
    objective (the current config missed it in every round). Every round, not most: on a busy
    machine one config's throughput swings by half from run to run, and a config that loses a
    round is not shown to be ahead; refusing it costs nothing (the current config stays)."""
    unsound = [p for r in rounds for p in r.problems]
    if unsound:
        return False, f"an A/B run was not sound: {'; '.join(unsound)}"
    if len(rounds) < AB_ROUNDS:
        return False, f"{len(rounds)} A/B rounds, {AB_ROUNDS} needed"
    n = len(rounds)
    measured_light = any(r.light_current_infer_per_s is not None for r in rounds)
    light = light_ratio(rounds)
    if measured_light:
        if light is None:
            return False, f"nothing to compare at c={AB_LIGHT_CONCURRENCY}: a run there answered nothing"
        if light < AB_LIGHT_FLOOR:
            return False, (
                f"the winner is slower at c={AB_LIGHT_CONCURRENCY}: {light:.3f}x the current config "
                f"(median of {n} rounds; needs {AB_LIGHT_FLOOR:.2f}x)"
            )
    winner_within = sum(r.winner_within for r in rounds)
    if winner_within < n:
        return False, f"the winner missed the p99 objective in {n - winner_within} of {n} rounds"
    if not any(r.current_within for r in rounds):
        return True, f"the current config missed the p99 objective in all {n} rounds; the winner met it"
    ratio = ab_ratio(rounds)
    if ratio is None:
        return False, "the current config answered nothing in a round: nothing to compare"
    faster = sum(r.winner_infer_per_s > r.current_infer_per_s for r in rounds)
    figures = f"{ratio:.3f}x the current config (median of {n} rounds), faster in {faster} of {n}"
    if measured_light:
        figures += f"; {light:.3f}x at c={AB_LIGHT_CONCURRENCY}"
    if ratio >= AB_MIN_GAIN and faster == n:
        return True, f"the winner is ahead: {figures}"
    return False, f"the winner is not ahead: {figures} (needs {AB_MIN_GAIN:.2f}x and every round)"
