"""Keys and TLS material, read from files the way a careful operator keeps them (docs/security.md).

A key given on our command line sits in /proc/PID/cmdline, readable by every local user; a key in
a file that only its owner may read does not. So every command that takes a key also takes
`--*-key-file`, and a key file (or a TLS private key) that other users may read is refused. The
environment is a fair channel too (/proc/PID/environ is readable by the process's user only), but
an environment key is a *default*: it is sent only where it cannot be overheard (loopback, or TLS).

Nor does a secret reach a report (`redact_command`, `redact_url`): every report records the command
that made it, and reports are shared (CI artefacts, tickets, docs/benchmarks.md); `--admin-key`
opens the server's admin APIs, and a URL may carry a password.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shlex
import stat
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cnn_deploy_core import CnnDeployError

REDACTED = "***"


class SecretFileError(CnnDeployError):
    """A key or certificate file that is missing, unreadable, empty or too widely readable."""


def exposure(mode: int) -> str | None:
    """Why a private file with this st_mode is too open, or None when only owner and group may read
    it. World-readable is refused; group-readable is allowed (a Kubernetes Secret mounted with
    `defaultMode: 0440` and the pod's fsGroup is how a non-root server reads its key)."""
    if mode & stat.S_IROTH:
        return "readable by every user"
    if mode & stat.S_IWOTH:
        return "writable by every user"
    return None


def check_private(path: Path, what: str) -> Path:
    """`path` exists, is a file, and is not readable by every user; else one clear line."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SecretFileError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise SecretFileError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{what} {path} is not a file")
    if problem := exposure(st.st_mode):
        raise SecretFileError(
            f"{what} {path} is {problem} (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"keep it private: chmod 600 {path}"
        )
    return path


def check_readable(path: Path, what: str) -> Path:
    """A public file (a certificate): it must exist and be a file."""
    path = Path(path)
    if not path.is_file():
        raise SecretFileError(f"{what} {path} does not exist or is not a file")
    return path


def read_key_file(path: Path, what: str = "key file") -> str:
    """The key in `path` (surrounding whitespace removed), refusing a file others may read."""
    check_private(path, what)
    try:
        key = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SecretFileError(f"cannot read {what} {path}: {e}") from None
    if not key:
        raise SecretFileError(f"{what} {path} is empty")
    if any(c.isspace() for c in key) or "," in key or "=" in key:
        # Triton's --*-restricted-* flags split on ',' and '=', and a header value cannot hold
        # a newline: such a key would silently not match.
        raise SecretFileError(f"{what} {path}: the key may not contain spaces, newlines, ',' or '='")
    return key


def new_key(nbytes: int = 18) -> str:
    """A random key (URL-safe) that never begins with '-': `--admin-key KEY` would read such a key
    as an option (about one random key in 64 begins with '-')."""
    while True:
        key = secrets.token_urlsafe(nbytes)
        if not key.startswith("-"):
            return key


def write_private(path: Path, text: str) -> Path:
    """Write `text` to a file only its owner can read (0600 from the start, never briefly wider).

    The text goes to a fresh temporary file beside `path` (O_EXCL|O_NOFOLLOW: never through a link
    someone planted, never into a file that already exists), then replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback (where nobody else can listen in)."""
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def may_send_env_key(host: str, tls: bool) -> bool:
    """An environment key goes only to loopback or over TLS: a plaintext key to a remote host can be
    read by anyone on the path, and the environment is set once for every command (verdict)."""
    return tls or is_loopback(host)


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
