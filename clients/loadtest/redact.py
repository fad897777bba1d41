"""Secrets never reach a report: the command line and URLs are redacted before anything is written.

A report is shared (CI artefacts, tickets, docs/benchmarks.md); `--admin-key` opens the server's
admin APIs (shared memory, model control), and a URL may carry a password.
"""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"
# Options whose value is a secret: --admin-key, --token, --password, --api-key, --auth-header, ...
_SECRET_OPTION = re.compile(
    r"^--?(?:\w+[-_])*(key|token|password|passwd|secret|auth|credentials?)(?:[-_]\w+)*$", re.I
)
_SECRET_ASSIGNMENT = re.compile(r"^[A-Z_]*(KEY|TOKEN|PASSWORD|SECRET)[A-Z_]*=", re.I)  # FOO_KEY=... prefixes


def redact_url(url: str) -> str:
    """A URL (or several, comma-separated) without the password of its user info."""
    return ",".join(_redact_one_url(u) for u in url.split(","))


def _redact_one_url(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if parts.password is None:
        return url
    netloc = f"{parts.username}:{REDACTED}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redact_argv(argv: list[str]) -> list[str]:
    """The arguments with every secret option's value (and a URL's password) replaced by ***."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        if _SECRET_OPTION.match(name):
            if eq:
                out.append(f"{name}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        if _SECRET_ASSIGNMENT.match(arg):
            out.append(f"{name}={REDACTED}")
            continue
        out.append(redact_url(arg) if "://" in arg else arg)
    return out


def redact_command(command: str) -> str:
    """A shell command line, redacted (see redact_argv); unparsable text is redacted whole."""
    if not command:
        return command
    try:
        argv = shlex.split(command)
    except ValueError:
        return REDACTED
    return shlex.join(redact_argv(argv))
