"""Every registered architecture through the whole export pipeline (slow: ~10 min on 2 cores)."""

from __future__ import annotations

import pytest

from cnn_deploy_core import registry
from export.pipeline import ExportJob, run_export

ALL = registry.names()


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_every_architecture_exports_and_verifies(tmp_path, name):
    job = ExportJob(registry.get(name), tmp_path, weights="random")
    run_export(job)
    assert job.succeeded, job.error
    assert {"fp32", "fp16"} <= set(job.verification)
    assert all(r.comparison.passed for rs in job.verification.values() for r in rs)
