"""`python -m serving up|status|down` and `python -m clients demo`, as a user runs them."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CORRUPT_MODEL, port_args, run_cli
from tests.leaks import ENV_ADMIN_KEY, leaks, printed

pytestmark = pytest.mark.integration


def test_detached_server_lifecycle_up_status_down_from_any_directory(repository, tmp_path):
    """`up` in one directory, `status` and `down` in others: the state is anchored to the project.
    The repository holds a model that fails to load (CORRUPT_MODEL): `up` names it with Triton's
    reason and exits 1, the server is not ready (strict readiness) and `status` exits 1, but it is
    not killed: the good models keep answering, and the record says which model failed."""
    home, here, elsewhere = (tmp_path / d for d in ("project", "a", "b"))
    for d in (home, here, elsewhere):
        d.mkdir()
    ports, grpc = port_args()
    up = run_cli(
        "serving", "up", "--detach", "--json", "--repository", str(repository), *ports, cwd=here, home=home
    )
    try:
        assert up.returncode == 1, up.stderr
        assert f"is NOT ready: model(s) failed to load: {CORRUPT_MODEL}: " in " ".join(up.stderr.split())
        started = json.loads(up.stdout.split("detached, supervised by")[0])
        assert started["grpc"] == f"grpc://127.0.0.1:{grpc}"
        states = {m["name"]: m["state"] for m in started["models"]}
        assert states["resnet18"] == "READY" and states[CORRUPT_MODEL] == "UNAVAILABLE"
        with urllib.request.urlopen(f"{started['http']}/v2/health/live", timeout=5) as live:
            assert live.status == 200  # up, serving the good models
        with pytest.raises(urllib.error.HTTPError):  # but not ready: a probe must see the failure
            urllib.request.urlopen(f"{started['http']}/v2/health/ready", timeout=5)
        record = home / "build" / "serving" / "server.json"
        (failed,) = json.loads(record.read_text())["failed_models"]
        assert failed["name"] == CORRUPT_MODEL and failed["reason"]
        status = run_cli("serving", "status", "--json", cwd=elsewhere, home=home)
        assert status.returncode == 1 and json.loads(status.stdout)["running"] is False
        record = home / "build" / "serving" / "server.json"
        key_file = Path(json.loads(record.read_text())["admin_key_file"])
        assert key_file == record.parent / "admin.key" and key_file.stat().st_mode & 0o077 == 0
        assert key_file.read_text().strip() not in record.read_text()  # the record names the key file only
        assert not (here / "build").exists()

        again = run_cli(
            "serving", "up", "--detach", "--repository", str(repository), *ports, cwd=elsewhere, home=home
        )
        assert again.returncode == 1 and "a server is already running" in again.stderr
    finally:
        down = run_cli("serving", "down", "--json", cwd=elsewhere, home=home)
    assert down.returncode == 0 and json.loads(down.stdout)["result"].startswith("stopped server pid")
    assert run_cli("serving", "status", cwd=here, home=home).returncode == 1
    assert (
        json.loads(run_cli("serving", "down", "--json", cwd=here, home=home).stdout)["result"]
        == "no server running"
    )


def test_explicit_state_dir_overrides_the_project(repository, tmp_path):
    state = tmp_path / "state"
    ports, _ = port_args()
    up = run_cli(
        "serving",
        "up",
        "--detach",
        "--repository",
        str(repository),
        "--state-dir",
        str(state),
        *ports,
        cwd=tmp_path,
        home=tmp_path / "project",
    )
    try:
        assert up.returncode == 1 and CORRUPT_MODEL in up.stderr, up.stderr  # not ready, still recorded
        assert (state / "server.json").is_file() and not (tmp_path / "project" / "build").exists()
    finally:
        down = run_cli("serving", "down", "--state-dir", str(state), cwd=tmp_path)
    assert down.returncode == 0 and "stopped server pid" in down.stdout


def test_up_refuses_a_missing_repository_in_one_line(tmp_path):
    result = run_cli("serving", "up", "--repository", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: model repository") and "does not exist" in result.stderr


def test_up_rejects_an_invalid_port_in_one_line(repository, tmp_path):
    result = run_cli("serving", "up", "--repository", str(repository), "--http-port", "99999", cwd=tmp_path)
    assert result.returncode == 1 and "must be a port from 1 to 65535" in result.stderr


def test_make_demo_runs_end_to_end(tmp_path):
    """The main job, in a fresh directory: export, serve, classify, verify, load-test, stop."""
    result = run_cli(
        "cnn_deploy", "demo", "--models", "resnet18", "--json", cwd=tmp_path, home=tmp_path, timeout=900,
        env={"TRITON_ADMIN_KEY": ENV_ADMIN_KEY},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    # The user's key (exported, as the README says) in no file the demo wrote and nowhere it printed.
    assert leaks(tmp_path, (ENV_ADMIN_KEY,)) == [] and printed([result], (ENV_ADMIN_KEY,)) == []
    summary = json.loads(result.stdout)
    steps = {s["step"]: s["status"] for s in summary["steps"]}
    assert steps == {
        "export": "OK",
        "serve": "OK",
        "classify": "OK",
        "verify": "OK",
        "generator self-test": "OK",
        "load test": "OK",
        "stop": "OK",
    }
    assert {p.rsplit("/", 1)[-1] for p in summary["reports"]} >= {
        "loadtest-resnet18.json",
        "loadtest-resnet18.png",
        "loadtest-identity.json",
    }
    report = json.loads((tmp_path / "reports" / "loadtest-resnet18.json").read_text())
    assert report["totals"]["wrong"] == 0 and report["totals"]["verified"] > 0
    assert not (tmp_path / "build" / "serving" / "server.json").exists()  # the server is gone
    shutil.rmtree(tmp_path / "model_repository")
