"""The load generator against the real Triton server (short windows), and its parts without one."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from rich.console import Console

from clients import ClientError
from clients.cli import main as clients_main
from clients.loadtest import LoadTestConfig, Objectives, Workload
from clients.loadtest.report import (
    ServerBreakdown,
    flatten_statistics,
    summary_lines,
    summary_table,
    to_csv,
    to_png,
)
from cnn_deploy_core.golden import GoldenSet
from cnn_deploy_core.layout import IDENTITY_MODEL
from tests.conftest import ROOT, free_port, run_cli

# Short windows: the whole file stays well under a minute and a half on a 2-core machine.
FAST = ("--warmup-s", "0.3", "--window-s", "0.5", "--max-windows", "4")
STEP_FIELDS = {
    "requests",
    "responses",
    "inferences_per_s",
    "requests_per_s",
    "latency_ms",
    "errors",
    "verified",
    "wrong",
    "stable",
    "windows",
    "server",
    "samples",
    "service_ms",
    "generator_cpu_ms_per_request",
}


def _loadtest(capsys, tmp_path, *args: str) -> tuple[int, dict, str]:
    """Run the CLI in-process with --json; returns (exit code, report, stderr)."""
    code = clients_main(["loadtest", *args, *FAST, "--output", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


# ---- against the real server ----


@pytest.mark.integration
def test_concurrency_sweep_over_grpc_verifies_every_answer_and_writes_the_reports(
    triton, repository, capsys, tmp_path
):
    code, report, _ = _loadtest(
        capsys,
        tmp_path,
        "--url",
        triton.grpc_url,
        "--model",
        "resnet18",
        "--repository",
        str(repository),
        "--concurrency",
        "1,2",
    )
    assert code == 0
    assert report["protocol"] == "grpc" and report["model"] == "resnet18" and report["version"] == "1"
    assert report["mode"] == "concurrency" and report["batch_size"] == 1
    assert "--concurrency 1,2" in report["command"]
    assert report["verification"]["method"] == "golden" and report["slo"]["passed"] is True
    assert [s["level"] for s in report["steps"]] == [1, 2]
    for step in report["steps"]:
        assert STEP_FIELDS <= step.keys()
        assert step["requests"] > 0 and step["verified"] >= step["requests"] and step["wrong"] == 0
        assert step["errors"] == {} and step["windows"] >= 3 and step["samples"] == step["responses"]
        assert 0 < step["latency_ms"]["p50"] <= step["latency_ms"]["p99"] <= step["latency_ms"]["max"]
        server = step["server"]  # Triton counted the same requests the client did, give or take a boundary
        assert server["requests"] == pytest.approx(step["requests"], abs=4)
        assert server["compute_infer_ms"] > 0 and server["avg_batch"] >= 1
    for suffix in ("json", "csv", "png"):
        assert (tmp_path / f"loadtest-resnet18.{suffix}").stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "loadtest-resnet18.csv").open()))
    assert [r["label"] for r in rows] == ["c=1", "c=2"]
    assert json.loads((tmp_path / "loadtest-resnet18.json").read_text()) == report
    assert (tmp_path / "loadtest-resnet18.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.integration
def test_one_step_over_http_with_the_table_summary(triton, repository, capsys, tmp_path):
    code = clients_main(
        [
            "loadtest",
            "--url",
            triton.http_url,
            "--model",
            "resnet18",
            "--repository",
            str(repository),
            "--concurrency",
            "2",
            *FAST,
            "--output",
            str(tmp_path),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "load test: resnet18 v1 (http" in out and "c=2" in out and "verification: golden set" in out
    assert str(tmp_path / "loadtest-resnet18.json") in out
    report = json.loads((tmp_path / "loadtest-resnet18.json").read_text())
    step = report["steps"][0]
    assert report["protocol"] == "http" and step["verified"] >= step["requests"] > 0 and step["wrong"] == 0


@pytest.mark.integration
def test_poisson_rate_records_offered_and_achieved_rate_and_schedule_lag(
    triton, repository, capsys, tmp_path
):
    code, report, _ = _loadtest(
        capsys,
        tmp_path,
        "--url",
        triton.grpc_url,
        "--model",
        "resnet18",
        "--repository",
        str(repository),
        "--rate",
        "8",
        "--arrival",
        "poisson",
    )
    assert code == 0
    (step,) = report["steps"]
    assert report["mode"] == "rate" and report["arrival"] == "poisson"
    assert step["offered_rate"] == 8 and step["achieved_rate"] > 0
    assert step["schedule_lag_ms"]["max"] >= step["schedule_lag_ms"]["p50"] >= 0
    assert step["capped"] == 0 and step["verified"] >= step["requests"] > 0
    assert step["service_ms"]["p50"] <= step["latency_ms"]["p50"] + 1e-6


@pytest.mark.integration
def test_wrong_answers_are_counted_apart_from_errors_and_fail_max_wrong(triton, repository, capsys, tmp_path):
    golden = GoldenSet.load(repository / "resnet18" / "1" / "golden.npz")
    golden.outputs = golden.outputs.copy()
    golden.outputs[0] = golden.outputs[0][::-1]  # one row's reference is wrong: its answers must be flagged
    path = tmp_path / "perturbed.npz"
    golden.save(path)
    code, report, err = _loadtest(
        capsys,
        tmp_path,
        "--url",
        triton.grpc_url,
        "--model",
        "resnet18",
        "--golden",
        str(path),
        "--concurrency",
        "1",
    )
    assert code == 1  # by default a wrong answer fails the run (no --max-wrong needed)
    (step,) = report["steps"]
    assert 0 < step["wrong"] < step["verified"] and step["verified"] >= step["requests"]
    assert step["errors"] == {}
    assert report["totals"]["wrong_examples"][0]["rows"] == [0]
    assert report["slo"]["passed"] is False and "wrong answers" in report["slo"]["violations"][0]
    assert "error: " in err and "wrong answers" in err and "SLO missed" not in err  # a failure, not an SLO


@pytest.mark.integration
def test_missed_p99_objective_exits_99_with_one_line_per_violation(triton, repository, capsys, tmp_path):
    code, report, err = _loadtest(
        capsys,
        tmp_path,
        "--url",
        triton.grpc_url,
        "--model",
        "resnet18",
        "--repository",
        str(repository),
        "--concurrency",
        "1",
        "--p99-ms",
        "0.001",
        "--max-error-rate",
        "0",
    )
    assert code == 99  # a sound run that missed its latency objective (k6's code)
    assert report["slo"]["objectives"] == Objectives(p99_ms=0.001).to_dict()
    assert len(report["slo"]["violations"]) == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "p99 latency above 0.001 ms at c=1" in lines[0]


@pytest.mark.integration
def test_self_test_measures_the_generator_against_identity_and_verifies_it(triton, capsys, tmp_path):
    code, report, _ = _loadtest(
        capsys, tmp_path, "--url", triton.grpc_url, "--self-test", "--concurrency", "1,4"
    )
    assert code == 0
    assert report["model"] == IDENTITY_MODEL and report["verification"]["method"] == "identity"
    assert report["generator_capacity"]["inferences_per_s"] > 0
    assert report["generator"]["self_test"]["wrong"] == 0
    for step in report["steps"]:
        assert step["verified"] >= step["requests"] > 0 and step["wrong"] == 0


@pytest.mark.integration
def test_shared_memory_self_test_verifies_every_answer_exactly(triton, capsys, tmp_path):
    code, report, _ = _loadtest(
        capsys,
        tmp_path,
        "--url",
        triton.grpc_url,
        "--model",
        IDENTITY_MODEL,
        "--shared-memory",
        "system",
        "--admin-key",
        "test-admin-key",
        "--concurrency",
        "2",
    )
    assert code == 0, report.get("failures")
    (step,) = report["steps"]
    assert "shared memory" in report["generator"]["transport"]
    # The admin key never reaches a report, and report files are not world-readable.
    assert "test-admin-key" not in (tmp_path / f"loadtest-{IDENTITY_MODEL}.json").read_text()
    assert "--admin-key '***'" in report["command"]
    assert (tmp_path / f"loadtest-{IDENTITY_MODEL}.json").stat().st_mode & 0o777 == 0o640
    assert step["verified"] >= step["requests"] > 0 and step["wrong"] == 0


@pytest.mark.integration
def test_shared_memory_without_the_admin_key_is_one_clear_line(triton, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_ADMIN_KEY", raising=False)
    monkeypatch.setenv("CNN_DEPLOY_STATE_DIR", str(tmp_path / "no-state"))
    code = clients_main(
        [
            "loadtest",
            "--url",
            triton.grpc_url,
            "--model",
            IDENTITY_MODEL,
            "--shared-memory",
            "system",
            "--concurrency",
            "1",
            *FAST,
            "--output",
            str(tmp_path),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 1 and "SystemSharedMemoryRegister" in err and "give --admin-key" in err


@pytest.mark.integration
def test_image_input_sends_the_encoded_photos_and_checks_every_answer(triton, repository, capsys, tmp_path):
    code, report, _ = _loadtest(
        capsys,
        tmp_path,
        "--url",
        triton.grpc_url,
        "--model",
        "resnet18",
        "--input",
        "image",
        "--repository",
        str(repository),
        "--concurrency",
        "2",
    )
    assert code == 0, report.get("failures")
    assert report["model"] == "resnet18_image" and report["verification"]["method"] == "golden"
    (step,) = report["steps"]
    assert step["verified"] >= step["requests"] > 0 and step["wrong"] == 0
    assert report["generator"]["request_bytes"] < 588 * 1024  # the files, not 3x224x224 floats
    # Where an image request's time goes: preprocessing and network, each with Triton's figures.
    assert len(step["composing"]) == 2 and "resnet18" in step["composing"], step["composing"]
    for figures in step["composing"].values():
        assert figures["requests"] > 0 and figures["compute_infer_ms"] > 0


@pytest.mark.integration
def test_rate_above_the_servers_capacity_grows_the_response_time(triton, repository, capsys, tmp_path):
    """resnet18 serves ~30/s on 2 shared cores: 150/s offered with 4 in flight at most."""
    code, report, _ = _loadtest(
        capsys,
        tmp_path,
        "--url",
        triton.grpc_url,
        "--model",
        "resnet18",
        "--repository",
        str(repository),
        "--rate",
        "150",
        "--max-outstanding",
        "4",
        "--min-samples",
        "100000",
    )
    # No latency objective was set: the slowness is measured, not judged; the requests it made the
    # generator drop are judged (a dropped request fails the run unless --max-dropped allows it).
    assert code == 1
    (step,) = report["steps"]
    assert step["dropped"] > 0 and report["totals"]["dropped"] >= step["dropped"]  # sends never made
    (problem,) = report["slo"]["failing"]
    assert problem.startswith(f"{report['totals']['dropped']} requests dropped: scheduled and never sent")
    p50s = [w["p50_ms"] for w in step["window_log"]]
    assert p50s[-1] > 1.5 * p50s[0], p50s
    assert step["latency_ms"]["p50"] > 3 * step["service_ms"]["p50"]
    assert step["capped"] > 0 and step["kept_up"] is False


@pytest.mark.integration
def test_model_without_golden_set_is_an_error_unless_no_verify(triton, repository, capsys, tmp_path):
    args = ["--url", triton.grpc_url, "--model", "alexnet", "--repository", str(tmp_path / "elsewhere")]
    code = clients_main(["loadtest", *args, "--concurrency", "1", *FAST, "--output", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 1 and "cannot be verified" in err and "--no-verify" in err
    code, report, _ = _loadtest(
        capsys,
        tmp_path,
        "--url",
        triton.grpc_url,
        "--model",
        "alexnet",
        "--repository",
        str(tmp_path / "elsewhere"),
        "--concurrency",
        "1",
        "--no-verify",
    )
    assert code == 0
    assert report["verification"]["summary"] == "not verified: --no-verify was given"
    assert report["steps"][0]["verified"] == 0 and report["steps"][0]["requests"] > 0


@pytest.mark.integration
def test_batch_size_above_the_models_maximum_is_a_clear_error(triton, capsys, tmp_path):
    code = clients_main(
        [
            "loadtest",
            "--url",
            triton.grpc_url,
            "--model",
            "resnet18",
            "--batch-size",
            "1000",
            *FAST,
            "--output",
            str(tmp_path),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert err.strip().startswith("error: resnet18: batch size 1000 exceeds the model's max_batch_size")


@pytest.mark.integration
def test_unknown_model_is_one_clear_line(triton, capsys, tmp_path):
    code = clients_main(
        ["loadtest", "--url", triton.http_url, "--model", "no_such_model", *FAST, "--output", str(tmp_path)]
    )
    _, err = capsys.readouterr()
    assert code == 1 and err.strip() == f"error: model 'no_such_model' is not served at {triton.http_url}"


@pytest.mark.integration
def test_a_dead_second_replica_fails_the_run_and_is_named(triton, capsys, tmp_path):
    dead = f"grpc://127.0.0.1:{free_port()}"  # nothing listens there
    args = ("--url", triton.grpc_url, "--url", dead, "--model", IDENTITY_MODEL, "--concurrency", "2")
    code, report, err = _loadtest(capsys, tmp_path, *args)
    good, lost = report["replicas"]
    assert good["responses"] > 0 and lost["responses"] == 0 and lost["failovers"] > 0
    assert report["totals"]["errors"] == {}  # every request failed over and was answered...
    assert code == 1  # ... and still the run failed: one of its replicas never answered
    assert f"error: replica {dead}: no answer (ServerUnavailableError×" in err
    code, report, _ = _loadtest(capsys, tmp_path, *args, "--tolerate-replica-loss")
    assert code == 0 and report["slo"]["passed"], report["slo"]


class _FlakyProxy:
    """A TCP proxy to a real server that, from the first inference request through it and for
    `outage_s`, hangs up on every connection (a network blip): failures in the load test's warm-up
    only, when the outage is shorter than the warm-up."""

    def __init__(self, target_port: int, outage_s: float):
        import threading

        self.port, self.target, self.outage_s = free_port(), target_port, outage_s
        self.outage_until: float | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _out(self) -> bool:
        return self.outage_until is not None and time.monotonic() < self.outage_until

    async def _pipe(self, reader, writer, *, requests: bool = False):
        try:
            while data := await reader.read(65536):
                if requests and self.outage_until is None and b"/infer" in data:
                    self.outage_until = time.monotonic() + self.outage_s
                if self._out():
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader, writer):
        if self._out():
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(reader, up_writer, requests=True), self._pipe(up_reader, writer))

    async def _start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.mark.integration
def test_failures_during_the_warm_up_fail_the_run(triton, capsys, tmp_path):
    with _FlakyProxy(triton.http_port, outage_s=0.5) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
        code = clients_main(
            ["loadtest", "--url", url, "--model", IDENTITY_MODEL, "--concurrency", "1", "--warmup-s", "1.5",
             "--window-s", "0.5", "--max-windows", "4", "--output", str(tmp_path), "--json"]
        )  # fmt: skip
    out, err = capsys.readouterr()
    report = json.loads(out)
    (step,) = report["steps"]
    assert step["all_errors"] == {} and step["responses"] > 0  # the measured part was clean...
    assert report["totals"]["errors"].get("ServerUnavailableError", 0) > 0  # ... its warm-up was not
    assert code == 1 and "requests failed during warm-up (ServerUnavailableError×" in err


def test_server_down_is_one_line_and_exit_1_quickly(tmp_path):
    start = time.monotonic()
    url = f"grpc://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli(
        "clients", "loadtest", "--url", url, "--model", "resnet18", "--output", str(tmp_path), timeout=60
    )
    assert result.returncode == 1
    assert time.monotonic() - start < 20
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Triton server at grpc://127.0.0.1:")
    assert "unreachable" in lines[0] and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # no half report


# ---- the parts, no server ----


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": (0,)}, "values must be positive"),
        ({"levels": (1.5,)}, "whole numbers"),
        ({"max_windows": 2}, "--max-windows must be >= 3"),
        ({"max_step_s": 5}, "no step could finish"),
        ({"verify_fraction": 1.5}, "--verify-fraction"),
        ({"arrival": "bursty"}, "arrival must be one of"),
        ({"url": "ftp://host"}, "unsupported URL"),
    ],
)
def test_config_rejects_bad_settings(kwargs, message):
    with pytest.raises(ClientError, match=message):
        LoadTestConfig(**{"url": "grpc://localhost:8001", "model": "resnet18", **kwargs})


def test_objectives_reject_an_error_rate_above_one():
    from cnn_deploy_core.judge import ObjectiveError

    with pytest.raises(ObjectiveError, match="--max-error-rate"):
        Objectives(max_error_rate=2)


def test_grpc_statistics_with_string_ints_give_per_request_averages():
    def stats(n: int, batches: int) -> dict:  # gRPC's JSON: int64 as strings, zero fields left out
        return {
            "inference_count": str(n),
            "execution_count": str(batches),
            "inference_stats": {
                "success": {"count": str(n), "ns": str(n * 9_000_000)},
                "queue": {"count": str(n), "ns": str(n * 2_000_000)},
                "compute_infer": {"count": str(n), "ns": str(n * 5_000_000)},
            },
        }

    delta = ServerBreakdown.between(flatten_statistics(stats(10, 10)), flatten_statistics(stats(30, 20)))
    assert (delta.requests, delta.executions, delta.avg_batch) == (20, 10, 2.0)
    assert delta.queue_ms == pytest.approx(2.0) and delta.compute_infer_ms == pytest.approx(5.0)
    assert delta.compute_input_ms is None and delta.failures == 0


def test_workload_cycles_golden_rows_and_checks_with_the_tolerance():
    inputs = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    outputs = np.random.default_rng(0).standard_normal((5, 10)).astype(np.float32)
    work = Workload(inputs, outputs, batch_size=2, check="golden", atol=1e-5, rtol=1e-4)
    assert [work.rows(i) for i in range(6)] == [[0, 1], [2, 3], [4, 0], [1, 2], [3, 4], [0, 1]]
    assert np.array_equal(work.batch(2), inputs[[4, 0]])
    assert work.verify(2, outputs[[4, 0]])[0]
    assert not work.verify(2, outputs[[4, 1]])[0]
    assert not work.verify(2, outputs[[4]])[0]  # a short answer is wrong, not a crash


def test_identity_workload_verifies_exactly():
    inputs = np.random.default_rng(1).standard_normal((3, 3, 20, 20)).astype(np.float32)
    work = Workload(inputs, None, batch_size=1, check="identity")
    answer = inputs[1].reshape(1, -1)[:, :1000].copy()
    assert work.verify(1, answer) == (True, 0.0)
    answer[0, 7] += 1e-6
    assert not work.verify(1, answer)[0]


def test_report_files_render_from_the_json_alone():
    step = {
        "mode": "concurrency",
        "level": 1,
        "label": "c=1",
        "stable": True,
        "windows": 3,
        "requests": 10,
        "inferences_per_s": 20.0,
        "requests_per_s": 20.0,
        "errors": {"BadInputError": 1},
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p95": 2.5, "p99": 3.0, "max": 4.0},
        "verified": 9,
        "wrong": 0,
        "server": None,
        "schedule_lag_ms": None,
        "error_rate": 0.1,
        "all_requests": 12,
        "all_errors": {"BadInputError": 2},
        "latency_all_ms": {"p50": 1.0, "p90": 2.0, "p95": 2.5, "p99": 9.0, "max": 9.5},
    }
    report = {
        "model": "m",
        "version": "1",
        "protocol": "grpc",
        "batch_size": 1,
        "mode": "concurrency",
        "steps": [step],
        "verification": {"enabled": True, "summary": "golden set [x].npz"},
        "settings": {},
        "totals": {
            "requests": 15,
            "errors": {"BadInputError": 3},
            "wrong": 1,
            "verified": 9,
            "wrong_examples": [{"request": 4, "rows": [4], "max_abs_err": 2.5}],
        },
        "slo": {"objectives": {"p99_ms": 2.0}, "passed": False, "violations": ["p99"]},
        "generator": {},
        "generator_capacity": None,
    }
    row = next(csv.DictReader(to_csv(report).splitlines()))
    assert row["p99_ms"] == "3.0" and row["error_kinds"] == "BadInputError=1" and row["errors"] == "1"
    assert to_png(report).startswith(b"\x89PNG")
    assert summary_table(report).row_count == 2  # the step and the run's total
    console = Console(record=True, width=200)
    for line in summary_lines(report):
        console.print(line)
    text = console.export_text()
    assert "golden set [x].npz" in text and "wrong answers: 1 of 9 verified" in text
    assert "errors at c=1 (after warm-up): BadInputError×2" in text
    assert "p99 <= 2 ms): failed (1 problem)" in text
    assert "- p99" in text  # each problem in one line
    assert "run total (warm-up included): 15 requests, 3 failed" in text


def test_loadtest_modules_do_not_import_torch():
    code = "import sys, clients.loadtest.cli; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
