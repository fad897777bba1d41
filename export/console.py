"""Rich consoles shared by the CLIs: tables on stdout, progress and errors on stderr (torch-free)."""

from __future__ import annotations

import sys

from rich.console import Console

# Piped output (CI logs, README examples) gets a readable width instead of rich's 80 columns.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 120)


def error(message: str) -> None:
    """One clear line on stderr (no markup parsing of the message itself)."""
    stderr.print("[red]error:[/red] ", end="")
    stderr.print(message, markup=False, highlight=False)
