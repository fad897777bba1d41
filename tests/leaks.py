"""The key scan: every file a run wrote, and everything it printed, searched for the keys it used
(docs/security.md). Only a file whose job is to hold a key may contain one, and it must be private."""

from __future__ import annotations

import stat
from pathlib import Path

# Files whose job is to hold a key: the key files (ours and the user's), the detached supervisor's
# orders (0600, deleted once read), TLS private keys.
KEY_HOLDERS = {"admin.key", "api.key", ".supervisor-spec.json", "tls.key", "client.key"}
# A known key for runs that take it from the environment, as a user's shell would give it.
ENV_ADMIN_KEY = "envkey-7c3e9a1f5b2d8046"


def leaks(root: Path, secrets: tuple[str, ...]) -> list[str]:
    """Files under `root` that hold a secret and are not a private key holder (verdict)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        if not any(s.encode() in data for s in secrets):
            continue
        private = stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
        if path.name not in KEY_HOLDERS or not private:
            found.append(f"{path.relative_to(root)} ({stat.S_IMODE(path.stat().st_mode):04o})")
    return found


def printed(outputs, secrets: tuple[str, ...]) -> list[str]:
    """The runs (CompletedProcess) whose stdout or stderr shows a secret."""
    return [
        " ".join(map(str, o.args))[:120] for o in outputs if any(s in o.stdout + o.stderr for s in secrets)
    ]
