"""Every registered architecture through the whole export pipeline (slow: ~10 min on 2 cores)."""

from __future__ import annotations

import pytest

from export import registry
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


def test_every_registered_architecture_has_export_and_analysis_tests():
    """A meta-test: collect the suite and look for each registered name in the per-architecture tests."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_export_all.py",
            "tests/test_analysis.py",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    ).stdout
    for test in ("test_every_architecture_exports_and_verifies", "test_totals_match_torchvision_metadata"):
        missing = [name for name in registry.names() if f"{test}[{name}]" not in listing]
        assert not missing, f"{test} does not cover {missing}"
