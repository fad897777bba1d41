"""`python -m serving tune` on a tiny search space, on the real server: it finishes, A/Bs the winner
against the current config, writes the named config only when the winner is ahead, and a server
started with that config passes `verify`."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from serving import ServingError, tune
from serving.config import parse_pbtxt
from serving.repository import ModelState
from tests.conftest import _has_gpu, port_args, run_cli

pytestmark = pytest.mark.integration
# the A/B's order: the current config first in odd rounds, the winner first in even ones
ALTERNATING = ["current", "winner", "winner", "current", "current", "winner"]


def test_tune_writes_a_named_config_that_serves_and_verifies(repository, tmp_path):
    from cnn_deploy_core import registry
    from serving.repository import CpuPlan, write_configs

    repo = tmp_path / "repo"
    for name in ("resnet18", "resnet18_int8", "identity"):
        shutil.copytree(repository / name, repo / name)
    # A current config with room to win: one intra-op thread on this machine's cores (as placed
    # by `serving repo resnet18 --cpu-threads 1`); the one candidate, 1x2, uses two.
    state = ModelState.load(repo / "resnet18")
    state.cpu = CpuPlan(1, 1)
    write_configs(registry.get("resnet18"), repo / "resnet18", state)
    state.save(repo / "resnet18")
    output = tmp_path / "tune.json"
    result = run_cli(
        "serving", "tune", "resnet18", "--p99-ms", "10000", "--budget-s", "300", "--repository", str(repo),
        "--precisions", "fp32", "--plans", "1x2", "--delays", "0", "--max-batch-sizes", "32",
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
    # Two threads win; before the winner is written, the A/B measures it against the current config
    # on the same server setup, alternately, every run judged sound, the generator's cost reported.
    ab = report["ab"]
    assert ab is not None and ab["ahead"] and ab["winner_vs_current"] > 1, ab
    assert ab["current_model"] == "resnet18" and ab["light_concurrency"] is None  # best at c <= 4
    assert [r["config"] for r in ab["runs"]] == ALTERNATING
    for run in ab["runs"]:
        assert not run["problems"] and run["point"]["verified"] > 0, run
        assert run["point"]["generator_cpu_ms_per_request"] > 0, run
    assert report["written"] and report["verdict"].startswith("A/B: the winner is ahead")
    winner = report["winner"]["candidate"]
    model = "resnet18" + ("_int8" if winner["precision"] == "int8" else "")
    tuned = parse_pbtxt((repo / model / "configs" / "tuned.pbtxt").read_text())
    assert tuned.name == model and tuned.instance_group[0].count == 1
    assert tuned.parameters["intra_op_thread_count"].string_value == "2"
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
        # resnet18 on its tuned config; resnet18_int8, which has none, on its config.pbtxt
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


def test_a_tuners_server_keeps_its_admin_api_behind_a_key(repository):
    """While a tune runs, its scratch server is keyed like every other: loading a model (a Python
    backend runs code) on it takes the key the tuner generated, and the server is strictly ready."""
    import urllib.error
    import urllib.request

    from serving.triton import ADMIN_HEADER, repository_index

    config = (repository / "resnet18" / "configs" / "cpu.pbtxt").read_text()
    with tune._scratch_server(repository, "resnet18", config) as (opts, _scratch):
        assert opts.admin_key and not opts.admin_key.startswith("-")
        request = urllib.request.Request(f"{opts.http_url}/v2/repository/index", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code in (401, 403), refused.value
        wrong = urllib.request.Request(
            f"{opts.http_url}/v2/repository/index", data=b"{}", method="POST", headers={ADMIN_HEADER: "x"}
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(wrong, timeout=10)
        assert [m["state"] for m in repository_index(opts.http_url, opts.admin_key)] == ["READY"]
        with urllib.request.urlopen(f"{opts.http_url}/v2/health/ready", timeout=10) as ready:
            assert ready.status == 200


def test_tune_refuses_to_overwrite_the_cpu_config_without_force(tmp_path):
    with pytest.raises(Exception, match="would overwrite a generated config"):
        tune.write_tuned("resnet18", tmp_path, tune.Candidate(), config_name="cpu")


def test_a_candidate_with_a_wrong_answer_loses_whatever_its_speed(monkeypatch, tmp_path):
    def fake_measure(name, candidate, repository, space, slo_ms, window_s, progress, device="cpu"):
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


def test_run_verdict_accepts_only_a_run_the_judge_finds_sound():
    """The tuner asks cnn_deploy_core.judge (tests/test_run_judge.py shows each rule saying no)."""
    from serving.tune_judge import run_verdict
    from tests import reports

    assert run_verdict(reports.report(), 10.0) == (None, True)
    assert "not verified" in run_verdict(reports.report(verified=99), 10.0)[0]
    assert "not verified" in run_verdict(reports.report(enabled=False, verified=0), 10.0)[0]
    assert "no answer" in run_verdict(reports.report(responses=0, verified=0), 10.0)[0]
    assert "wrong" in run_verdict(reports.report(wrong=1), 10.0)[0]
    assert "RequestTimeoutError×2" in run_verdict(reports.report(errors={"RequestTimeoutError": 2}), 10.0)[0]
    assert "dropped" in run_verdict(reports.report(dropped=3), 10.0)[0]
    assert "no good response" in run_verdict(reports.report(failures=["c=4: no good response"]), 10.0)[0]
    # a missed p99 does not disqualify: the climb stops there
    assert run_verdict(reports.report(p99_all_ms=12.0), 10.0) == (None, False)


def test_errors_in_the_warm_up_reject_a_candidate_too():
    """The run totals count the warm-up; a step's own error counts would miss them."""
    from serving.tune_judge import run_verdict
    from tests import reports

    report = reports.report(warmup_errors={"ServerUnavailableError": 1}, warmup_responses=5)
    assert report.steps[0].all_errors == {} and "failed during warm-up" in run_verdict(report, 10.0)[0]


