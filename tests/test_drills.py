"""`python -m cnn_deploy drills --short`: the failure drills against real servers, as CI runs them.
The judges themselves are shown saying BROKEN in tests/test_judges.py."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_cli
from tests.leaks import ENV_ADMIN_KEY, leaks, printed

pytestmark = pytest.mark.integration


def test_short_drills_keep_their_promises(models_dir, tmp_path):
    out = tmp_path / "drills.json"
    scratch = tmp_path / "tmp"  # the drills' scratch (servers' logs, state) under the scanned folder
    scratch.mkdir()
    result = run_cli(
        "cnn_deploy", "drills", "--short", "--model", "resnet18", "--models", str(models_dir),
        "--output", str(out), timeout=900, env={"TRITON_ADMIN_KEY": ENV_ADMIN_KEY, "TMPDIR": str(scratch)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # The user's key (the servers' admin key) in no file the drills wrote and nowhere in their output.
    assert leaks(tmp_path, (ENV_ADMIN_KEY,)) == [] and printed([result], (ENV_ADMIN_KEY,)) == []
    report = json.loads(out.read_text())
    assert report["passed"] and [d["name"] for d in report["drills"]] == [
        "kill",
        "kill-no-failover",
        "restart",
        "overload",
        "soak",
    ]
    kill, no_failover, restart, overload, soak = (d["figures"] for d in report["drills"])
    assert kill["failed"] == 0 and kill["survivor_rate_after"] >= 0.8 * kill["survivor_rate_before"]
    assert no_failover["failed_before_reprobe"] <= no_failover["in_flight_when_noticed"]
    for drill in (kill, no_failover):  # `serving up`'s supervisor had the killed replica back
        assert drill["restarted_in_s"] is not None and drill["restarted_in_s"] <= 30
        assert drill["answers_after_restart"] > 0
    assert restart["after_verified"] > 0 and restart["after_wrong"] == 0
    # The overload really ran the shedding path: refused requests, as ServerOverloadedError only.
    assert overload["errors"].get("ServerOverloadedError", 0) > 0
    assert set(overload["errors"]) == {"ServerOverloadedError"}
    first, second = overload["memory_peaks_mb"]
    assert second <= 1.05 * first
    assert soak["wrong"] == 0 and soak["verified"] > 0 and soak["measured_s"] >= 0.98 * soak["planned_s"]
    for drill in report["drills"]:
        assert drill["figures"]["verified"] > 0, drill["name"]
    assert "kill: passed" in result.stdout
    # The servers and the load generator on separate CPUs, as if on separate machines.
    cpus = os.sched_getaffinity(0)
    if len(cpus) > 1:
        assert set(report["server_cpus"]) | set(report["client_cpus"]) == cpus
        assert report["server_cpus"] and report["client_cpus"]
        assert not set(report["server_cpus"]) & set(report["client_cpus"])
