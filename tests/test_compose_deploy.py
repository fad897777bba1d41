"""The CPU compose deployment, really run (`make compose-test`), and its refusal where Docker cannot
run. The full run builds images and starts containers: marked `docker`, run by hand or by
`pytest -m docker` (docs/deploy-cpu.md shows its output)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from cnn_deploy.checks import compose as compose_test
from tests.conftest import run_cli


def test_without_a_docker_cli_it_says_what_is_missing_and_exits_2(monkeypatch, tmp_path):
    real = shutil.which
    monkeypatch.setattr(compose_test.shutil, "which", lambda name: None if name == "docker" else real(name))
    code = compose_test.run_compose_test(tmp_path / "record.json")
    assert code == compose_test.NOT_HERE_EXIT
    record = json.loads((tmp_path / "record.json").read_text())
    steps = {s["step"]: s for s in record["steps"]}
    assert steps["engine"]["status"] == "FAIL" and "no docker CLI" in steps["engine"]["detail"]
    assert steps["down"]["status"] == "SKIPPED" and steps["stop engine"]["status"] == "SKIPPED"


@pytest.mark.docker
def test_compose_cpu_profile_builds_serves_verifies_and_leaves_nothing_behind(tmp_path):
    if os.geteuid() != 0 and shutil.which("docker") is None:
        pytest.skip("no Docker here and not root to start one")
    result = run_cli("cnn_deploy", "compose-test", "--output", str(tmp_path / "record.json"), timeout=3600)
    if result.returncode == compose_test.NOT_HERE_EXIT:
        pytest.skip(f"Docker cannot run here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    record = json.loads((tmp_path / "record.json").read_text())
    assert all(s["status"] != "FAIL" for s in record["steps"])
    verdicts = record["measured"]["verify_grpc"] + record["measured"]["verify_http"]
    assert all(v["status"] != "FAIL" for v in verdicts) and any(v["status"] == "PASS" for v in verdicts)
    assert all(s["wrong"] == 0 and s["verified"] > 0 for s in record["measured"]["loadtest"])