def test_a_load_test_without_a_report_fails_the_candidate_not_the_search():
    from serving.tune_judge import CandidateFailed, read_loadtest
    from tests import reports

    good = reports.report().to_json()
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


def test_the_tuner_searches_the_whole_machine_and_writes_no_core_count():
    """Its plans are instance counts whose threads the serving policy sets (0) on whatever machine
    serves them: a config tuned on 2 cores must not cap a bigger machine at 2 threads."""
    from serving.threads import available_cores

    assert tune.cores() == available_cores()
    space = tune.default_space(32, 2, has_int8=False)
    assert space.plans == ((1, 0), (2, 0)) and tune.Candidate().threads == 0
    assert {n for n, _ in tune.default_space(32, 8, has_int8=False).plans} == {1, 2, 8}
    assert "2xauto" in tune.Candidate(instances=2).label()


def test_a_failing_candidate_is_rejected_and_the_search_goes_on(monkeypatch, tmp_path):
    from serving.tune_judge import CandidateFailed

    calls = []

    from tests import reports

    def flaky_loadtest(url, model, c, scratch, window_s, slo_ms):
        calls.append(model)
        if model.endswith("_int8"):
            raise CandidateFailed(f"the load test timed out on {model} at c={c} after 600s")
        return reports.report(), None, True

    monkeypatch.setattr(tune, "_loadtest", flaky_loadtest)
    monkeypatch.setattr(tune, "_config", lambda *a: _FakeConfig())
    servers = []
    monkeypatch.setattr(tune, "serve", lambda opts, *a, **k: servers.append(opts) or _FakeServer(opts))
    for model in ("resnet18", "resnet18_int8"):
        (tmp_path / model).mkdir()
    ModelState().save(tmp_path / "resnet18")
    space = tune.Space(("int8", "fp32"), ((1, 1),), (32,), ((),), (2000,), (4,))
    results = tune.search("resnet18", tmp_path, slo_ms=10, budget_s=60, space=space, window_s=1)
    rejected = {m.candidate.precision: m.rejected for m in results}
    assert "timed out" in rejected["int8"] and rejected["fp32"] is None
    assert tune.winner(results).candidate.precision == "fp32"
    # every scratch server gets the cores `serving up`'s would: none are held back for the generator
    assert servers and all(opts.cpus == () for opts in servers)


class _FakeConfig:
    def __init__(self, text: str = 'name: "x"'):
        self.text = text

    def to_pbtxt(self) -> str:
        return self.text + "\n"


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
    from serving.tune_judge import run_verdict, saturated
    from tests import reports

    assert run_verdict(reports.report(p99_all_ms=10.0), 10)[1]
    assert not run_verdict(reports.report(p99_all_ms=10.1), 10)[1]
    assert not saturated({"infer_per_s": 106.0}, 100.0) and saturated({"infer_per_s": 104.0}, 100.0)


# ---- the A/B before anything is written (serving/tune_judge.py: ab_verdict) ----


