"""The layers: cnn_deploy > export | serving | clients > cnn_deploy_core, checked by import-linter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("cnn_deploy_core", "export", "serving", "clients", "cnn_deploy")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the tree under test first, before the installed one
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def _copy_tree(target: Path) -> Path:
    shutil.copy2(ROOT / "pyproject.toml", target / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "photos")
        )
    return target


def test_import_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_a_stage_importing_another_inside_a_function_breaks_the_contract(tmp_path):
    tree = _copy_tree(tmp_path)
    verify = tree / "clients" / "verify.py"
    verify.write_text(verify.read_text() + "\n\ndef _sneaky():\n    from serving import repository  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "clients.verify -> serving.repository" in result.stdout


def test_the_core_importing_a_stage_breaks_the_contract(tmp_path):
    tree = _copy_tree(tmp_path)
    (tree / "cnn_deploy_core" / "extra.py").write_text("import export.models  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0 and "cnn_deploy_core.extra -> export.models" in result.stdout


def test_a_benchmark_importing_a_drill_breaks_the_cnn_deploy_contract(tmp_path):
    """bench/, drills/, report/ and checks/ stay independent of each other, above the one harness."""
    tree = _copy_tree(tmp_path)
    (tree / "cnn_deploy" / "bench" / "extra.py").write_text("import cnn_deploy.drills.judges  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0 and "cnn_deploy.bench.extra -> cnn_deploy.drills.judges" in result.stdout


def test_the_server_process_importing_its_supervisor_breaks_the_serving_contract(tmp_path):
    """serving's own layers: commands > local > supervisor > record > triton > ports; no circles."""
    tree = _copy_tree(tmp_path)
    triton = tree / "serving" / "triton.py"
    triton.write_text(triton.read_text() + "\n\ndef _sneaky():\n    from serving import supervisor  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0 and "serving.triton -> serving.supervisor" in result.stdout


def test_the_client_importing_torch_breaks_the_contract(tmp_path):
    tree = _copy_tree(tmp_path)
    (tree / "clients" / "extra.py").write_text("import torch  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0 and "clients.extra -> torch" in result.stdout


def test_client_modules_load_without_torch_at_run_time():
    code = (
        "import sys, clients.cli, clients.client, clients.verify, clients.loadtest.cli; "
        "clients.cli.build_parser(); sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
