"""`clients verify` accounts for every model of the repository index, and `--once-per-start` verifies
each server start once (a container's health check)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from clients import ModelNotFoundError, ServerUnavailableError
from clients.model_info import ModelInfo
from clients.tls import TlsError
from clients.verify import (
    FAIL,
    PASS,
    SKIP,
    one_line,
    plan,
    registered_names,
    same_start,
    success_counts,
    verify_models,
)
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.golden import GOLDEN_PARAM, INT8_CROSS_RUNTIME, GoldenSet, golden_path
from serving.config import parse_pbtxt
from tests.conftest import CI_ARCHS, CORRUPT_MODEL, INT8_ARCH, run_cli
from tests.test_repository_units import _export, _place

# --- the verdicts (no server) ----------------------------------------------------------------------

REGISTERED = registered_names()


def _row(name: str, state: str = "READY", version: str = "1", reason: str = "") -> dict:
    return {"name": name, "version": version, "state": state, "reason": reason}


def test_plan_fails_a_model_that_is_not_ready_with_tritons_reason():
    todo = plan(
        [_row("resnet18"), _row("alexnet", "UNAVAILABLE", reason="cannot load it")], REGISTERED, set(), {}
    )
    assert todo.check == ["resnet18"]
    (failed,) = todo.failed
    assert (failed.model, failed.status, failed.error) == ("alexnet", FAIL, "UNAVAILABLE: cannot load it")


def test_plan_fails_a_version_that_did_not_load_beside_one_that_did():
    index = [_row("resnet18", version="2", state="UNAVAILABLE", reason="bad file"), _row("resnet18")]
    todo = plan(index, REGISTERED, set(), {})
    assert todo.check == ["resnet18"] and [(r.model, r.version) for r in todo.failed] == [("resnet18", "2")]


def test_plan_accepts_a_version_retired_by_the_version_policy_only_beside_a_served_one():
    retired = _row("resnet18", version="2", state="UNAVAILABLE", reason="unloaded")
    assert plan([retired, _row("resnet18")], REGISTERED, set(), {}).failed == []
    assert [r.model for r in plan([retired], REGISTERED, set(), {}).failed] == ["resnet18"]


def test_plan_skips_what_no_golden_set_describes_and_says_why():
    index = [_row("identity"), _row("preprocess_x"), _row("mine"), _row("resnet18_image")]
    todo = plan(index, REGISTERED, {"mine"}, {"preprocess_x": "resnet18_image"})
    assert todo.check == ["mine", "resnet18_image"] and todo.failed == []
    why = {r.model: r.skipped for r in todo.skipped}
    assert why == {
        "identity": "no golden set in the repository",
        "preprocess_x": "checked through resnet18_image",
    }
    assert all(r.status == SKIP for r in todo.skipped)


class _Refusing:
    """Stands in for a client whose every model look-up fails with one error."""

    where = "grpc://127.0.0.1:1"

    def __init__(self, error):
        self.error = error

    def model_info(self, model, version=""):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        ServerUnavailableError("Triton server at grpc://127.0.0.1:1 is unreachable"),
        TlsError("TLS handshake with grpc://127.0.0.1:1 failed"),
    ],
)
def test_a_server_failure_ends_the_whole_verification(error, tmp_path):
    with pytest.raises(type(error)):
        verify_models(_Refusing(error), ["resnet18", "alexnet"], tmp_path)


def test_a_model_failure_is_that_models_row_and_the_others_are_still_checked(tmp_path):
    error = ModelNotFoundError("model 'resnet18' is not served")
    results = verify_models(_Refusing(error), ["resnet18", "alexnet"], tmp_path)
    assert [(r.model, r.status) for r in results] == [("resnet18", FAIL), ("alexnet", FAIL)]


def test_plan_does_not_skip_a_loading_model():
    (failed,) = plan([_row("resnet18", "LOADING")], REGISTERED, set(), {}).failed
    assert failed.error == "LOADING: no reason given"


def test_tritons_reason_fits_on_one_line_without_the_backend_traceback():
    reason = "Internal: cannot load\n/x/model.onnx: bad\n\nAt:\n  /b/model.py(185): initialize\n"
    assert one_line(reason) == "Internal: cannot load /x/model.onnx: bad"


def test_success_counts_read_grpc_strings_and_missing_zeros():
    stats = [
        {"name": "a", "version": "1", "inference_stats": {"success": {"count": "12"}}},
        {"name": "b", "version": "1", "inference_stats": {"success": {}}},
        {"name": "c", "version": "2", "inference_stats": {"success": {"count": 3}}},
    ]
    assert success_counts(stats) == {"a/1": 12, "b/1": 0, "c/2": 3}


def test_same_start_says_no_once_a_count_went_down_or_a_version_went_away():
    verified = {"a/1": 12, "c/2": 3}
    assert same_start(verified, {"a/1": 40, "c/2": 3, "d/1": 0})
    assert not same_start(verified, {"a/1": 0, "c/2": 3})  # restarted: counts begin again
    assert not same_start(verified, {"a/1": 12})  # reloaded without that version
    assert not same_start({}, {"a/1": 12})  # nothing recorded: nothing to vouch for


# --- which golden set checks which served file (no server) ----------------------------------------


def _golden(path: Path, seed: int) -> np.ndarray:
    """A small golden set at `path` with its own outputs (distinct per seed); returns them."""
    rng = np.random.default_rng(seed)
    outputs = rng.standard_normal((6, 10)).astype(np.float32) + 10 * np.eye(6, 10, dtype=np.float32)
    tol = {"atol": 1e-3, "rtol": 0.02}
    GoldenSet(
        "resnet50",
        rng.standard_normal((6, 3, 4, 4)).astype(np.float32),
        outputs,
        [f"random-{i}" for i in range(6)],
        {"int8": tol, INT8_CROSS_RUNTIME: tol},
    ).save(path)
    return outputs


class _Serving:
    """Stands in for a server whose `model` serves one config (its parameters) and answers `answers`."""

    where = "grpc://127.0.0.1:1"

    def __init__(self, model: str, parameters: dict[str, str], answers: np.ndarray):
        self.info = ModelInfo(model, ("1",), "input", (3, 4, 4), "FP32", "logits", (10,), 8, True, parameters)
        self.answers = answers

    def model_info(self, model, version=""):
        return self.info

    def infer(self, model, inputs, version=""):
        return self.answers


def _int8_repository(tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]], np.ndarray, np.ndarray]:
    """resnet50_int8 placed from an export with both INT8 files, each golden set with its own outputs:
    (repository, the cpu and gpu configs' parameters, the UINT8 file's outputs, the S8S8 file's)."""
    models, repo = tmp_path / "models", tmp_path / "repo"
    _export(models, b"v1")
    u8s8 = _golden(models / "resnet50" / "golden.int8.npz", seed=1)
    s8s8 = _golden(models / "resnet50" / "golden.int8.s8s8.npz", seed=2)
    (models / "resnet50" / "model.int8.s8s8.onnx").write_bytes(b"s8s8")
    _place(models, repo)
    configs = {
        kind: {k: v.string_value for k, v in parse_pbtxt(path.read_text()).parameters.items()}
        for kind in ("cpu", "gpu")
        for path in [repo / "resnet50_int8" / "configs" / f"{kind}.pbtxt"]
    }
    return repo, configs, u8s8, s8s8


def test_each_int8_config_is_verified_against_the_golden_set_of_the_file_it_serves(tmp_path):
    repo, configs, u8s8, s8s8 = _int8_repository(tmp_path)
    assert golden_path(repo, "resnet50_int8", "1", configs["gpu"]).name == "golden.int8.s8s8.npz"
    assert golden_path(repo, "resnet50_int8", "1", configs["cpu"]).name == "golden.npz"
    for kind, answers in (("cpu", u8s8), ("gpu", s8s8)):
        client = _Serving("resnet50_int8", configs[kind], answers)
        (result,) = verify_models(client, ["resnet50_int8"], repo)
        assert result.status == PASS, (kind, result)
    # says no: the S8S8 file's answers are not the UINT8 file's, nor the other way round
    for kind, answers in (("cpu", s8s8), ("gpu", u8s8)):
        (result,) = verify_models(_Serving("resnet50_int8", configs[kind], answers), ["resnet50_int8"], repo)
        assert result.status == FAIL and result.comparison is not None, (kind, result)


def test_a_missing_golden_set_is_a_one_line_failure_of_that_config(tmp_path):
    repo, configs, _, s8s8 = _int8_repository(tmp_path)
    (repo / "resnet50_int8" / "1" / "golden.int8.s8s8.npz").unlink()
    (result,) = verify_models(_Serving("resnet50_int8", configs["gpu"], s8s8), ["resnet50_int8"], repo)
    assert result.status == FAIL and "\n" not in result.error
    assert result.error.startswith("golden set not found:") and result.error.endswith("golden.int8.s8s8.npz")


def test_golden_path_reads_the_served_configs_name_and_refuses_a_path(tmp_path):
    assert golden_path(tmp_path, "m", "2", {}) == tmp_path / "m" / "2" / "golden.npz"  # a config naming none
    named = golden_path(tmp_path, "m", "2", {GOLDEN_PARAM: "golden.int8.s8s8.npz"})
    assert named == tmp_path / "m" / "2" / "golden.int8.s8s8.npz"
    for bad in ("../other/golden.npz", "sub/golden.npz", "/etc/golden.npz", "model.onnx"):
        with pytest.raises(CnnDeployError, match="is not a golden set file name"):
            golden_path(tmp_path, "m", "2", {GOLDEN_PARAM: bad})


# --- against the real server --------------------------------------------------------------------

pytest_integration = pytest.mark.integration


@pytest_integration
def test_verify_fails_a_model_that_did_not_load_and_checks_every_other(triton, repository):
    result = run_cli(
        "clients", "verify", "--url", triton.grpc_url, "--repository", str(repository), "--json",
        env={"TRITON_ADMIN_KEY": triton.admin_key},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"error: verification failed for {CORRUPT_MODEL}" in result.stderr
    rows = json.loads(result.stdout)
    status = {r["model"]: r["status"] for r in rows}
    broken = next(r for r in rows if r["model"] == CORRUPT_MODEL)
    assert broken["status"] == FAIL and broken["error"].startswith("UNAVAILABLE:")
    assert "cannot load" in broken["error"], broken["error"]
    served = {n for a in CI_ARCHS for n in (a, f"{a}_image")} | {f"{INT8_ARCH}_int8"}
    assert {m: status[m] for m in served} == dict.fromkeys(served, PASS)
    assert {m for m, s in status.items() if s == FAIL} == {CORRUPT_MODEL}
    assert all(r["skipped"] for r in rows if r["status"] == SKIP)  # each says why


@pytest_integration
def test_verify_without_an_admin_key_says_so_in_one_line(triton, repository):
    env = {k: "" for k in ("TRITON_ADMIN_KEY",) if k in os.environ}
    result = run_cli("clients", "verify", "--url", triton.http_url, "--repository", str(repository), env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.strip().startswith("error:")]
    assert "needs the admin key" in line and "--admin-key-file" in line


@pytest_integration
def test_once_per_start_verifies_again_after_a_restart_and_not_before(repository, tmp_path):
    from serving.triton import ServerOptions, serve

    repo = tmp_path / "repo"  # resnet18 and its image pipeline: every model loads
    repo.mkdir()
    for name in ("resnet18", "resnet18_image", *(p.name for p in repository.glob("preprocess_*"))):
        (repo / name).symlink_to(repository / name, target_is_directory=True)
    opts = ServerOptions.on_free_ports(repo, admin_key="k", backend_dir=tmp_path / "backends")
    marker = tmp_path / "verified.json"

    def check():
        return run_cli(
            "clients", "verify", "--url", opts.http_url, "--repository", str(repo), "--json",
            "--once-per-start", str(marker), env={"TRITON_ADMIN_KEY": "k"},
        )  # fmt: skip

    def verified(result) -> list[str]:
        assert result.returncode == 0, result.stdout + result.stderr
        return [] if result.stdout.startswith("ready,") else [r["model"] for r in json.loads(result.stdout)]

    server = serve(opts, tmp_path / "triton.log")
    try:
        assert verified(check()) == ["resnet18", "resnet18_image", *sorted(p.name for p in repo.glob("pre*"))]
        assert marker.is_file() and verified(check()) == []  # the same start: readiness only
    finally:
        server.stop()
    server = serve(opts, tmp_path / "triton.log")  # restarted on the same ports
    try:
        assert "resnet18" in verified(check())  # a new start: verified again
        assert verified(check()) == []
    finally:
        server.stop()
