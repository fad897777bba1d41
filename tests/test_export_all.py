"""Every registered architecture through the whole export pipeline, then proof that its verification
can fail: each mutation of tests/mutations.py is caught by the export's verification and by
`clients verify` against a server serving the damaged graph (slow).

Disk: a VGG case would hold ~6.5 GB if each mutation copied the whole model; here a mutated model
is hard links to the clean one's files but for its damaged graph (one file per mutation), and a
passing case's tmp_path is removed at once (`tmp_path_retention_policy = "failed"` in
pyproject.toml), so the suite's peak stays that of its biggest case."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

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


def _link_tree(src: Path, dst: Path) -> None:
    """`dst` as hard links to `src`'s files (no bytes copied): the mutated models share everything
    but the graph with the clean one."""
    shutil.copytree(src, dst, copy_function=os.link)


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
        model = f"{name}_{mutation.replace('-', '_').replace('.', '')}"
        _link_tree(repo / name, repo / model)
        for cfg in (repo / model / "configs").glob("*.pbtxt"):
            text = cfg.read_text().replace(f'name: "{name}"', f'name: "{model}"', 1)
            cfg.unlink()  # a hard link: write a new file, never through the link into the clean model
            cfg.write_text(text)
        path = repo / model / "1" / "model.onnx"
        path.unlink()
        onnx.save(damage(exported), str(path))
        assert failures(verify(path, job.cases, arch.fp32)), f"{mutation} went unnoticed by the export"
        mutated.append(model)
    del exported
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
