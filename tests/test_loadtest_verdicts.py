"""Verdicts that cannot flatter: the load test's figures and what cnn_deploy_core.judge makes of them.

Errors and the SLO's p99 are judged over every request after warm-up (failures at their time to
failure), dropped arrivals are counted, every request ends as an answer or a classified error,
verification is on by default, secrets never reach a report, and the exit code tells a failed run
from a missed latency objective. A fake transport drives the real runner; no server.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections import Counter
from dataclasses import replace

import aiohttp
import numpy as np
import pytest
from rich.console import Console

from clients import LoadTestError, RequestTimeoutError
from clients.loadtest.cli import add_parser
from clients.loadtest.config import LoadTestConfig
from clients.loadtest.measure import StepContext, StepLog, Window, breakdowns, step_result
from clients.loadtest.prepare import checked
from clients.loadtest.report import summary_lines, summary_table, write_reports
from clients.loadtest.runner import _Sweep
from clients.loadtest.transport import RAW
from clients.loadtest.verdict import EXIT_FAILED, EXIT_OK, EXIT_SLO_MISSED, exit_code
from clients.loadtest.verifier import InlineVerifier
from clients.loadtest.workload import Workload
from cnn_deploy_core.judge import (
    FAILED,
    LATENCY,
    UNMEASURED,
    WRONG,
    Objectives,
    problems,
    slo_result,
)
from cnn_deploy_core.loadtest_report import (
    SCHEMA_VERSION,
    LoadTestReport,
    ReportSchemaError,
    SloResult,
    Totals,
)
from cnn_deploy_core.secrets import redact_command, redact_url

ROWS, CLASSES = 4, 10
EXPECTED = np.random.default_rng(0).standard_normal((ROWS, CLASSES)).astype(np.float32)


class Scripted:
    """A transport whose n-th request does what `script(n)` says: ("ok", seconds) answers after that
    long, ("raise", seconds, exception) fails after that long."""

    description = "scripted"

    def __init__(self, script):
        self.script, self.calls = script, 0

    async def send(self, item: int, slot: int):
        n, self.calls = self.calls, self.calls + 1
        action = self.script(n)
        await asyncio.sleep(action[1])
        if action[0] == "raise":
            raise action[2]
        return RAW, EXPECTED[item % ROWS].tobytes()


def _workload() -> Workload:
    inputs = np.arange(ROWS * 2, dtype=np.float32).reshape(ROWS, 2)
    return Workload(inputs, EXPECTED, batch_size=1, check="golden", atol=1e-5, rtol=1e-4)


def _run(transport, *, verifier=None, **config) -> _Sweep:
    settings = {"warmup_s": 0.2, "window_s": 0.3, "max_windows": 6, "max_step_s": 4.0, "min_samples": 20}
    cfg = LoadTestConfig(url="grpc://fake:1", model="fake", **{**settings, **config})
    workload = _workload()
    verifier = verifier or InlineVerifier(workload, (CLASSES,))

    async def stats():
        return None

    sweep = _Sweep(transport, verifier, cfg, workload, stats, None, version="1", request_bytes=[8])
    asyncio.run(sweep.run())
    return sweep


# ---- every request after warm-up is judged --------------------------------------------------


def _window(start: float, answers: int, errors: int = 0, *, seconds: float = 0.01) -> Window:
    w = Window(start=start, end=start + 1.0, response=[seconds] * answers, service=[seconds] * answers)
    w.errors = Counter({"RequestTimeoutError": errors} if errors else {})
    return w


def _context(**kw) -> StepContext:
    base = dict(
        mode="concurrency",
        level=1,
        label="c=1",
        model="m",
        batch_size=1,
        verified=100,
        wrong=0,
        generator_cpu_ms_per_request=None,
        verifier_cpu_ms_per_request=None,
    )
    return StepContext(**{**base, **kw})


def test_errors_in_a_discarded_window_fail_the_step():
    # The first window (after warm-up) failed 5 requests; the last three agreed and were clean.
    windows = [_window(0, 95, errors=5), _window(1, 100), _window(2, 100), _window(3, 100)]
    log = StepLog(response=[0.01] * 395, failed=[0.5] * 5, errors=Counter(RequestTimeoutError=5))
    step = step_result(_context(), windows, 3, log)
    assert step.errors == {} and step.error_rate == 0  # the kept windows alone look clean...
    assert step.all_errors == {"RequestTimeoutError": 5} and step.all_requests == 400
    found = problems(_report(steps=[step]))
    assert [p.kind for p in found] == [FAILED]  # ... but the step is judged on all of them
    assert problems(_report(steps=[step]), Objectives(max_error_rate=0.02)) == []  # 5/400 is within 2%


def test_timeouts_count_at_their_time_to_failure_in_the_judged_p99():
    # Half the requests answer in 10 ms, half time out after 300 ms.
    sweep = _run(
        Scripted(lambda n: ("ok", 0.01) if n % 2 else ("raise", 0.3, RequestTimeoutError("slow"))),
        levels=(4,),
    )
    (step,) = sweep.steps
    assert step.latency_ms.p99 < 100  # the answers alone: fast
    assert step.latency_all_ms.p99 >= 290  # every request: the timeouts are there
    objectives = Objectives(p99_ms=100, max_error_rate=1.0)
    report = _report(objectives, sweep=sweep)
    assert not report.slo.passed and report.slo.failing == []  # a latency miss alone...
    found = problems(report, objectives)
    assert [p.kind for p in found] == [LATENCY] and exit_code(found) == EXIT_SLO_MISSED  # ... exits 99


def test_arrivals_due_while_a_step_decides_to_stop_are_not_dropped(monkeypatch):
    """The step's own end-of-window work holds the event loop (here 60 ms, at 200 arrivals/s):
    arrivals due meanwhile, after the last window closed, are not the generator falling behind."""
    import clients.loadtest.runner as runner

    real = runner.agreeing_suffix

    def slow(windows, stability):
        time.sleep(0.06)  # blocks the loop, as sorting a long soak's windows does
        return real(windows, stability)

    monkeypatch.setattr(runner, "agreeing_suffix", slow)
    sweep = _run(Scripted(lambda n: ("ok", 0.001)), mode="rate", levels=(200,), max_windows=3)
    (step,) = sweep.steps
    assert step.dropped == 0 and sweep.totals.dropped == 0
    assert not sweep.totals.errors and sweep.totals.wrong == 0


def test_arrivals_never_sent_when_a_step_ends_are_dropped_and_shown():
    # 50/s offered, one request in flight at most, each taking 0.2 s: arrivals pile up unsent.
    sweep = _run(Scripted(lambda n: ("ok", 0.2)), mode="rate", levels=(50,), max_outstanding=1)
    (step,) = sweep.steps
    assert step.dropped > 10 and sweep.totals.dropped == step.dropped
    report = _report(sweep=sweep, mode="rate")
    data = report.to_dict()
    text = _render(data)
    assert "drop-" in text and str(step.dropped) in text
    assert any("dropped" in line for line in summary_lines(data))
    # ... and judged: a dropped request fails the run unless --max-dropped allows it
    found = problems(report)
    assert any(f"{step.dropped} requests dropped" in str(p) for p in found)
    assert exit_code(found) == EXIT_FAILED
    assert problems(report, Objectives(max_dropped=step.dropped)) == []


@pytest.mark.parametrize(
    "exception",
    [aiohttp.ClientPayloadError("answer cut short"), RuntimeError("a bug in a transport")],
    ids=["payload", "runtime"],
)
def test_every_request_ends_as_an_answer_or_a_classified_error_in_rate_mode(exception):
    transport = Scripted(lambda n: ("raise", 0.005, exception) if n % 3 == 0 else ("ok", 0.005))
    sweep = _run(transport, mode="rate", levels=(100,))
    totals = sweep.totals
    assert totals.requests == transport.calls  # nothing vanished in an unawaited task
    assert totals.responses + sum(totals.errors.values()) == totals.requests
    kind = "ServerUnavailableError" if isinstance(exception, aiohttp.ClientPayloadError) else "InferenceError"
    assert set(totals.errors) == {kind}
    (step,) = sweep.steps
    assert step.all_errors.get(kind, 0) > 0 and FAILED in [p.kind for p in problems(_report(sweep=sweep))]


def test_an_answer_the_verifier_cannot_take_is_an_error():
    class BrokenVerifier(InlineVerifier):
        def submit(self, *args):
            raise BrokenPipeError("the verifier process is gone")

    workload = _workload()
    broken = BrokenVerifier(workload, (CLASSES,))
    sweep = _run(Scripted(lambda n: ("ok", 0.005)), verifier=broken, levels=(2,))
    assert sweep.totals.responses == 0 and set(sweep.totals.errors) == {"LoadTestError"}
    assert sweep.totals.requests > 0


def test_a_dead_verifier_process_is_a_clear_error_not_a_traceback():
    from clients.loadtest.verifier import ProcessVerifier

    verifier = ProcessVerifier(_workload(), (CLASSES,))
    verifier._process.kill()
    verifier._process.wait()
    with pytest.raises(LoadTestError, match="verifier process stopped"):
        verifier.take(1)
    verifier.close()


# ---- verification on by default ---------------------------------------------------------------


def test_a_model_whose_answers_cannot_be_checked_is_an_error_unless_no_verify():
    config = LoadTestConfig(url="grpc://fake:1", model="m")
    unverifiable = replace(_workload(), check="none", reason="no golden set at /x")
    with pytest.raises(LoadTestError, match=r"cannot be verified .*--no-verify"):
        checked(unverifiable, config)
    opted_out = checked(_workload(), replace(config, verify=False))
    assert not opted_out.enabled
    assert opted_out.describe(1.0)["summary"].startswith("not verified")


def test_a_step_with_answers_and_none_verified_fails():
    sweep = _run(Scripted(lambda n: ("ok", 0.005)), levels=(1,), verify_fraction=0.0)
    answers = sweep.steps[0].all_responses
    sampled = Objectives(every_answer_verified=False)  # what --verify-fraction below 1 asks
    found = problems(_report(sweep=sweep), sampled)
    assert [str(p) for p in found] == [f"c=1: {answers} answers and none verified"]
    assert problems(_report(sweep=sweep), Objectives(verify=False)) == []  # --no-verify


def test_a_step_without_an_answer_fails_the_run():
    windows = [_window(0, 0, errors=3), _window(1, 0, errors=3), _window(2, 0, errors=3)]
    log = StepLog(failed=[0.1] * 9, errors=Counter(ServerUnavailableError=9))
    step = step_result(_context(verified=0), windows, 0, log)
    found = problems(_report(steps=[step]), Objectives(max_error_rate=1.0))
    assert [(p.kind, str(p)) for p in found] == [(UNMEASURED, "c=1: no answer (ServerUnavailableError×9)")]
    answered = step_result(_context(), [_window(0, 10)] * 3, 3, StepLog(response=[0.01] * 10))
    assert problems(_report(steps=[answered])) == []


def test_a_wrong_answer_fails_the_run_by_default():
    assert Objectives().max_wrong == 0 and Objectives().max_error_rate == 0
    sweep = _run(Scripted(lambda n: ("ok", 0.005)), levels=(1,))
    sweep.totals.wrong = 1
    found = problems(_report(sweep=sweep))
    assert [p.kind for p in found] == [WRONG] and exit_code(found) == EXIT_FAILED
    assert problems(_report(sweep=sweep), Objectives(max_wrong=2)) == []


def test_any_failed_request_fails_the_run_by_default():
    windows = [_window(0, 100), _window(1, 100), _window(2, 100)]
    log = StepLog(response=[0.01] * 299, failed=[0.01], errors=Counter(InferenceError=1))
    steps = [step_result(_context(), windows, 3, log)]
    assert exit_code(problems(_report(steps=steps))) == EXIT_FAILED
    assert exit_code(problems(_report(steps=steps), Objectives(max_error_rate=0.01))) == EXIT_OK


def test_the_help_documents_the_exit_codes():
    import argparse

    parser = add_parser(argparse.ArgumentParser().add_subparsers())
    text = parser.format_help()
    assert "exit codes:" in text and "99" in text and "--no-verify" in text


# ---- secrets and files ----------------------------------------------------------------------------


def test_secrets_are_redacted_from_the_command_and_urls():
    command = "python -m clients loadtest --admin-key s3cret --url grpc://u:pw@h:1 --api-token=t0k --model m"
    redacted = redact_command(command)
    assert "s3cret" not in redacted and "pw@" not in redacted and "t0k" not in redacted
    assert "--model m" in redacted and "--admin-key" in redacted
    assert redact_url("http://a:1,http://u:pw@b:2") == "http://a:1,http://u:***@b:2"


def test_report_files_are_not_world_readable(tmp_path):
    sweep = _run(Scripted(lambda n: ("ok", 0.005)), levels=(1,))
    report = _report(sweep=sweep)
    paths = write_reports(report.to_dict(), tmp_path)
    for path in (paths.json, paths.csv, paths.png):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o640 and not mode & stat.S_IROTH, oct(mode)


# ---- the typed schema ---------------------------------------------------------------------------------


def test_report_round_trips_and_refuses_another_schema_version():
    sweep = _run(Scripted(lambda n: ("ok", 0.005)), levels=(1, 2))
    report = _report(Objectives(p99_ms=1000), sweep=sweep)
    again = LoadTestReport.from_json(report.to_json())
    assert again == report and again.steps[1].latency_ms.p99 == report.steps[1].latency_ms.p99
    data = json.loads(report.to_json())
    assert data["schema_version"] == SCHEMA_VERSION
    unversioned = {k: v for k, v in data.items() if k != "schema_version"}
    for bad in ({**data, "schema_version": SCHEMA_VERSION + 1}, unversioned):
        with pytest.raises(ReportSchemaError, match="schema_version"):
            LoadTestReport.from_dict(bad)
    del data["steps"][0]["label"]
    with pytest.raises(ReportSchemaError, match=r"steps\[0\]: field 'label' is missing"):
        LoadTestReport.from_dict(data)


def test_an_ensemble_step_breaks_the_server_time_down_per_composing_model():
    def flat(requests: int, infer_ms: float) -> dict[str, int]:
        names = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
        d = {f"{n}_count": requests if n != "fail" else 0 for n in names}
        d.update({f"{n}_ns": 0 for n in names}, inference_count=requests, execution_count=requests)
        d["compute_infer_ns"] = int(infer_ms * 1e6 * requests)
        return d

    zero = {m: flat(0, 0) for m in ("m_image", "m_pre", "m")}
    end = {"m_image": flat(10, 0), "m_pre": flat(10, 2.0), "m": flat(10, 30.0)}
    w = Window(start=0, end=1, stats_start=zero, stats_end=end)
    own, composing = breakdowns([w], "m_image")
    assert own.requests == 10 and set(composing) == {"m_pre", "m"}
    assert composing["m"].compute_infer_ms == pytest.approx(30.0)
    assert composing["m_pre"].compute_infer_ms == pytest.approx(2.0)


# ---- helpers ----


def _report(
    objectives: Objectives | None = None, *, sweep: _Sweep | None = None, steps=None, mode="concurrency"
) -> LoadTestReport:
    """A report of `sweep` (or of `steps`, with empty totals), judged under `objectives` as the runner
    records it."""
    report = LoadTestReport(
        command="python -m clients loadtest",
        url="grpc://fake:1",
        protocol="grpc",
        model="fake",
        version="1",
        batch_size=1,
        mode=mode,
        arrival="constant" if mode == "rate" else None,
        started_at="2026-01-01T00:00:00+00:00",
        duration_s=1.0,
        settings={"max_outstanding": 1},
        verification=_workload().describe(1.0),
        steps=sweep.steps if sweep else steps or [],
        totals=sweep.totals if sweep else Totals(),
        slo=SloResult({}, True, []),
        generator={},
        generator_capacity=None,
        failures=[],
    )
    objectives = objectives or Objectives()
    report.slo = slo_result(problems(report, objectives), objectives)
    return report


def _render(report: dict) -> str:
    console = Console(width=300, record=True, file=open(os.devnull, "w"))
    console.print(summary_table(report))
    return console.export_text()
