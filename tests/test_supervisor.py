"""Replicas that outlive each other: `serving up --replicas 2`, foreground and detached, with one
replica's tritonserver SIGKILLed in the middle of a load test over both. The supervisor restarts
it while the other serves on; the restart policy's verdicts (backoff, give up) fail when they must.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serving.supervisor import Replica, RestartPolicy, Supervisor, describe_exit
from serving.triton import ServerOptions, TritonProcess, free_port_block
from tests.conftest import ROOT, run_cli

MODEL = "resnet18"
READY_AGAIN_S = 30.0

# --- the policy's verdicts ----------------------------------------------------------------------


def test_the_restart_policy_gives_up_after_failures_in_a_row():
    policy = RestartPolicy(max_failures=5)
    assert not policy.gives_up(4)  # restart
    assert policy.gives_up(5)  # the 5th in a row (a crash every 15 s too): left down


def test_a_replica_ready_long_enough_forgets_its_failures():
    policy = RestartPolicy(stable_s=300)
    assert not policy.settled(None, now=1000)  # never ready
    assert not policy.settled(800, now=1000)  # ready 200 s: a slow crash loop still counts
    assert policy.settled(700, now=1000)


def test_a_replica_is_hung_only_after_probes_failed_in_a_row():
    policy = RestartPolicy(liveness_failures=3)
    assert not policy.hung(0) and not policy.hung(2)
    assert policy.hung(3)


def test_the_backoff_doubles_and_is_capped():
    policy = RestartPolicy(first_backoff_s=1, max_backoff_s=30)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 4, 8, 16, 30, 30]


def test_an_exit_is_described_by_its_signal_or_code():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(None) == "still running"


def test_a_replica_that_keeps_crashing_is_left_down_not_restarted_in_a_loop(tmp_path):
    """A real tritonserver that dies at once (an unknown flag), supervised with a short backoff:
    restarted until the policy gives up, then reported down; the supervisor ends with 1."""
    repo = tmp_path / "repo"
    repo.mkdir()
    base = free_port_block(3)
    opts = ServerOptions(
        repository=repo, http_port=base, grpc_port=base + 1, metrics_port=base + 2,
        backend_dir=tmp_path / "backends", extra_args=("--no-such-flag",),
    )  # fmt: skip
    replica = Replica(0, opts, tmp_path / "triton.log", TritonProcess(opts, log_path=tmp_path / "triton.log"))
    replica.process.start()
    said: list[str] = []
    policy = RestartPolicy(max_failures=3, first_backoff_s=0.05, max_backoff_s=0.1)
    started = time.monotonic()
    code = Supervisor([replica], policy=policy, say=said.append).run()
    assert code == 1
    assert replica.state == "down" and replica.restarts == 2 and replica.failures == 3
    assert replica.last_exit == "exit code 1"
    assert "left down" in said[-2] and "every replica is down" in said[-1]
    assert time.monotonic() - started < 30


# --- `serving up --replicas 2`, a replica killed under load ---------------------------------------


@pytest.fixture(scope="module")
def small_repository(models_dir, tmp_path_factory) -> Path:
    from cnn_deploy_core.registry import get
    from serving.repository import CpuPlan, place_models

    repo = tmp_path_factory.mktemp("supervised-repo")
    place_models([get(MODEL)], models_dir=models_dir, repository=repo, identity=False, cpu=CpuPlan(1, 1))
    for extra in repo.iterdir():  # the tensor model only: it loads in seconds
        if extra.name != MODEL:
            shutil.rmtree(extra)
    return repo


def _record(state: Path) -> dict:
    return json.loads((state / "server.json").read_text())


def _replicas(record: dict) -> list[dict]:
    return [{k: record[k] for k in ("pid", "http_url", "grpc_url", "state", "restarts")}, *record["replicas"]]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def _kill_replica_under_load(state: Path) -> dict:
    """A load test over both replicas with failover; replica 2's tritonserver SIGKILLed after 4 s.
    Then: at most the requests in flight failed, no wrong answer, replica 2 READY again within
    30 s under a new pid, and the new process answered part of the load (its own statistics)."""
    from clients.client import TritonClient
    from clients.loadtest import LoadTestConfig, run_loadtest

    before = _replicas(_record(state))
    urls = [r["grpc_url"] for r in before]
    config = LoadTestConfig(
        url=",".join(urls), model=MODEL, repository=Path(_record(state)["repository"]), levels=(4,),
        warmup_s=1.0, window_s=4.0, max_windows=5, max_step_s=20.0, timeout=10.0, min_samples=1,
    )  # fmt: skip
    killed_at: list[float] = []

    def kill():
        time.sleep(4.0)
        os.kill(before[1]["pid"], signal.SIGKILL)
        killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill)
    killer.start()
    report = run_loadtest(config)
    killer.join()
    totals = report.totals
    assert totals.wrong == 0 and totals.verified > 0
    assert sum(totals.errors.values()) <= 4, totals.errors  # at most the requests in flight

    def ready_again():
        now = _replicas(_record(state))[1]
        return now["state"] == "ready" and now["pid"] != before[1]["pid"] and now

    again = _wait(ready_again, READY_AGAIN_S, "replica 2 ready again under a new pid")
    assert again["restarts"] == 1
    with TritonClient(urls[1]) as client:  # the restarted process took its share of traffic
        stats_after_restart = int(client.statistics(MODEL).get("inference_count", 0))
    if stats_after_restart == 0:  # the kill came late in the run: send a little more load
        report = run_loadtest(config)
        assert report.totals.wrong == 0
        with TritonClient(urls[1]) as client:
            stats_after_restart = int(client.statistics(MODEL).get("inference_count", 0))
    assert stats_after_restart > 0
    return _record(state)


def _up_args(repo: Path, state: Path) -> list[str]:
    base = free_port_block(6)
    return [
        "serving", "up", "--repository", str(repo), "--state-dir", str(state), "--replicas", "2",
        "--http-port", str(base), "--grpc-port", str(base + 1), "--metrics-port", str(base + 2),
    ]  # fmt: skip


@pytest.mark.integration
def test_a_killed_replica_is_restarted_in_the_foreground_while_the_other_serves(small_repository, tmp_path):
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    up = subprocess.Popen(
        [sys.executable, "-m", *_up_args(small_repository, state)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C reaches it, even when pytest itself runs as a background job (`make test &`),
        # whose children a shell starts with SIGINT ignored: Python then installs no handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        _wait(lambda: (state / "server.json").exists() or up.poll() is not None, 300, "servers ready")
        assert up.poll() is None, up.communicate()
        _kill_replica_under_load(state)
        assert up.poll() is None, "the foreground `serving up` ended with a replica"
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = up.communicate(timeout=120)
    assert up.returncode == 0, out + err
    assert "failed: killed by SIGKILL; restarting" in err and "ready again (restart 1)" in err
    assert "server stopped" in out
    assert not (state / "server.json").exists()


@pytest.mark.integration
def test_a_killed_replica_is_restarted_when_detached_and_down_stops_everything(small_repository, tmp_path):
    state = tmp_path / "state"
    up = run_cli(*_up_args(small_repository, state), "--detach", timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    record = _record(state)
    supervisor = record["supervisor_pid"]
    try:
        record = _kill_replica_under_load(state)
        status = run_cli("serving", "status", "--state-dir", str(state), timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "restarts 1, last exit: killed by SIGKILL" in status.stdout
        record = _hang_a_replica(state)
    finally:
        down = run_cli("serving", "down", "--state-dir", str(state), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"supervisor pid {supervisor}" in down.stdout
    pids = [supervisor, *(r["pid"] for r in _replicas(record))]
    assert not [p for p in pids if Path(f"/proc/{p}").exists() and _not_zombie(p)], "something outlived down"
    log = (state / "supervisor.log").read_text()
    assert "failed: killed by SIGKILL" in log and "ready again (restart 1)" in log
    assert "failed: hung: /v2/health/live failed 3 probes in a row" in log


def _hang_a_replica(state: Path) -> dict:
    """Replica 1 SIGSTOPped: alive, never answering. Its liveness probe fails 3 times in a row, the
    supervisor kills it and starts it again; `serving status` says not ready meanwhile."""
    hung = _replicas(_record(state))[0]
    os.kill(hung["pid"], signal.SIGSTOP)
    try:
        status = run_cli("serving", "status", "--state-dir", str(state), timeout=60)
        assert status.returncode == 1, status.stdout  # a replica not answering is not ready

        def restarted():
            now = _replicas(_record(state))[0]
            return now["state"] == "ready" and now["pid"] != hung["pid"] and now

        _wait(restarted, 60, "the hung replica killed and ready again under a new pid")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung["pid"], signal.SIGCONT)
    record = _record(state)
    assert record["restarts"] == 1 and record["last_exit"].startswith("hung")
    assert not Path(f"/proc/{hung['pid']}").exists() or not _not_zombie(hung["pid"])
    return record


def _not_zombie(pid: int) -> bool:
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    except OSError:
        return False


@pytest.mark.integration
def test_a_replica_whose_model_answers_wrong_never_counts_as_ready(small_repository, tmp_path):
    """Ready means verified: every model answers its own golden set before the record says ready.
    A graph damaged beside its golden set loads (READY to Triton) but answers wrong: `up` says so
    and exits 1, the record says unready and why, `status` exits 1."""
    import onnx

    from tests.mutations import MUTATIONS

    repo = tmp_path / "repo"
    shutil.copytree(small_repository, repo)
    model = repo / MODEL / "1" / "model.onnx"
    onnx.save(MUTATIONS["scale-conv-1.05"](onnx.load(str(model))), str(model))
    state = tmp_path / "state"
    base = free_port_block(3)
    up = run_cli(
        "serving", "up", "--repository", str(repo), "--state-dir", str(state), "--detach",
        "--http-port", str(base), "--grpc-port", str(base + 1), "--metrics-port", str(base + 2), timeout=300,
    )  # fmt: skip
    try:
        assert up.returncode == 1, up.stdout + up.stderr
        record = _record(state)
        assert record["state"] == "unready" and "golden-set check failed" in record["problem"], record
        assert MODEL in " ".join(up.stderr.split()) and "NOT ready" in up.stderr
        status = run_cli("serving", "status", "--state-dir", str(state), timeout=60)
        assert status.returncode == 1 and "NOT ready: unready" in status.stdout, status.stdout
    finally:
        run_cli("serving", "down", "--state-dir", str(state), timeout=120)
