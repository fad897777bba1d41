"""The one harness of the benchmarks: a step counts only when every answer was verified and right.

The judge (`step_problems`) is pure and shown saying no to each kind of untrustworthy step; then a
real benchmark (`bench-serving`'s served runs) is shown failing on a damaged model that a server
really serves (tests/mutations.py), where before it measured the damaged model's speed."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import onnx
import pytest

from cnn_deploy.harness import StepFigures, UnverifiedStep, require_verified, step_problems
from serving.repository import CpuPlan
from tests.mutations import MUTATIONS

GOOD = StepFigures(answered=120, verified=120, wrong=0, failed=0)


def test_a_step_whose_every_answer_was_verified_and_right_is_trusted():
    assert step_problems(GOOD) == []


@pytest.mark.parametrize(
    ("figures", "problem"),
    [
        (StepFigures(answered=120, verified=120, wrong=1, failed=0), "1 wrong answers"),
        (StepFigures(answered=120, verified=60, wrong=0, failed=0), "60 of 120 answers verified"),
        (StepFigures(answered=0, verified=0, wrong=0, failed=0), "no answer"),
        (StepFigures(answered=120, verified=120, wrong=0, failed=3), "3 failed requests"),
    ],
)
def test_the_step_judge_says_no(figures, problem):
    problems = step_problems(figures)
    assert any(problem in p for p in problems), problems


def test_failed_requests_are_allowed_only_when_asked():
    figures = StepFigures(answered=120, verified=120, wrong=0, failed=3)
    assert step_problems(figures, allow_failed=True) == []


def _report(requests: int, errors: dict, verified: int, wrong: int, failures=()):
    totals = SimpleNamespace(requests=requests, errors=errors, verified=verified, wrong=wrong)
    return SimpleNamespace(totals=totals, failures=list(failures))


def test_require_verified_raises_one_clear_line():
    with pytest.raises(UnverifiedStep, match=r"c=4: 90 of 100 answers verified"):
        require_verified(_report(100, {}, 90, 0), "c=4")
    with pytest.raises(UnverifiedStep, match="no successful response"):
        require_verified(_report(10, {}, 10, 0, ["c=4: no successful response"]), "c=4")
    good = _report(102, {"RequestTimeoutError": 2}, 100, 0)
    assert require_verified(good, "c=4", allow_failed=True) is good


@pytest.mark.integration
def test_a_benchmark_fails_on_a_damaged_served_model(models_dir, tmp_path):
    """bench-serving measures a damaged resnet18 (its golden set the original's): it must refuse
    to report a figure. Before the harness, its own generator verified nothing."""
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
