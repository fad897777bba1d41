"""`python -m cnn_deploy drills --short`: the failure drills against real servers, as CI runs them."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_short_drills_keep_their_promises(models_dir, tmp_path):
    out = tmp_path / "drills.json"
    result = run_cli(
        "cnn_deploy", "drills", "--short", "--model", "resnet18", "--models", str(models_dir),
        "--output", str(out), timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["passed"] and [d["name"] for d in report["drills"]] == [
        "kill",
        "restart",
        "overload",
        "soak",
    ]
    kill, restart, overload, soak = (d["figures"] for d in report["drills"])
    assert kill["failed"] <= kill["in_flight_on_killed"] and kill["survivor_answers_after_kill"] > 0
    assert restart["after"]["verified"] > 0 and restart["after"]["wrong"] == 0
    first, second = overload["memory_mb_peak_halves"]
    assert second <= 1.05 * first
    assert soak["wrong"] == 0 and soak["verified"] > 0
    assert "kill: passed" in result.stdout
    # The servers and the load generator on separate CPUs, as if on separate machines.
    cpus = os.sched_getaffinity(0)
    if len(cpus) > 1:
        assert set(report["server_cpus"]) | set(report["client_cpus"]) == cpus
        assert report["server_cpus"] and report["client_cpus"]
        assert not set(report["server_cpus"]) & set(report["client_cpus"])
