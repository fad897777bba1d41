"""The commands of `python -m serving`, by group: server (up, status, down), versions (repo,
rollback) and tune. Each module adds its parsers and maps command names to functions."""

from __future__ import annotations

from pathlib import Path

from cnn_deploy_core import paths


def repository(args) -> Path:
    """The repository a command acts on: --repository, else the project's model_repository."""
    return args.repository or paths.repository()
