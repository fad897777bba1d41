"""Where things live, anchored to the project, never to the working directory.

In a source checkout the project is the checkout (the folder holding pyproject.toml next to this
package); `CNN_DEPLOY_HOME` moves it anywhere (tests, installed use). Outside a checkout, with no
`CNN_DEPLOY_HOME`, files the user names go to the working directory (as any CLI's output does) and
the local server's state goes to the user's state directory, so `serving down` finds the server
`serving up` started from wherever it is run.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CNN_DEPLOY_HOME"
STATE_ENV = "CNN_DEPLOY_STATE_DIR"
_CHECKOUT = Path(__file__).resolve().parent.parent


def _is_checkout(path: Path) -> bool:
    return (path / "pyproject.toml").is_file() and (path / "cnn_deploy_core").is_dir()


def project_root() -> Path | None:
    """The project folder: $CNN_DEPLOY_HOME, else the source checkout; None for an installed package."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    return _CHECKOUT if _is_checkout(_CHECKOUT) else None


def _base() -> Path:
    return project_root() or Path.cwd()


def repository() -> Path:
    """The Triton model repository (`model_repository/`)."""
    return _base() / "model_repository"


def models_dir() -> Path:
    """Export output: one folder per architecture (`build/models/`)."""
    return _base() / "build" / "models"


def reports_dir() -> Path:
    return _base() / "reports"


def cache_dir() -> Path:
    """Downloads and generated helpers (perf_analyzer, scratch repositories): `build/cache/`."""
    return _base() / "build" / "cache"


def state_dir() -> Path:
    """The local server's state (pid, URLs, admin key, log): $CNN_DEPLOY_STATE_DIR, else
    `build/serving/` in the project, else the user's state directory."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser().resolve()
    root = project_root()
    if root is not None:
        return root / "build" / "serving"
    xdg = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(xdg) / "cnn-deploy"
