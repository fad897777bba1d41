"""The local server's record: the state file (server.json) that `serving status`, `down`,
`rollback` and the clients read, and the admin key's private file beside it.

Every file here is written by cnn_deploy_core.secrets.write_private: 0600 from the start, through a
fresh temporary file (never a link someone planted) renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnn_deploy_core import paths
from cnn_deploy_core.secrets import write_private
from serving import ServingError
from serving.triton import ServerOptions

STATE_NAME = "server.json"
ADMIN_KEY_NAME = "admin.key"  # the running server's admin key, 0600, beside (never inside) its record
LOG_NAME = "triton.log"
SPEC_NAME = ".supervisor-spec.json"  # the detached supervisor's orders (holds the key: 0600, read once)
SUPERVISOR_LOG = "supervisor.log"

# What the record says of each replica (serving.supervisor.Replica.record).
REPLICA_KEYS = (
    "pid", "http_url", "grpc_url", "metrics_url", "log", "state", "restarts", "last_exit", "problem",
    "failed_models",
)  # fmt: skip


def state_file(state_dir: Path | None = None) -> Path:
    """The detached server's record; anchored to the project (see cnn_deploy_core.paths)."""
    return (state_dir or paths.state_dir()) / STATE_NAME


def keep_admin_key(state_dir: Path, key: str | None) -> str:
    """Write the server's admin key to its own private file (0600) in the state dir and return the
    path: the record (server.json), which `status --json` and users read, names the file only."""
    path = state_dir / ADMIN_KEY_NAME
    if not key:
        path.unlink(missing_ok=True)
        return ""
    return str(write_private(path, key + "\n"))


@dataclass
class ServerState:
    """What `status` and `down` need to find a detached server; written 0600. The admin key is not
    in it: `admin_key_file` names the private file that holds it (`admin_key` reads it)."""

    pid: int
    http_url: str
    grpc_url: str
    metrics_url: str
    repository: str
    config_name: str
    admin_key_file: str
    log: str
    replicas: list[dict] = field(default_factory=list)  # the others: pid, *_url, log (same keys)
    # The supervisor: the foreground `serving up`, or the detached `python -m serving.supervisor`.
    supervisor_pid: int | None = None
    # This record's replica as its supervisor last saw it: starting | ready | unready | restarting |
    # down. Ready means every model READY and answering its golden set; unready says why (problem)
    # and which models failed to load (failed_models: name, version, state, Triton's reason).
    state: str = "ready"
    restarts: int = 0
    last_exit: str | None = None
    problem: str | None = None
    failed_models: list[dict] = field(default_factory=list)

    @property
    def admin_key(self) -> str:
        """The admin key from its private file ("" when the server has none or the file is gone)."""
        if not self.admin_key_file:
            return ""
        try:
            return Path(self.admin_key_file).read_text().strip()
        except OSError:
            return ""

    def all(self) -> list[dict]:
        """Every replica, this record's first: pid, *_url, log, state, restarts, last_exit, ..."""
        first = {k: getattr(self, k) for k in REPLICA_KEYS}
        return [first, *self.replicas]

    def save(self, path: Path) -> None:
        write_private(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ServerState | None:
        try:
            data = json.loads(path.read_text())
            data.pop("admin_key", None)  # a record written before the key moved to its own file
            data.setdefault("admin_key_file", "")
            return cls(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            raise ServingError(f"{path} is unreadable ({e}); remove it if no server is running") from e


def record_replicas(path: Path, fixed: dict, records: list[dict]) -> ServerState:
    """Write the state file: `fixed` (repository, config_name, admin_key_file, supervisor_pid) and every
    replica's record (serving.supervisor.Replica.record), the first at the top level."""
    first = {k: records[0][k] for k in REPLICA_KEYS}
    state = ServerState(**first, **fixed, replicas=records[1:])
    state.save(path)
    return state


def partial_record(first: ServerOptions, supervisor_pid: int, state_dir: Path) -> dict:
    """The state-file fields that do not change while supervising (the admin key goes to its own
    private file in `state_dir`, named here)."""
    return {
        "repository": str(first.repository),
        "config_name": first.config_name,
        "admin_key_file": keep_admin_key(state_dir, first.admin_key),
        "supervisor_pid": supervisor_pid,
    }


def forget(path: Path) -> None:
    """Remove a stopped server's record and the admin key file beside it."""
    path.unlink(missing_ok=True)
    (path.parent / ADMIN_KEY_NAME).unlink(missing_ok=True)


def state_path_of_spec(spec: Path) -> Path:
    return spec.parent / STATE_NAME
