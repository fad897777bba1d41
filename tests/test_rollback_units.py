"""A model and its variants move together on a running server: two INT8 exports with an
image ensemble, rolled back, rolled forward, and a corrupted variant whose reload fails and leaves
every model serving as before."""

from __future__ import annotations

import json
import shutil

import pytest

from cnn_deploy_core.layout import INT8_FILE
from cnn_deploy_core.registry import get
from tests.conftest import port_args, run_cli

pytestmark = pytest.mark.integration

UNIT = ("resnet18", "resnet18_int8", "resnet18_image")
AT_2 = {"resnet18": ["1", "2"], "resnet18_int8": ["1", "2"], "resnet18_image": ["2"]}  # 2; 1 on request
AT_1 = {"resnet18": ["1"], "resnet18_int8": ["1"], "resnet18_image": ["1"]}


def _repo(source, repo, home, *more: str):
    return run_cli(
        "serving", "repo", "resnet18", "--models", str(source), "--repository", str(repo), *more, home=home
    )


@pytest.fixture(scope="module")
def second_export(models_dir, tmp_path_factory):
    """resnet18 exported again with --int8 and another seed: version 2 (models_dir's is version 1)."""
    from export.build import build_all

    out = tmp_path_factory.mktemp("seed1")
    (job,) = build_all([get("resnet18")], output=out, weights="random", seed=1, int8=True)
    assert job.succeeded, job.error
    return out


def _verify(url: str, repo) -> dict[str, list[str]]:
    """`clients verify` on every variant, as a user runs it: model -> the versions that passed."""
    args = [a for m in UNIT for a in ("--model", m)]
    result = run_cli("clients", "verify", "--url", url, "--repository", str(repo), "--json", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed: dict[str, list[str]] = {}
    for r in json.loads(result.stdout):
        assert r["passed"], r
        passed.setdefault(r["model"], []).append(r["version"])
    return {m: sorted(v) for m, v in passed.items()}


def _status(home) -> dict[str, dict]:
    result = run_cli("serving", "status", "--json", home=home)
    assert result.returncode == 0, result.stderr
    return {r["model"]: r for r in json.loads(result.stdout)["versions"]}


def test_rollback_and_roll_forward_move_every_variant_and_a_failed_reload_changes_nothing(
    models_dir, second_export, tmp_path
):
    repo, home = tmp_path / "repo", tmp_path / "project"
    for source in (models_dir, second_export):  # no server yet: placed, nothing to reload
        placed = _repo(source, repo, home)
        assert placed.returncode == 0, placed.stderr
    ports, grpc = port_args()
    up = run_cli("serving", "up", "--detach", "--repository", str(repo), *ports, home=home)
    assert up.returncode == 0, up.stderr
    url = f"grpc://127.0.0.1:{grpc}"
    try:
        assert _verify(url, repo) == {
            "resnet18": ["1", "2"],
            "resnet18_int8": ["1", "2"],
            "resnet18_image": ["2"],
        }

        back = run_cli(
            "serving", "rollback", "resnet18", "--to", "1", "--repository", str(repo), "--json", home=home
        )
        assert back.returncode == 0, back.stderr
        result = json.loads(back.stdout)
        assert (result["previous"], result["serving"]) == (2, 1)
        assert set(UNIT) <= set(result["models_reloaded"])
        assert _verify(url, repo) == AT_1
        assert (repo / "resnet18_int8" / "2" / INT8_FILE).is_file(), "kept on disk for the roll forward"
        status = _status(home)
        assert all(status[m]["agrees"] and status[m]["served"] == [1] for m in UNIT[:2]), status

        forward = _repo(second_export, repo, home)
        assert forward.returncode == 0, forward.stderr
        assert "reloaded" in forward.stderr and "READY" in forward.stderr
        assert _verify(url, repo) == {
            "resnet18": ["1", "2"],
            "resnet18_int8": ["1", "2"],
            "resnet18_image": ["2"],
        }

        # A third export whose INT8 file is damaged: its reload fails, and nothing changes.
        third = tmp_path / "damaged"
        shutil.copytree(second_export, third)
        (third / "resnet18" / INT8_FILE).write_bytes(b"\x08\x07 not an ONNX file")
        before = sorted(p.name for p in (repo / "resnet18").iterdir())
        failed = _repo(third, repo, home)
        assert failed.returncode == 1, failed.stderr
        assert "resnet18_int8" in failed.stderr and "previous versions again" in failed.stderr, failed.stderr
        assert sorted(p.name for p in (repo / "resnet18").iterdir()) == before, "version 3 is gone again"
        assert not (repo / "resnet18_int8" / "3").exists()
        assert _verify(url, repo) == {
            "resnet18": ["1", "2"],
            "resnet18_int8": ["1", "2"],
            "resnet18_image": ["2"],
        }
        assert all(row["agrees"] for row in _status(home).values())
    finally:
        down = run_cli("serving", "down", home=home)
    assert down.returncode == 0 and "stopped server" in down.stdout


def test_no_reload_leaves_the_running_server_alone_and_never_prunes_what_it_serves(
    models_dir, second_export, tmp_path
):
    repo, home = tmp_path / "repo", tmp_path / "project"
    placed = _repo(models_dir, repo, home)
    assert placed.returncode == 0, placed.stderr
    third = tmp_path / "third"  # the second export again, told apart by its report: version 3
    shutil.copytree(second_export, third)
    report = json.loads((third / "resnet18" / "export.json").read_text())
    (third / "resnet18" / "export.json").write_text(json.dumps({**report, "note": "third"}))
    ports, _ = port_args()
    up = run_cli("serving", "up", "--detach", "--repository", str(repo), *ports, home=home)
    assert up.returncode == 0, up.stderr
    try:
        for source in (second_export, third):
            again = _repo(source, repo, home, "--no-reload", "--keep", "1")
            assert again.returncode == 0, again.stderr
            assert "--no-reload" in again.stderr
        # The configs now serve 3 and 2; version 1 only the running server does: it stays.
        assert (repo / "resnet18" / "1").is_dir() and (repo / "resnet18_int8" / "1").is_dir()
        status = _status(home)
        assert status["resnet18"]["served"] == [1] and status["resnet18"]["on_disk"] == [2, 3]
        assert not status["resnet18"]["agrees"]
        shown = run_cli("serving", "status", home=home)
        assert "DIFFERS" in shown.stdout and "resnet18 serves version(s) 1" in shown.stderr
    finally:
        run_cli("serving", "down", home=home)
