"""`python -m serving repo|up|status|down|rollback|tune`: thin commands over public functions
(serving/commands/, by group)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnn_deploy_core import paths
from cnn_deploy_core.console import dispatch
from serving.commands import server, tune, versions

COMMANDS: dict = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    repo_opt = argparse.ArgumentParser(add_help=False)
    repo_opt.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="Triton model repository (default: model_repository in the project)",
    )
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    state_opt = argparse.ArgumentParser(add_help=False)
    state_opt.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the local server's record and log live (default: build/serving in the project, "
        f"or ${paths.STATE_ENV})",
    )

    for group in (versions, server, tune):
        COMMANDS.update(group.add_parsers(sub, repo_opt, json_opt, state_opt))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return dispatch(COMMANDS, args)


if __name__ == "__main__":
    sys.exit(main())
