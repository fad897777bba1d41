"""Default paths are anchored to the project (or CNN_DEPLOY_HOME), never to the working directory."""

from __future__ import annotations

from pathlib import Path

from cnn_deploy_core import paths
from tests.conftest import ROOT


def test_a_checkout_is_its_own_project(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.HOME_ENV, raising=False)
    monkeypatch.delenv(paths.STATE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # the working directory does not matter
    assert paths.project_root() == ROOT
    assert paths.repository() == ROOT / "model_repository"
    assert paths.models_dir() == ROOT / "build" / "models"
    assert paths.state_dir() == ROOT / "build" / "serving"


def test_home_moves_every_default_and_state_dir_moves_the_state(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.delenv(paths.STATE_ENV, raising=False)
    assert paths.repository() == tmp_path / "home" / "model_repository"
    assert paths.reports_dir() == tmp_path / "home" / "reports"
    assert paths.state_dir() == tmp_path / "home" / "build" / "serving"
    monkeypatch.setenv(paths.STATE_ENV, str(tmp_path / "state"))
    assert paths.state_dir() == tmp_path / "state"


def test_an_installed_package_keeps_server_state_in_the_users_state_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "_CHECKOUT", tmp_path / "site-packages")  # no pyproject.toml there
    monkeypatch.delenv(paths.HOME_ENV, raising=False)
    monkeypatch.delenv(paths.STATE_ENV, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert paths.project_root() is None
    assert paths.state_dir() == tmp_path / "xdg" / "cnn-deploy"
    assert paths.repository() == Path.cwd() / "model_repository"  # files the user names: the cwd
