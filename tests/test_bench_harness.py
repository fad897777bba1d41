"""The one harness of the benchmarks: a step counts only when every answer was verified and right.

The harness asks the one judge (cnn_deploy_core.judge, shown saying no rule by rule in
tests/test_run_judge.py) and raises one line naming each problem; then a
real benchmark (`bench-serving`'s served runs) is shown failing on a damaged model that a server
really serves (tests/mutations.py) instead of reporting the damaged model's speed."""

from __future__ import annotations

import shutil

import onnx
import pytest

from cnn_deploy.harness import UnverifiedStep, require_verified
from cnn_deploy_core.judge import Objectives
from serving.repository import CpuPlan
from tests import reports
from tests.mutations import MUTATIONS


def test_a_step_the_judge_finds_sound_is_trusted():
    good = reports.report()
    assert require_verified(good, "c=4") is good


@pytest.mark.parametrize(
    ("report", "problem"),
    [
        (reports.report(wrong=1), "1 wrong answers"),
        (reports.report(verified=60), "40 of 100 answers not verified"),
        (reports.report(responses=0, verified=0), "no answer"),
        (reports.report(errors={"RequestTimeoutError": 3}), "3 of 103 requests failed"),
        (reports.report(warmup_errors={"RequestTimeoutError": 1}, warmup_responses=5), "during warm-up"),
        (reports.report(failures=["c=4: the sweep stopped"]), "the sweep stopped"),
    ],
)
def test_require_verified_raises_one_clear_line_naming_each_problem(report, problem):
    with pytest.raises(UnverifiedStep, match=r"^c=4: .*no figure of it is reported$") as raised:
        require_verified(report, "c=4")
    assert problem in str(raised.value) and "\n" not in str(raised.value)


def test_failed_requests_are_allowed_only_when_the_objectives_say_so():
    failed = reports.report(errors={"RequestTimeoutError": 3})
    assert require_verified(failed, "c=4", objectives=Objectives(max_error_rate=0.05)) is failed


@pytest.mark.integration
def test_a_benchmark_fails_on_a_damaged_served_model(models_dir, tmp_path):
    """bench-serving measures a damaged resnet18 (its golden set the original's): it must refuse
    to report a figure: the harness, not the benchmark, verifies every answer."""
    from cnn_deploy.bench.serving import served
    from cnn_deploy_core.console import stderr

    damaged = tmp_path / "models"
    shutil.copytree(models_dir / "resnet18", damaged / "resnet18")
    model = damaged / "resnet18" / "model.onnx"
    onnx.save(MUTATIONS["scale-conv-1.05"](onnx.load(str(model))), str(model))
    with pytest.raises(UnverifiedStep, match="wrong answers"):
        served(damaged, "resnet18", CpuPlan(1, 2), 2000, [2], 1.0, stderr)


@pytest.mark.integration
def test_the_same_benchmark_reports_the_undamaged_model(models_dir):
    """The control: through the same harness, the undamaged export's every answer is verified."""
    from cnn_deploy.bench.serving import served
    from cnn_deploy_core.console import stderr

    (run,) = served(models_dir, "resnet18", CpuPlan(1, 2), 2000, [2], 1.0, stderr)
    assert run.verified > 0 and run.images_per_s > 0


def test_served_figures_are_averaged_point_by_point_over_the_rounds():
    from cnn_deploy.bench.serving import ServedRun, mean_runs

    def point(c, rate, batch, verified=10):
        return ServedRun(1, 0, "turns", 2000, c, rate, batch, verified)

    rounds = [[point(2, 20.0, 2.0), point(8, 24.0, 4.0)], [point(2, 22.0, 2.0), point(8, 18.0, 3.0)]]
    mean = mean_runs(rounds)
    assert [(r.concurrency, r.images_per_s, r.avg_server_batch, r.verified) for r in mean] == [
        (2, 21.0, 2.0, 20),
        (8, 21.0, 3.5, 20),
    ]
    with pytest.raises(ValueError, match="same points"):
        mean_runs([rounds[0], rounds[1][:1]])


def test_perf_analyzer_is_measured_again_once_when_its_windows_never_agreed():
    from cnn_deploy.bench.loadgen import PerfAnalyzerFailed, Point, perf_analyzer_point

    point = Point("perf_analyzer", "identity", 1, 100.0, 1.0, 2.0, 0.1, 500)

    def runs(*outcomes):
        queue = list(outcomes)

        def measure():
            outcome = queue.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        return measure, queue

    unstable = PerfAnalyzerFailed("perf_analyzer failed: Failed to obtain stable measurement", unstable=True)
    measure, left = runs(point)
    assert perf_analyzer_point(measure, "identity c=1") is point and not left
    measure, left = runs(unstable, point)  # the report says which figure took a second run
    assert perf_analyzer_point(measure, "identity c=1").measured_again and not left
    measure, left = runs(unstable, unstable, point)  # twice unstable: the benchmark fails
    with pytest.raises(PerfAnalyzerFailed, match="stable measurement"):
        perf_analyzer_point(measure, "identity c=1")
    measure, left = runs(PerfAnalyzerFailed("perf_analyzer failed: connection refused"), point)
    with pytest.raises(PerfAnalyzerFailed, match="refused"):  # any other failure: no second try
        perf_analyzer_point(measure, "identity c=1")
    assert left == [point]
