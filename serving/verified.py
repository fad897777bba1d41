"""Ready means verified: a started replica counts as ready only once every served model answered
its own golden set, sent by the torch-free client (`python -m clients verify`) over loopback.

`serving` does not import `clients` (import contracts): the client runs as a subprocess, with the
keys in its environment (never on a command line) and sent to loopback only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cnn_deploy_core.golden import has_golden
from serving.triton import ServerOptions

VERIFY_TIMEOUT_S = 600.0


def verifiable(repository: Path, ready: list[str]) -> tuple[list[str], list[str]]:
    """The READY models a golden set checks, and those none can (named, not blocking: a repository
    may hold models of its own without one)."""
    checked = [m for m in ready if has_golden(repository, m)]
    return checked, [m for m in ready if m not in checked]


def verify_command(opts: ServerOptions, models: list[str]) -> list[str]:
    """`python -m clients verify` against this replica's HTTP endpoint (always plaintext on loopback
    or its host; gRPC may need client certificates the server does not have)."""
    host = "127.0.0.1" if opts.http_host in ("0.0.0.0", "") else opts.http_host  # a wildcard: loopback
    url = f"http://{host}:{opts.http_port}"
    command = [sys.executable, "-m", "clients", "verify", "--url", url, "--repository",
               str(opts.repository.resolve())]  # fmt: skip
    for model in models:
        command += ["--model", model]
    return command


def verify_replica(opts: ServerOptions, models: list[str], timeout: float = VERIFY_TIMEOUT_S) -> str | None:
    """None when every model answered its golden set on this replica, else what went wrong (one line)."""
    if not models:
        return None
    env = {**os.environ, "TRITON_ADMIN_KEY": opts.admin_key or "", "COLUMNS": "200"}
    env.pop("TRITON_API_KEY", None)
    if opts.inference_key:
        env["TRITON_API_KEY"] = opts.inference_key
    try:
        done = subprocess.run(
            verify_command(opts, models), env=env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"the golden-set check did not finish within {timeout:.0f} s"
    if done.returncode == 0:
        return None
    lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    failed = [ln for ln in lines if "fail" in ln.lower()]
    return "golden-set check failed: " + ((failed or lines or [f"exit code {done.returncode}"])[-1])
