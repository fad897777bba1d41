"""The base install is the client: a fresh venv with `pip install cnn-deploy` (no extras) has no
torch, imports `clients`, classifies a photo against the running server, and the stages that need
an extra say which one in one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from cnn_deploy_core.images import sample_photos
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
SOURCES = ("cnn_deploy_core", "export", "serving", "clients", "cnn_deploy")


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory):
    """A venv holding the project's base distribution only, installed from a copy of the sources."""
    work = tmp_path_factory.mktemp("base-install")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(ROOT / name, src / name)
    for package in SOURCES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-c", str(src / "constraints.txt"), str(src)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return python


def _run(python, *args, cwd):
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_base_install_has_the_client_and_no_torch(base_venv, tmp_path):
    assert (
        _run(base_venv, "-c", "import clients, clients.cli, clients.loadtest", cwd=tmp_path).returncode == 0
    )
    for heavy in ("torch", "onnxruntime", "pytriton"):
        result = _run(base_venv, "-c", f"import {heavy}", cwd=tmp_path)
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, heavy


def test_base_install_classifies_a_photo_against_the_server(base_venv, triton, tmp_path):
    photo = sample_photos()[0]
    result = _run(
        base_venv,
        "-m",
        "clients",
        "infer",
        "--url",
        triton.grpc_url,
        "--model",
        "resnet18",
        "--json",
        str(photo),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert len(entry["predictions"]) == 5 and all(p["label"] for p in entry["predictions"])


def test_a_stage_without_its_extra_names_the_extra_in_one_line(base_venv, tmp_path):
    result = _run(base_venv, "-m", "export", "build", "resnet18", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert re.fullmatch(
        r"error: `build` needs (torch|torchvision|onnx|onnxscript), which is not installed: "
        r"pip install 'cnn-deploy\[export\]'",
        line,
    ), line


SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")


def _project() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_supported_python_is_admitted_and_listed():
    from packaging.specifiers import SpecifierSet

    project = _project()
    admitted = SpecifierSet(project["requires-python"])
    for version in (*SUPPORTED_PYTHONS, "3.14"):
        assert version in admitted, f"requires-python {admitted} refuses Python {version}"
    listed = {c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if c.startswith("Programming Language")}
    assert set(SUPPORTED_PYTHONS) <= listed


def test_constraints_pin_each_package_once_for_every_supported_python():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [ln.split("#")[0].strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    requirements = [Requirement(ln) for ln in lines if ln]
    for version in SUPPORTED_PYTHONS:
        env = {"python_version": version, "python_full_version": f"{version}.0"}
        pinned = [
            canonicalize_name(r.name) for r in requirements if r.marker is None or r.marker.evaluate(env)
        ]
        assert len(pinned) == len(set(pinned)), f"Python {version}: a package pinned twice"
        assert "numpy" in pinned, f"Python {version}: numpy unpinned"
        for r in requirements:
            assert len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==", str(r)


def test_the_server_says_in_one_line_that_it_needs_python_311_or_312():
    from serving.wheel import python_refusal

    assert python_refusal((3, 11)) is None and python_refusal((3, 12)) is None
    refusal = python_refusal((3, 13))
    assert refusal is not None and "\n" not in refusal and "3.11 and 3.12, not 3.13" in refusal
    assert python_refusal((3, 14)) is not None
    (pytriton,) = [d for d in _project()["optional-dependencies"]["serving"] if "pytriton" in d]
    assert pytriton.endswith("; python_version < '3.13'")  # installed where it can run, only
