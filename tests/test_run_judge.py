"""The one judge of a load-test run (cnn_deploy_core/judge.py): each rule shown saying no, and every
caller (the load test's exit code, the tuner, the harness, the drills) giving one verdict on one
report. No server: the reports are built by hand (tests/reports.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cnn_deploy_core.judge import (
    DROPPED,
    FAILED,
    LATENCY,
    REPLICA,
    RUN,
    UNMEASURED,
    UNVERIFIED,
    WRONG,
    ObjectiveError,
    Objectives,
    only_latency,
    problems,
    problems_of_json,
)
from tests import reports
from tests.reports import replica

STRICT = Objectives()


def kinds(report, objectives=STRICT) -> list[str]:
    return [p.kind for p in problems(report, objectives)]


def test_a_sound_run_has_no_problem_under_the_strictest_objectives():
    assert problems(reports.report()) == []
    two = reports.report(replicas=[replica("grpc://a:1"), replica("grpc://b:2")])
    assert problems(two) == []


@pytest.mark.parametrize(
    ("report", "kind", "words"),
    [
        (reports.report(errors={"RequestTimeoutError": 1}), FAILED, "c=4: 1 of 101 requests failed"),
        (
            reports.report(warmup_errors={"ServerUnavailableError": 2}, warmup_responses=10),
            FAILED,
            "2 requests failed during warm-up (ServerUnavailableError×2)",
        ),
        (reports.report(wrong=1), WRONG, "1 wrong answers of 100 verified"),
        (reports.report(verified=99), UNVERIFIED, "1 of 100 answers not verified"),
        (reports.report(verified=0), UNVERIFIED, "c=4: 100 answers and none verified"),
        (reports.report(enabled=False, verified=0), UNVERIFIED, "answers were not verified (--no-verify)"),
        (reports.report(dropped=3), DROPPED, "3 requests dropped"),
        (reports.report(failures=["c=4: the sweep stopped"]), RUN, "the sweep stopped"),
        (reports.report(steps=[]), UNMEASURED, "no step was measured"),
        (
            reports.report(responses=0, verified=0, errors={"ServerUnavailableError": 9}),
            UNMEASURED,
            "c=4: no answer (ServerUnavailableError×9)",
        ),
        (reports.report(executions=0), UNMEASURED, "Triton's statistics show no execution"),
        (
            reports.report(
                replicas=[replica("grpc://a:1"), replica("grpc://b:2", 0, {"ServerUnavailableError": 1})]
            ),
            REPLICA,
            "replica grpc://b:2: no answer (ServerUnavailableError×1)",
        ),
        (
            reports.report(replicas=[replica("grpc://a:1"), replica("grpc://b:2", 40, failovers=3)]),
            REPLICA,
            "replica grpc://b:2: 3 requests failed over to another replica",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)
def test_the_judge_says_no(report, kind, words):
    found = problems(report)
    assert kind in [p.kind for p in found], found
    assert any(words in str(p) for p in found), found
    assert not only_latency(found)


def test_a_missed_p99_is_the_only_problem_that_leaves_a_run_sound():
    found = problems(reports.report(p99_all_ms=120.0), Objectives(p99_ms=100))
    assert [p.kind for p in found] == [LATENCY] and only_latency(found)
    assert "p99 latency above 100 ms at c=4 (worst 120.00 ms" in str(found[0])
    assert problems(reports.report(p99_all_ms=99.0), Objectives(p99_ms=100)) == []
    # failures count at their time to failure: a step with no completed request cannot pass
    timed_out = reports.report(responses=0, verified=0, errors={"RequestTimeoutError": 5}, p99_all_ms=30e3)
    assert LATENCY in kinds(timed_out, Objectives(p99_ms=100))


def test_objectives_relax_only_what_they_name():
    failed = reports.report(errors={"ServerOverloadedError": 5, "RequestTimeoutError": 1})
    shedding = Objectives(allowed_errors={"ServerOverloadedError"})
    assert [str(p) for p in problems(failed, shedding)] == [
        "c=4: 1 of 106 requests failed after warm-up (RequestTimeoutError×1)"
    ]
    assert problems(failed, Objectives(max_error_rate=0.1)) == []
    assert kinds(reports.report(wrong=2), Objectives(max_wrong=2)) == []
    assert kinds(reports.report(dropped=3), Objectives(max_dropped=None)) == []
    assert kinds(reports.report(dropped=3), Objectives(max_dropped=2)) == [DROPPED]
    assert kinds(reports.report(enabled=False, verified=0), Objectives(verify=False)) == []
    sampled = Objectives(every_answer_verified=False)
    assert kinds(reports.report(verified=50), sampled) == []
    assert kinds(reports.report(verified=0), sampled) == [UNVERIFIED]  # sampled, and none checked
    lost = reports.report(replicas=[replica("grpc://a:1"), replica("grpc://b:2", 0)])
    assert kinds(lost, Objectives(tolerate_replica_loss=True)) == []


def test_objectives_check_themselves():
    for bad in ({"p99_ms": 0}, {"max_error_rate": 1.5}, {"max_wrong": -1}, {"max_dropped": -1}):
        with pytest.raises(ObjectiveError):
            Objectives(**bad)


def test_an_unreadable_report_is_a_problem_not_a_pass():
    for text in ("", "{", '{"schema_version": 1}', "[]"):
        (problem,) = problems_of_json(text)
        assert problem.kind == UNMEASURED and "no readable load-test report" in str(problem)
    assert problems_of_json(reports.report().to_json()) == []


# ---- one report, one verdict, whoever asks ----------------------------------------------------

BAD_RUNS = {
    "warm-up failure": reports.report(warmup_errors={"ServerUnavailableError": 1}, warmup_responses=5),
    "wrong answer": reports.report(wrong=1),
    "unverified answers": reports.report(verified=90),
    "dropped requests": reports.report(dropped=2),
    "no execution": reports.report(executions=0),
    "dead second replica": reports.report(
        replicas=[replica("grpc://a:1", 100), replica("grpc://b:2", 0, {"ServerUnavailableError": 1}, 0)]
    ),
}


def _verdicts(report) -> dict[str, bool]:
    """Whether each caller accepts the report: True = sound."""
    from clients.loadtest.verdict import EXIT_OK, exit_code
    from cnn_deploy.drills import judges
    from cnn_deploy.harness import UnverifiedStep, require_verified
    from serving.tune_judge import run_verdict

    try:
        require_verified(report, "c=4")
        harness = True
    except UnverifiedStep:
        harness = False
    soak = judges.SoakFigures(
        planned_s=600, measured_s=600, failed=0, verified=100, wrong=0, memory_per_min_mb=0.0,
        memory_growth=0.0, p99=(9.0, 9.0, 0.0), memory_samples=10,
        problems=tuple(map(str, problems(report, judges.SOAK_OBJECTIVES))),
    )  # fmt: skip
    return {
        "loadtest": exit_code(problems(report, Objectives())) == EXIT_OK,
        "tuner": run_verdict(report, 1000.0)[0] is None,
        "harness": harness,
        "soak drill": all(c.passed for c in judges.judge_soak(soak) if c.judged),
    }


def test_the_load_test_tuner_harness_and_drills_agree_on_one_report():
    assert set(_verdicts(reports.report()).values()) == {True}
    for name, report in BAD_RUNS.items():
        assert set(_verdicts(report).values()) == {False}, (name, _verdicts(report))


def test_the_kill_drill_tolerates_its_killed_replica_and_nothing_more():
    from cnn_deploy.drills.judges import KILL_NO_FAILOVER_OBJECTIVES, KILL_OBJECTIVES

    killed = [
        replica("grpc://a:1", 300),
        replica("grpc://b:2", 40, {"ServerUnavailableError": 2}, failovers=2),
    ]
    assert problems(reports.report(replicas=killed), KILL_OBJECTIVES) == []
    assert kinds(reports.report(replicas=killed)) == [REPLICA]  # the load test's default says no
    failed = reports.report(replicas=killed, errors={"ServerUnavailableError": 2})
    assert kinds(failed, KILL_OBJECTIVES) == [FAILED]  # with failover no request may fail
    assert problems(failed, KILL_NO_FAILOVER_OBJECTIVES) == []  # judge_kill bounds those
    wrong = replace(failed, totals=replace(failed.totals, wrong=1))
    assert kinds(wrong, KILL_NO_FAILOVER_OBJECTIVES) == [WRONG]
