"""Every registered architecture through the whole export pipeline, then proof that its verification
can fail: each mutation of tests/mutations.py is caught by the export's verification and by
`clients verify` against a server serving the damaged graph (slow: ~25 min on 2 cores)."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from cnn_deploy_core import registry
from cnn_deploy_core.golden import GoldenSet
from cnn_deploy_core.metrics import sensitivity
from export.pipeline import ExportJob, run_export
from export.verify import failures, verify
from serving.repository import place_models
from serving.triton import ServerOptions, TritonProcess
from tests.conftest import run_cli
from tests.mutations import MUTATIONS

ALL = registry.names()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", ALL)
def test_every_architecture_exports_verifies_and_catches_every_mutation(tmp_path, name):
    arch = registry.get(name)
    job = ExportJob(arch, tmp_path / "models", weights="random")
    (tmp_path / "models").mkdir()
    run_export(job, keep_cases=True)
    assert job.succeeded, job.error
    assert {"fp32", "fp16"} <= set(job.verification)
    assert all(r.comparison.passed for rs in job.verification.values() for r in rs)
    golden = GoldenSet.load(tmp_path / "models" / name / "golden.npz")
    assert sensitivity(golden.outputs).passed

    exported = onnx.load(str(tmp_path / "models" / name / "model.onnx"))
    repo = tmp_path / "repo"
    place_models([arch], models_dir=tmp_path / "models", repository=repo, identity=False)
    mutated = []
    for mutation, damage in MUTATIONS.items():
        damaged = damage(exported)
        path = tmp_path / f"{mutation}.onnx"
        onnx.save(damaged, str(path))
        assert failures(verify(path, job.cases, arch.fp32)), f"{mutation} went unnoticed by the export"
        model = f"{name}_{mutation.replace('-', '_').replace('.', '')}"
        shutil.copytree(repo / name, repo / model)
        for cfg in (repo / model / "configs").glob("*.pbtxt"):
            cfg.write_text(cfg.read_text().replace(f'name: "{name}"', f'name: "{model}"', 1))
        shutil.copy2(path, repo / model / "1" / "model.onnx")
        mutated.append(model)
    for extra in repo.iterdir():  # only the tensor models: the image ensembles are checked elsewhere
        if extra.name.startswith(("preprocess_", f"{name}_image")):
            shutil.rmtree(extra)
    job.cases = []

    opts = ServerOptions.on_free_ports(repo, backend_dir=tmp_path / "backends")
    with TritonProcess(opts, log_path=tmp_path / "triton.log").start() as server:
        server.wait_ready(600)
        models = [a for m in [name, *mutated] for a in ("--model", m)]
        result = run_cli(
            "clients", "verify", "--url", opts.grpc_url, "--repository", str(repo), "--json", *models
        )
    verdicts = {r["model"]: r for r in json.loads(result.stdout)}
    assert verdicts[name]["passed"], verdicts[name]
    assert not [m for m in mutated if verdicts[m]["passed"]], "a damaged model passed `clients verify`"