def _rounds(current, winner, *, current_within=True, winner_within=True, problems=()):
    from serving.tune_judge import AbRound

    return [
        AbRound(c, w, current_within, winner_within, tuple(problems) if i == 0 else ())
        for i, (c, w) in enumerate(zip(current, winner, strict=True))
    ]


def test_the_ab_refuses_a_slower_winner():
    from serving.tune_judge import ab_verdict

    ahead, why = ab_verdict(_rounds([54.1, 53.8, 54.5], [29.4, 30.1, 29.0]))
    assert not ahead and "0.54" in why and "not ahead" in why


def test_the_ab_accepts_only_a_winner_clearly_and_repeatedly_ahead():
    from serving.tune_judge import AB_MIN_GAIN, ab_verdict

    assert ab_verdict(_rounds([50, 51, 49], [60, 61, 59]))[0]
    assert not ab_verdict(_rounds([50, 50, 50], [50.5, 50.4, 50.6]))[0]  # a tie is not worth a config
    assert not ab_verdict(_rounds([50, 50, 50], [50 * AB_MIN_GAIN * 0.99] * 3))[0]
    # a busy machine: the median says 1.11x, but the winner lost a round
    ahead, why = ab_verdict(_rounds([31.4, 39.1, 61.3], [74.9, 43.3, 38.9]))
    assert not ahead and "faster in 2 of 3" in why
    assert not ab_verdict(_rounds([50, 50], [80, 80]))[0]  # fewer than 3 rounds
    assert not ab_verdict(_rounds([50, 50, 50], [80, 80, 80], winner_within=False))[0]
    # the current config over the p99 objective where the winner meets it: the winner is ahead
    assert ab_verdict(_rounds([60, 60, 60], [50, 50, 50], current_within=False))[0]


def test_the_ab_refuses_a_winner_slower_under_light_load():
    """Measured: an INT8 winner (2 instances, 8 ms queue delay) 2.9x the current config at c=32
    served resnet18_int8 at 0.6x its own current config at c=4: the A/B says no."""
    from dataclasses import replace

    from serving.tune_judge import AB_LIGHT_CONCURRENCY, AB_LIGHT_FLOOR, ab_verdict

    def light(rounds, current, winner):
        return [
            replace(r, light_current_infer_per_s=c, light_winner_infer_per_s=w)
            for r, c, w in zip(rounds, current, winner, strict=True)
        ]

    fast_at_its_load = _rounds([123.8, 123.3, 120.6], [346.2, 351.8, 372.8])
    ahead, why = ab_verdict(light(fast_at_its_load, [306.0, 301.2, 288.0], [180.8, 183.6, 181.0]))
    assert not ahead and f"slower at c={AB_LIGHT_CONCURRENCY}" in why and "0.6" in why
    floor = 100 * AB_LIGHT_FLOOR
    assert ab_verdict(light(fast_at_its_load, [100, 100, 100], [floor, floor, floor]))[0]
    assert not ab_verdict(light(fast_at_its_load, [100, 100, 100], [floor * 0.99] * 3))[0]
    ahead, why = ab_verdict(light(fast_at_its_load, [100, 0.0, 100], [100, 100, 100]))
    assert not ahead and "answered nothing" in why  # no light figure is no pass


def test_an_unsound_ab_run_rejects_the_winner_whatever_its_speed():
    from serving.tune_judge import ab_verdict

    ahead, why = ab_verdict(_rounds([50, 50, 50], [90, 90, 90], problems=["winner: 1 wrong answers"]))
    assert not ahead and "not sound" in why and "wrong" in why


