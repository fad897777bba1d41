"""Two versions served side by side, each answering with its own export; rollback on a live server."""

from __future__ import annotations

import json

import pytest

from clients import ModelNotReadyError
from clients.client import TritonClient
from cnn_deploy_core.golden import GoldenSet
from cnn_deploy_core.metrics import compare
from cnn_deploy_core.registry import get
from export.build import build_all
from serving.repository import place_models
from tests.conftest import port_args, run_cli

pytestmark = pytest.mark.integration


def _matches(client: TritonClient, repo, version: str, *, ask: str = "") -> bool:
    golden = GoldenSet.load(repo / "resnet18" / version / "golden.npz")
    got = client.infer("resnet18", golden.inputs, version=ask)
    return compare(golden.outputs, got, **golden.tolerances["fp32"]).passed


def test_rollback_on_a_running_server_serves_the_previous_version(models_dir, tmp_path):
    repo, home = tmp_path / "repo", tmp_path / "project"
    place_models([get("resnet18")], models_dir=models_dir, repository=repo, identity=False)  # v1: seed 0
    (job,) = build_all([get("resnet18")], output=tmp_path / "seed1", weights="random", seed=1)
    assert job.succeeded, job.error
    (v2,) = place_models([get("resnet18")], models_dir=tmp_path / "seed1", repository=repo, identity=False)
    assert (v2.version, v2.served) == (2, [2, 1])

    ports, grpc = port_args()
    up = run_cli("serving", "up", "--detach", "--repository", str(repo), *ports, cwd=tmp_path, home=home)
    assert up.returncode == 0, up.stderr
    url = f"grpc://127.0.0.1:{grpc}"
    try:
        with TritonClient(url) as client:
            info = client.model_info("resnet18")
            assert sorted(info.versions) == ["1", "2"]
            assert (
                info.weights_source("1") == "random(seed=0)" and info.weights_source("2") == "random(seed=1)"
            )
            assert _matches(client, repo, "2") and not _matches(client, repo, "1")  # default: the newest
            assert _matches(client, repo, "1", ask="1")  # version 1 on request, with its own answers
        verify = run_cli(
            "clients", "verify", "--url", url, "--repository", str(repo), "--model", "resnet18", "--json"
        )
        assert verify.returncode == 0, verify.stderr
        assert sorted(r["version"] for r in json.loads(verify.stdout)) == ["1", "2"]

        rollback = run_cli("serving", "rollback", "resnet18", "--repository", str(repo), "--json", home=home)
        assert rollback.returncode == 0, rollback.stderr
        result = json.loads(rollback.stdout)
        assert (result["previous"], result["serving"]) == (2, 1) and result["reloaded"]

        with TritonClient(url) as client:
            assert client.model_info("resnet18").versions == ("1",)
            assert _matches(client, repo, "1")  # no version asked: version 1's answers now
            with pytest.raises(ModelNotReadyError, match="does not serve version 2"):
                client.infer(
                    "resnet18", GoldenSet.load(repo / "resnet18" / "2" / "golden.npz").inputs, version="2"
                )
    finally:
        down = run_cli("serving", "down", home=home)
    assert down.returncode == 0 and "stopped server" in down.stdout


def test_rollback_of_an_unknown_model_is_one_line(tmp_path):
    result = run_cli("serving", "rollback", "lenet", "--repository", str(tmp_path), home=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error: unknown architecture 'lenet'")
