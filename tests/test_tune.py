"""`python -m serving tune` on a tiny search space, on the real server: it finishes, writes the
named config, and a server started with that config passes `verify`."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from serving import ServingError, tune
from serving.config import parse_pbtxt
from serving.repository import ModelState
from tests.conftest import port_args, run_cli

pytestmark = pytest.mark.integration


def test_tune_writes_a_named_config_that_serves_and_verifies(repository, tmp_path):
    repo = tmp_path / "repo"
    for name in ("resnet18", "resnet18_int8", "identity"):
        shutil.copytree(repository / name, repo / name)
    output = tmp_path / "tune.json"
    result = run_cli(
        "serving", "tune", "resnet18", "--p99-ms", "10000", "--budget-s", "300", "--repository", str(repo),
        "--precisions", "fp32,int8", "--plans", "1x2", "--delays", "0", "--max-batch-sizes", "32",
        "--preferred", "none", "--concurrency", "1,2", "--window-s", "1", "--output", str(output),
        home=tmp_path, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert len(report["candidates"]) == 2 and report["winner"] is not None
    for candidate in report["candidates"]:
        assert candidate["rejected"] is None and candidate["points"]
        assert all(p["verified"] > 0 and p["wrong"] == 0 for p in candidate["points"])
    assert output.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    winner = report["winner"]["candidate"]
    model = "resnet18" + ("_int8" if winner["precision"] == "int8" else "")
    tuned = parse_pbtxt((repo / model / "configs" / "tuned.pbtxt").read_text())
    assert tuned.name == model and tuned.instance_group[0].count == 1
    assert ModelState.load(repo / "resnet18").tuned["config_name"] == "tuned"
    assert (repo / "resnet18" / "configs" / "cpu.pbtxt").is_file()  # never overwritten

    ports, grpc = port_args()
    up = run_cli(
        "serving",
        "up",
        "--detach",
        "--config-name",
        "tuned",
        "--repository",
        str(repo),
        *ports,
        home=tmp_path,
    )
    try:
        assert up.returncode == 0, up.stderr
        verify = run_cli("clients", "verify", "--url", f"grpc://127.0.0.1:{grpc}", "--repository", str(repo),
                         "--model", "resnet18", "--model", "resnet18_int8")  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        run_cli("serving", "down", home=tmp_path)


def test_tune_rejects_a_damaged_model_on_the_real_server(repository, tmp_path):
    """The real rejection path: a graph damaged by tests/mutations.py beside its golden set answers
    wrong, the load test's verifier says so, and the candidate loses (no faked `measure`)."""
    import onnx

    from tests.mutations import MUTATIONS

    repo = tmp_path / "repo"
    shutil.copytree(repository / "resnet18", repo / "resnet18")
    model = repo / "resnet18" / "1" / "model.onnx"
    onnx.save(MUTATIONS["scale-conv-1.05"](onnx.load(str(model))), str(model))
    output = tmp_path / "tune.json"
    result = run_cli(
        "serving", "tune", "resnet18", "--p99-ms", "10000", "--budget-s", "300", "--repository", str(repo),
        "--precisions", "fp32", "--plans", "1x1", "--delays", "0", "--max-batch-sizes", "32",
        "--preferred", "none", "--concurrency", "2", "--window-s", "1", "--output", str(output),
        home=tmp_path, timeout=900,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "no configuration of resnet18 met" in result.stderr
    candidates = json.loads(output.read_text())["candidates"]  # the current config and 1x1
    for candidate in candidates:
        assert "wrong answers" in candidate["rejected"] and candidate["best"] is None, candidate
    assert not (repo / "resnet18" / "configs" / "tuned.pbtxt").exists()


def test_tune_refuses_to_overwrite_the_cpu_config_without_force(tmp_path):
    with pytest.raises(Exception, match="would overwrite a generated config"):
        tune.write_tuned("resnet18", tmp_path, tune.Candidate(), config_name="cpu")


def test_a_candidate_with_a_wrong_answer_loses_whatever_its_speed(monkeypatch, tmp_path):
    def fake_measure(name, candidate, repository, space, slo_ms, window_s, progress):
        m = tune.Measured(candidate)
        fast = candidate.precision == "int8"
        point = {"concurrency": 4, "infer_per_s": 200.0 if fast else 50.0, "p50_ms": 5, "p99_ms": 9,
                 "verified": 100, "wrong": 3 if fast else 0, "errors": 0}  # fmt: skip
        m.points = [point]
        if fast:
            m.rejected = "3 wrong answers and 0 errors at c=4 (100 checked)"
        else:
            m.best = point
        return m

    monkeypatch.setattr(tune, "measure", fake_measure)
    (tmp_path / "resnet18").mkdir()
    ModelState().save(tmp_path / "resnet18")
    space = tune.Space(("fp32", "int8"), ((1, 2),), (32,), ((),), (2000,), (4,))
    results = tune.search("resnet18", tmp_path, slo_ms=10, budget_s=60, space=space, window_s=1)
    assert tune.winner(results).candidate.precision == "fp32"
    assert tune.pareto([(9, 50), (9, 200), (20, 100), (5, 40)]) == [(5, 40), (9, 200)]


# ---- the tuner's verdicts (serving/tune_judge.py): each made to say no ----


def _loadtest_report(
    *, responses=100, verified=100, wrong=0, errors=None, dropped=0, enabled=True, failures=()
):
    from cnn_deploy_core.loadtest_report import Latency, LoadTestReport, SloResult, StepResult, Totals

    step = StepResult(
        mode="concurrency", level=4, label="c=4", stable=True, windows=3, windows_run=3, duration_s=3.0,
        requests=responses, responses=responses, inferences=responses, inferences_per_s=50.0,
        requests_per_s=50.0, latency_ms=Latency(5, 6, 7, 9, 10, responses), service_ms=None,
        samples=responses, errors={}, error_rate=0.0, verified=verified, wrong=wrong, server=None,
        generator_cpu_ms_per_request=None, verifier_cpu_ms_per_request=None, window_log=[],
    )  # fmt: skip
    totals = Totals(
        requests=responses + sum((errors or {}).values()), errors=dict(errors or {}), verified=verified,
        wrong=wrong, responses=responses, dropped=dropped,
    )  # fmt: skip
    return LoadTestReport(
        command="python -m clients loadtest", url="grpc://x:1", protocol="grpc", model="resnet18",
        version="1", batch_size=1, mode="concurrency", arrival=None, started_at="2026-01-01T00:00:00",
        duration_s=5.0, settings={}, verification={"enabled": enabled}, steps=[step], totals=totals,
        slo=SloResult({}, True, []), generator={}, generator_capacity=None, failures=list(failures),
    )  # fmt: skip


def test_run_verdict_accepts_only_a_run_where_every_answer_was_verified_and_right():
    from serving.tune_judge import run_verdict

    assert run_verdict(_loadtest_report(), 0) is None
    assert "not verified" in run_verdict(_loadtest_report(verified=99), 0)
    assert "not verified" in run_verdict(_loadtest_report(enabled=False, verified=0), 0)
    assert "no answer" in run_verdict(_loadtest_report(responses=0, verified=0), 0)
    assert "wrong" in run_verdict(_loadtest_report(wrong=1), 0)
    assert "failed requests (2 RequestTimeoutError)" in run_verdict(
        _loadtest_report(errors={"RequestTimeoutError": 2}), 1
    )
    assert "dropped" in run_verdict(_loadtest_report(dropped=3), 0)
    assert "no good response" in run_verdict(_loadtest_report(failures=["c=4: no good response"]), 1)
    assert "exit code 2" in run_verdict(_loadtest_report(), 2)


def test_errors_in_the_warm_up_reject_a_candidate_too():
    """The run totals count the warm-up; a step's own error counts would miss them."""
    from serving.tune_judge import run_verdict

    report = _loadtest_report(errors={"ServerUnavailableError": 1})
    assert report.steps[0].errors == {} and "failed requests" in run_verdict(report, 0)


def test_a_load_test_without_a_report_fails_the_candidate_not_the_search():
    from serving.tune_judge import CandidateFailed, read_loadtest

    good = _loadtest_report().to_json()
    assert read_loadtest(1, good, "", "at c=4").totals.verified == 100  # judged by run_verdict
    with pytest.raises(CandidateFailed, match=r"exit code 1\): error: connection refused"):
        read_loadtest(1, "", "error: connection refused", "on resnet18 at c=4")
    with pytest.raises(CandidateFailed, match="timed out"):
        read_loadtest(None, "", "", "on resnet18 at c=4")
    with pytest.raises(CandidateFailed, match="schema_version"):
        read_loadtest(0, '{"steps": []}', "", "on resnet18 at c=4")


def test_precisions_are_checked_before_any_measurement(tmp_path):
    from serving.tune_judge import check_precisions

    assert check_precisions(("fp32", "int8", "fp32"), has_int8=True) == ("fp32", "int8")
    with pytest.raises(ServingError, match="fp16 not served on CPU"):
        check_precisions(("fp32", "fp16"), has_int8=True)
    with pytest.raises(ServingError, match="none given"):
        check_precisions((), has_int8=True)
    with pytest.raises(ServingError, match="no INT8 export"):
        check_precisions(("int8",), has_int8=False)
    (tmp_path / "resnet18").mkdir()
    result = run_cli("serving", "tune", "resnet18", "--p99-ms", "10", "--precisions", "fp16",
                     "--repository", str(tmp_path), home=tmp_path)  # fmt: skip
    assert result.returncode == 1 and "fp16 not served on CPU" in result.stderr, result.stderr


def test_the_scratch_server_and_the_load_generator_get_cpus_of_their_own():
    server, client = tune.split_cpus()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        assert (server, client) == ((), ())
    else:
        assert client == (cpus[-1],) and set(server) == set(cpus[:-1])
        assert tune.cores() == len(server)


def test_a_failing_candidate_is_rejected_and_the_search_goes_on(monkeypatch, tmp_path):
    from serving.tune_judge import CandidateFailed

    calls = []

    def flaky_loadtest(url, model, c, scratch, window_s, cpus):
        calls.append(model)
        if model.endswith("_int8"):
            raise CandidateFailed(f"the load test timed out on {model} at c={c} after 600s")
        return _loadtest_report(), None

    monkeypatch.setattr(tune, "_loadtest", flaky_loadtest)
    monkeypatch.setattr(tune, "_config", lambda *a: _FakeConfig())
    monkeypatch.setattr(tune, "TritonProcess", _FakeServer)
    for model in ("resnet18", "resnet18_int8"):
        (tmp_path / model).mkdir()
    ModelState().save(tmp_path / "resnet18")
    space = tune.Space(("int8", "fp32"), ((1, 1),), (32,), ((),), (2000,), (4,))
    results = tune.search("resnet18", tmp_path, slo_ms=10, budget_s=60, space=space, window_s=1)
    rejected = {m.candidate.precision: m.rejected for m in results}
    assert "timed out" in rejected["int8"] and rejected["fp32"] is None
    assert tune.winner(results).candidate.precision == "fp32"


class _FakeConfig:
    def to_pbtxt(self) -> str:
        return 'name: "x"\n'


class _FakeServer:
    def __init__(self, opts, log_path=None):
        self.opts = opts

    def start(self):
        return self

    def wait_ready(self, timeout):
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_a_point_over_the_objective_or_without_gain_stops_the_climb():
    from serving.tune_judge import saturated, within_slo

    assert within_slo({"p99_ms": 10.0}, 10) and not within_slo({"p99_ms": 10.1}, 10)
    assert not saturated({"infer_per_s": 106.0}, 100.0) and saturated({"infer_per_s": 104.0}, 100.0)
