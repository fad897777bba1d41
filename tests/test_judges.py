"""The drills' judges are pure: each is shown keeping its promise on good figures and saying BROKEN
on figures that looser checks would let pass (no server needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cnn_deploy.drills import judges
from cnn_deploy.drills.judges import (
    KillFigures,
    OverloadFigures,
    RestartFigures,
    SoakFigures,
    judge_kill,
    judge_overload,
    judge_restart,
    judge_soak,
    memory_trend,
    p99_drift,
    recovered_after,
)


def broken(checks) -> list[str]:
    return [c.promise for c in checks if c.judged and not c.passed]


KILL = KillFigures(
    failover=True, in_flight_on_killed=2, in_flight_when_noticed=2, failed=0, failed_before_reprobe=2,
    failovers=2,
    survivor_rate_before=10.0, survivor_rate_after=15.0, verified=300, wrong=0,
    restarted_in_s=4.0, answers_after_restart=40,
)  # fmt: skip


def test_kill_with_failover_keeps_its_promises():
    assert broken(judge_kill(KILL)) == []


def test_kill_with_failover_breaks_on_a_single_failed_request():
    # the judge's problems under KILL_OBJECTIVES (tests/test_run_judge.py: a failed request is one)
    failed = replace(KILL, failed=1, problems=("c=4: 1 of 300 requests failed after warm-up",))
    assert any("no request fails" in p for p in broken(judge_kill(failed)))


def test_kill_breaks_when_the_survivor_slows_down():
    assert any("survivor keeps" in p for p in broken(judge_kill(replace(KILL, survivor_rate_after=7.9))))


def test_kill_breaks_when_the_killed_replica_is_not_restarted_in_time_or_takes_no_traffic():
    for late in (None, 31.0):
        problems = broken(judge_kill(replace(KILL, restarted_in_s=late)))
        assert any("restarted by its supervisor" in p for p in problems)
    assert any("takes its share" in p for p in broken(judge_kill(replace(KILL, answers_after_restart=0))))


def test_kill_without_failover_is_held_to_what_was_in_flight():
    off = replace(KILL, failover=False, failed=5, failed_before_reprobe=2)
    assert broken(judge_kill(off)) == []
    # more failed than were on the dead replica: the client kept sending to it
    assert broken(judge_kill(replace(off, failed_before_reprobe=3)))
    # sent between the kill and the first failure: on their way to a dead server, so in the bound
    assert broken(judge_kill(replace(off, in_flight_on_killed=1, in_flight_when_noticed=2))) == []


@pytest.mark.parametrize(
    "problem", ["c=4: 300 answers and none verified", "1 wrong answers of 300 verified (allowed 0)"]
)
def test_every_drill_breaks_on_a_problem_the_judge_found_in_its_run(problem):
    for judge, figures in (
        (judge_kill, KILL),
        (judge_kill, replace(KILL, failover=False)),
        (judge_restart, RESTART),
        (judge_overload, OVERLOAD),
        (judge_soak, SOAK),
    ):
        checks = judge(replace(figures, problems=(problem,)))
        assert any(problem in c.measured for c in checks if not c.passed)


def test_the_restart_drill_judges_the_run_after_the_restart_too():
    assert broken(judge_restart(replace(RESTART, after_problems=("1 wrong answers of 20 verified",))))


def test_each_drill_runs_under_objectives_of_its_own():
    from cnn_deploy_core.judge import Objectives

    assert judges.SOAK_OBJECTIVES == judges.AFTER_RESTART_OBJECTIVES == Objectives()  # the strictest
    assert judges.KILL_OBJECTIVES == Objectives(tolerate_replica_loss=True)
    assert judges.OVERLOAD_OBJECTIVES.allowed_errors == {judges.OVERLOADED}


RESTART = RestartFigures(
    ran_s=31, planned_s=30, restart_s=6, errors={"ServerUnavailableError": 12},
    verified=100, wrong=0, after_verified=20, after_wrong=0, after_failed=0,
)  # fmt: skip


def test_restart_judge():
    assert broken(judge_restart(RESTART)) == []
    assert broken(judge_restart(replace(RESTART, errors={})))  # the crash went unseen
    assert broken(judge_restart(replace(RESTART, problems=("2/s: the sweep stopped",))))
    assert broken(judge_restart(replace(RESTART, after_problems=("c=2: 1 of 40 requests failed",))))


OVERLOAD = OverloadFigures(
    capacity=30, offered=90, sent_per_s=88, dropped=0, alive=True,
    errors={"ServerOverloadedError": 400}, shed_max_s=2.1, queue_timeout_s=2.0,
    slowest_answer_s=2.6, timeout_s=10.0, memory_peaks_mb=(900, 910), rate_before=29.0,
    recovery_windows=[(1.0, 28.0)], recovered_after_s=3.0,
    verified=500, wrong=0,
)  # fmt: skip


def test_overload_keeps_its_promises():
    assert broken(judge_overload(OVERLOAD)) == []


def test_overload_breaks_when_the_server_never_sheds():
    # a closed loop never overloads the server: no ServerOverloadedError, so shedding is unproven
    assert any("sheds load" in p for p in broken(judge_overload(replace(OVERLOAD, errors={}))))


@pytest.mark.parametrize(
    ("change", "promise"),
    [
        (
            {
                "errors": {"ServerOverloadedError": 400, "RequestTimeoutError": 1},
                "problems": ("3/s: 1 of 500 requests failed after warm-up (RequestTimeoutError×1)",),
            },
            "nothing else fails",
        ),
        ({"shed_max_s": 5.0}, "fail fast"),
        ({"sent_per_s": 45.0}, "really was an overload"),
        ({"slowest_answer_s": 10.5}, "within the client's timeout"),
        ({"memory_peaks_mb": (900, 1000)}, "memory levels off"),
        ({"memory_peaks_mb": (0.0, 0.0)}, "memory levels off"),  # no PSS sample: could not measure
        ({"memory_peaks_mb": (900, 0.0)}, "memory levels off"),
        ({"recovered_after_s": 10.5}, "back to 90%"),
        ({"recovered_after_s": None}, "back to 90%"),
        ({"alive": False}, "stays up"),
    ],
)
def test_overload_says_broken(change, promise):
    assert any(promise in p for p in broken(judge_overload(replace(OVERLOAD, **change))))


def test_recovery_is_timed_from_the_end_of_the_overload():
    windows = [(1.0, 5.0), (1.0, 20.0), (1.0, 29.0)]
    assert recovered_after(0.5, windows, rate_before=30) == pytest.approx(3.5)
    assert recovered_after(0.5, windows[:2], rate_before=30) is None


SOAK = SoakFigures(
    planned_s=600, measured_s=600.4, failed=0, verified=20000, wrong=0,
    memory_per_min_mb=0.1, memory_growth=0.01, p99=(80.0, 85.0, 0.0625), memory_samples=120,
)  # fmt: skip


def test_soak_keeps_its_promises():
    assert broken(judge_soak(SOAK)) == []


def test_a_soak_whose_memory_could_not_be_read_is_broken_even_when_short():
    for wear_judged in (True, False):
        problems = broken(judge_soak(replace(SOAK, memory_samples=0), wear_judged=wear_judged))
        assert any("memory (PSS) could be measured" in p for p in problems)


def test_a_soak_of_nine_minutes_is_not_a_ten_minute_soak():
    assert any("full time" in p for p in broken(judge_soak(replace(SOAK, measured_s=540))))


def test_soak_wear_is_judged_on_a_full_soak_only():
    worn = replace(SOAK, memory_growth=0.08, p99=(80.0, 120.0, 0.5))
    assert len(broken(judge_soak(worn))) == 2
    assert broken(judge_soak(worn, wear_judged=False)) == []


def test_memory_is_judged_on_the_fitted_trend_not_two_points():
    # A steady leak that a dip at the last sample hides: the last sample equals the first.
    leak = [(t, 1000 + t / 10) for t in range(0, 600, 5)] + [(600, 1000.0)]
    per_min, growth = memory_trend(leak, from_s=0)
    assert per_min > 4 and growth > judges.MEMORY_GROWTH_LIMIT
    assert any(
        "memory" in p
        for p in broken(judge_soak(replace(SOAK, memory_per_min_mb=per_min, memory_growth=growth)))
    )
    # And a one-off spike at the end of a flat run is no trend.
    flat = [(t, 1000.0) for t in range(0, 600, 5)] + [(600, 1100.0)]
    assert memory_trend(flat, from_s=0)[1] < judges.MEMORY_GROWTH_LIMIT
    assert memory_trend(flat[:2], from_s=0) is None


def test_p99_drift_compares_medians_and_ignores_the_first_window():
    start, end, drift = p99_drift([500.0, 80, 82, 81, 100, 99, 101])
    assert (start, end) == (81, 100) and drift == pytest.approx(19 / 81)
    assert p99_drift([80.0]) is None
