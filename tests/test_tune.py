"""`python -m serving tune` on a tiny search space, on the real server: it finishes, writes the
named config, and a server started with that config passes `verify`."""

from __future__ import annotations

import json
import shutil

import pytest

from serving import tune
from serving.config import parse_pbtxt
from serving.repository import ModelState
from tests.conftest import port_args, run_cli

pytestmark = pytest.mark.integration


def test_tune_writes_a_named_config_that_serves_and_verifies(repository, tmp_path):
    repo = tmp_path / "repo"
    for name in ("resnet18", "resnet18_int8", "identity"):
        shutil.copytree(repository / name, repo / name)
    output = tmp_path / "tune.json"
    result = run_cli(
        "serving", "tune", "resnet18", "--p99-ms", "10000", "--budget-s", "300", "--repository", str(repo),
        "--precisions", "fp32,int8", "--plans", "1x2", "--delays", "2000", "--max-batch-sizes", "32",
        "--preferred", "none", "--concurrency", "1,2", "--window-s", "1", "--output", str(output),
        home=tmp_path, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert len(report["candidates"]) == 2 and report["winner"] is not None
    for candidate in report["candidates"]:
        assert candidate["rejected"] is None and candidate["points"]
        assert all(p["verified"] > 0 and p["wrong"] == 0 for p in candidate["points"])
    assert output.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    winner = report["winner"]["candidate"]
    model = "resnet18" + ("_int8" if winner["precision"] == "int8" else "")
    tuned = parse_pbtxt((repo / model / "configs" / "tuned.pbtxt").read_text())
    assert tuned.name == model and tuned.instance_group[0].count == 1
    assert ModelState.load(repo / "resnet18").tuned["config_name"] == "tuned"
    assert (repo / "resnet18" / "configs" / "cpu.pbtxt").is_file()  # never overwritten

    ports, grpc = port_args()
    up = run_cli(
        "serving",
        "up",
        "--detach",
        "--config-name",
        "tuned",
        "--repository",
        str(repo),
        *ports,
        home=tmp_path,
    )
    try:
        assert up.returncode == 0, up.stderr
        verify = run_cli("clients", "verify", "--url", f"grpc://127.0.0.1:{grpc}", "--repository", str(repo),
                         "--model", "resnet18", "--model", "resnet18_int8")  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        run_cli("serving", "down", home=tmp_path)


def test_tune_refuses_to_overwrite_the_cpu_config_without_force(tmp_path):
    with pytest.raises(Exception, match="would overwrite a generated config"):
        tune.write_tuned("resnet18", tmp_path, tune.Candidate(), config_name="cpu")


def test_a_candidate_with_a_wrong_answer_loses_whatever_its_speed(monkeypatch, tmp_path):
    def fake_measure(name, candidate, repository, space, slo_ms, window_s, progress):
        m = tune.Measured(candidate)
        fast = candidate.precision == "int8"
        point = {"concurrency": 4, "infer_per_s": 200.0 if fast else 50.0, "p50_ms": 5, "p99_ms": 9,
                 "verified": 100, "wrong": 3 if fast else 0, "errors": 0}  # fmt: skip
        m.points = [point]
        if fast:
            m.rejected = "3 wrong answers and 0 errors at c=4 (100 checked)"
        else:
            m.best = point
        return m

    monkeypatch.setattr(tune, "measure", fake_measure)
    (tmp_path / "resnet18").mkdir()
    ModelState().save(tmp_path / "resnet18")
    space = tune.Space(("fp32", "int8"), ((1, 2),), (32,), ((),), (2000,), (4,))
    results = tune.search("resnet18", tmp_path, slo_ms=10, budget_s=60, space=space, window_s=1)
    assert tune.winner(results).candidate.precision == "fp32"
    assert tune.pareto([(9, 50), (9, 200), (20, 100), (5, 40)]) == [(5, 40), (9, 200)]
