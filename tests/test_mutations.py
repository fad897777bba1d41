"""Verification can fail: subtle damage to an exported graph is caught by the export's verification
and by `clients verify` against a server serving the damaged model (a few architectures here;
every architecture in tests/test_export_all.py, under `slow`)."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import onnx
import pytest

from cnn_deploy_core.registry import get
from export.models import load_model
from export.verify import failures, reference_cases, verify
from serving.triton import ServerOptions, TritonProcess
from tests.conftest import run_cli
from tests.mutations import MUTATIONS

MUTATED = ("resnet18", "googlenet")  # googlenet's verification was vacuous before the new init


@functools.cache
def _cases(name: str):
    arch = get(name)
    loaded = load_model(arch, "random")  # the same seed and init as the export: the same reference
    return reference_cases(loaded.model, arch, loaded.preprocessing)


def _damaged(models_dir: Path, name: str, mutation: str, target: Path) -> Path:
    onnx.save(MUTATIONS[mutation](onnx.load(str(models_dir / name / "model.onnx"))), str(target))
    return target


def test_the_undamaged_export_passes_its_own_verification(models_dir):
    for name in MUTATED:
        assert failures(verify(models_dir / name / "model.onnx", _cases(name), get(name).fp32)) == []


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("name", MUTATED)
def test_export_verification_catches_a_damaged_graph(models_dir, name, mutation, tmp_path):
    damaged = _damaged(models_dir, name, mutation, tmp_path / "model.onnx")
    problems = failures(verify(damaged, _cases(name), get(name).fp32))
    assert problems, f"{mutation} on {name} went unnoticed"


def mutated_repository(repository: Path, models_dir: Path, target: Path, names=MUTATED) -> list[str]:
    """A repository with one model per (architecture, mutation): the damaged graph beside the
    original golden set and config. Returns the model names."""
    created = []
    for name in names:
        for mutation in MUTATIONS:
            model = f"{name}_{mutation.replace('-', '_').replace('.', '')}"
            shutil.copytree(repository / name, target / model)
            for cfg in (target / model / "configs").glob("*.pbtxt"):
                cfg.write_text(cfg.read_text().replace(f'name: "{name}"', f'name: "{model}"', 1))
            _damaged(models_dir, name, mutation, target / model / "1" / "model.onnx")
            created.append(model)
    return created


@pytest.mark.integration
def test_clients_verify_fails_on_every_damaged_model_a_server_serves(repository, models_dir, tmp_path):
    repo = tmp_path / "repo"
    mutated = mutated_repository(repository, models_dir, repo)
    shutil.copytree(repository / "resnet18", repo / "resnet18")  # the control: undamaged
    opts = ServerOptions.on_free_ports(repo, backend_dir=tmp_path / "backends")
    with TritonProcess(opts, log_path=tmp_path / "triton.log").start() as server:
        server.wait_ready(300)
        args = [a for m in [*mutated, "resnet18"] for a in ("--model", m)]
        result = run_cli(
            "clients", "verify", "--url", opts.grpc_url, "--repository", str(repo), "--json", *args
        )
    assert result.returncode == 1, result.stderr
    verdicts = {r["model"]: r for r in json.loads(result.stdout)}
    assert verdicts["resnet18"]["passed"], verdicts["resnet18"]
    caught = {m for m in mutated if not verdicts[m]["passed"] and verdicts[m]["error"] is None}
    assert caught == set(mutated), {m: verdicts[m] for m in set(mutated) - caught}
    assert "verification failed for" in result.stderr