def test_tune_writes_nothing_when_the_ab_finds_the_winner_slower(monkeypatch, tmp_path, capsys):
    """The search's winner (fp32 2 instances, faster in the search) loses the A/B: the command says
    the current config is best here, exits 0, writes no config, and its report holds the A/B."""
    from serving.cli import main
    from tests import reports

    def fake_measure(name, candidate, repository, space, slo_ms, window_s, progress, device="cpu"):
        m = tune.Measured(candidate)
        point = {"concurrency": 4, "infer_per_s": 50.0 * candidate.instances, "p50_ms": 5, "p99_ms": 9,
                 "verified": 100, "wrong": 0, "errors": 0}  # fmt: skip
        m.points, m.best = [point], point
        return m

    served = []

    def slower_loadtest(url, model, c, scratch, window_s, slo_ms):
        config = (scratch / "repo" / model / "configs" / "cpu.pbtxt").read_text()
        served.append(config)
        step = dataclasses.replace(reports.step(), inferences_per_s=30.0 if "count: 2" in config else 54.0)
        return reports.report(steps=[step]), None, True

    monkeypatch.setattr(tune, "measure", fake_measure)
    monkeypatch.setattr(tune, "_loadtest", slower_loadtest)
    monkeypatch.setattr(tune, "serve", lambda opts, *a, **k: _FakeServer(opts))
    monkeypatch.setattr(tune, "_config", lambda *a: _FakeConfig("count: 2"))
    model = tmp_path / "resnet18"
    (model / "configs").mkdir(parents=True)
    (model / "configs" / "cpu.pbtxt").write_text('name: "resnet18"\n')
    ModelState().save(model)
    output = tmp_path / "tune.json"
    code = main(["tune", "resnet18", "--p99-ms", "100", "--repository", str(tmp_path), "--precisions", "fp32",
                 "--plans", "1,2", "--delays", "0", "--max-batch-sizes", "32", "--preferred", "none",
                 "--output", str(output)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and "the current config is best here" in out, out + err
    report = json.loads(output.read_text())
    assert report["winner"]["candidate"]["instances"] == 2 and report["written"] is None
    ab = report["ab"]
    assert not ab["ahead"] and ab["winner_vs_current"] == pytest.approx(30 / 54)
    assert len(ab["runs"]) == 6 and len(served) == 6
    assert [r["config"] for r in ab["runs"]] == ALTERNATING
    assert not (model / "configs" / "tuned.pbtxt").exists() and ModelState.load(model).tuned is None


def test_an_int8_winner_is_measured_against_its_own_models_config_and_at_light_load(monkeypatch, tmp_path):
    """The A/B runs the config the winner would replace (`<name>_int8`'s for an INT8 winner), at
    4 clients and at the winner's concurrency; a winner best at 2 clients is held to 2 only."""
    from tests import reports

    calls = []

    def loadtest(url, model, c, scratch, window_s, slo_ms):
        config = (scratch / "repo" / model / "configs" / "cpu.pbtxt").read_text()
        calls.append((model, c, "winner" if "count: 2" in config else "current"))
        fast = 300.0 if "count: 2" in config else 250.0
        slow_at_four = "count: 2" in config and c == 4
        step = dataclasses.replace(reports.step(), inferences_per_s=200.0 if slow_at_four else fast)
        return reports.report(steps=[step]), None, True

    monkeypatch.setattr(tune, "_loadtest", loadtest)
    monkeypatch.setattr(tune, "serve", lambda opts, *a, **k: _FakeServer(opts))
    monkeypatch.setattr(tune, "_config", lambda *a: _FakeConfig("count: 2"))
    for name in ("resnet18", "resnet18_int8"):
        (tmp_path / name / "configs").mkdir(parents=True)
        (tmp_path / name / "configs" / "cpu.pbtxt").write_text(f'name: "{name}"\n')
    winner = tune.Measured(tune.Candidate("int8", 2, 0, 32, (), 2000))

    winner.best = {"concurrency": 16, "infer_per_s": 300.0}
    ab = tune.ab_test("resnet18", tmp_path, winner, slo_ms=400, window_s=1)
    assert {m for m, _, _ in calls} == {"resnet18_int8"} and ab.current_model == "resnet18_int8"
    assert [c for _, c, _ in calls[:2]] == [4, 16] and len(calls) == 12  # 6 runs, 2 loads each
    assert not ab.ahead and "slower at c=4" in ab.why and ab.to_dict()["light_concurrency"] == 4

    calls.clear()
    winner.best = {"concurrency": 2, "infer_per_s": 300.0}
    ab = tune.ab_test("resnet18", tmp_path, winner, slo_ms=400, window_s=1)
    assert [c for _, c, _ in calls] == [2] * 6 and ab.light is None and ab.ahead


def test_a_new_tune_of_the_other_precision_replaces_the_old_tuned_file(repository, tmp_path):
    """`--config-name tuned` serves one tuned config per model: an INT8 winner after an fp32 one
    removes `<name>/configs/tuned.pbtxt`, and the other way round."""
    for name in ("resnet18", "resnet18_int8"):
        shutil.copytree(repository / name, tmp_path / name)
    fp32_file = tmp_path / "resnet18" / "configs" / "tuned.pbtxt"
    int8_file = tmp_path / "resnet18_int8" / "configs" / "tuned.pbtxt"
    assert tune.write_tuned("resnet18", tmp_path, tune.Candidate("fp32", 2)) == fp32_file
    assert fp32_file.is_file() and not int8_file.exists()
    assert tune.write_tuned("resnet18", tmp_path, tune.Candidate("int8", 2)) == int8_file
    assert int8_file.is_file() and not fp32_file.exists()
    tune.write_tuned("resnet18", tmp_path, tune.Candidate("fp32", 1))
    assert fp32_file.is_file() and not int8_file.exists()


# ---- the GPU search space (`serving tune --device gpu`): pure, checked without a GPU ----


def test_the_gpu_space_is_built_around_the_registrys_gpu_sizing():
    from cnn_deploy_core.registry import get

    resnet50 = tune.gpu_space(get("resnet50"), has_s8s8=False)
    assert resnet50.max_batch_sizes == (128, 64, 32) and resnet50.plans == ((1, 0), (2, 0), (3, 0))
    assert resnet50.preferred == ((64, 128), ()) and resnet50.delays == (0, 500, 2000)
    assert resnet50.precisions == ("fp16", "fp32") and resnet50.concurrency[-1] == 256
    assert tune.gpu_space(get("resnet50"), has_s8s8=True).precisions == ("fp16", "fp32", "int8")
    assert max(tune.gpu_space(get("vgg16"), has_s8s8=False).max_batch_sizes) == 64
    assert max(tune.gpu_space(get("resnet18"), has_s8s8=False).max_batch_sizes) == 256
    # the search starts from the gpu config `serving up` serves: a point of the space
    start = tune.current_candidate(get("resnet50"), None, "gpu")
    assert (start.precision, start.instances, start.max_batch_size) == ("fp16", 2, 128)
    assert start.preferred in resnet50.preferred and start.queue_delay_us in resnet50.delays


def test_a_gpu_candidate_is_the_gpu_config_with_its_settings(tmp_path):
    from cnn_deploy_core.golden import TOLERANCE_PARAM
    from cnn_deploy_core.registry import get
    from serving.repository import gpu_config, int8_gpu_config, served_versions
    from tests.test_serving_config import _version_dir

    _version_dir(tmp_path / "resnet50", 1)
    served, arch = served_versions(tmp_path / "resnet50"), get("resnet50")
    start = tune.current_candidate(arch, None, "gpu")
    assert tune.gpu_candidate_config(arch, served, start) == gpu_config(arch, served)
    int8 = dataclasses.replace(start, precision="int8")
    assert tune.gpu_candidate_config(arch, served, int8) == int8_gpu_config(arch, served)

    fp32 = tune.gpu_candidate_config(
        arch,
        served,
        dataclasses.replace(start, precision="fp32", max_batch_size=32, instances=3, queue_delay_us=0),
    )
    parsed = parse_pbtxt(fp32.to_pbtxt())
    assert parsed.default_model_filename == "model.onnx" and parsed.max_batch_size == 32
    assert parsed.instance_group[0].count == 3 and parsed.instance_group[0].kind == 1  # KIND_GPU
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 0
    assert not parsed.dynamic_batching.preferred_batch_size  # (64, 128) exceed the max: none left
    (trt,) = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.parameters["precision_mode"] == "FP32"
    profile = {k: trt.parameters[f"trt_profile_{k}_shapes"] for k in ("opt", "max")}
    assert profile == {"opt": "input:32x3x224x224", "max": "input:32x3x224x224"}  # no preferred: the max
    # TensorRT may run FP32 in TF32: held to the FP16 bound
    assert parsed.parameters[TOLERANCE_PARAM].string_value == "fp16"


def test_gpu_precisions_are_checked_before_any_measurement():
    from serving.tune_judge import check_precisions

    assert check_precisions(("fp32", "fp16", "fp32"), has_int8=False, device="gpu") == ("fp32", "fp16")
    with pytest.raises(ServingError, match="bf16 not served on the GPU"):
        check_precisions(("fp16", "bf16"), has_int8=True, device="gpu")
    with pytest.raises(ServingError, match="no S8S8 INT8 file"):
        check_precisions(("int8",), has_int8=False, device="gpu")


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_tune_on_the_gpu_without_one_says_so_in_one_line_and_exits_2(tmp_path):
    output = tmp_path / "tune.json"
    result = run_cli("serving", "tune", "resnet50", "--p99-ms", "10", "--device", "gpu", "--repository",
                     str(tmp_path), "--output", str(output), home=tmp_path)  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: no GPU: --device gpu") and not output.exists()
