"""The suite's own settings are in force: pytest keeps only failed tests' temporary files."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
def test_passes(tmp_path):
    (tmp_path / "written").write_text("x")

def test_fails(tmp_path):
    (tmp_path / "written").write_text("x")
    assert False, "on purpose"
"""


def test_only_failed_tests_keep_their_tmp_path(tmp_path):
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text(PROBE)
    base = tmp_path / "basetemp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(probe.parent),
            "--basetemp",
            str(base),
            "-p",
            "no:cacheprovider",
            "-q",
            str(probe),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=probe.parent,
    )
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr
    kept = sorted(p.parent.name for p in base.rglob("written"))
    assert kept == ["test_fails0"], f"tmp_path kept for {kept} (pyproject's tmp_path_retention_policy?)"
