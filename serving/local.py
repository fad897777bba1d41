"""`serving up | status | down`: the local CPU server, in the foreground or detached.

With `--replicas N`, N servers of the same repository on consecutive blocks of ports (replica k
adds 3k to each port: 8000-8002, 8003-8005, ...), for failure drills and for a client that
spreads its load over them (`--url` repeated). One state file records them all; `status`,
`down` and `rollback` act on every replica. A supervisor (serving/supervisor.py) restarts a
replica that dies while the others serve on: the foreground `serving up` itself, or with
`--detach` a small process of its own, recorded in the state file.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from cnn_deploy_core import paths
from serving import ServingError
from serving.supervisor import Replica, RestartPolicy, Supervisor, partial_record, spec_to_json
from serving.triton import (
    ADMIN_HEADER,
    ServerOptions,
    TritonProcess,
    check_ports,
    is_ready,
    kill_tree,
    remove_shm_regions,
)

STATE_NAME = "server.json"
ADMIN_KEY_NAME = "admin.key"  # the running server's admin key, 0600, beside (never inside) its record
LOG_NAME = "triton.log"
SPEC_NAME = ".supervisor-spec.json"  # the detached supervisor's orders (holds the key: 0600, read once)
SUPERVISOR_LOG = "supervisor.log"


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
    from cnn_deploy_core.secrets import write_private

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
    # This record's replica as its supervisor last saw it: starting | ready | restarting | down.
    state: str = "ready"
    restarts: int = 0
    last_exit: str | None = None

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
        """Every replica, this record's first: pid, *_url, log, state, restarts, last_exit."""
        first = {k: getattr(self, k) for k in REPLICA_KEYS}
        return [first, *self.replicas]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, path)

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


REPLICA_KEYS = ("pid", "http_url", "grpc_url", "metrics_url", "log", "state", "restarts", "last_exit")


def record_replicas(path: Path, fixed: dict, records: list[dict]) -> ServerState:
    """Write the state file: `fixed` (repository, config_name, admin_key_file, supervisor_pid) and every
    replica's record (serving.supervisor.Replica.record), the first at the top level."""
    first = {k: records[0][k] for k in REPLICA_KEYS}
    state = ServerState(**first, **fixed, replicas=records[1:])
    state.save(path)
    return state


def forget(path: Path) -> None:
    """Remove a stopped server's record and the admin key file beside it."""
    path.unlink(missing_ok=True)
    (path.parent / ADMIN_KEY_NAME).unlink(missing_ok=True)


def state_path_of_spec(spec: Path) -> Path:
    return spec.parent / STATE_NAME


def inference_key(key_file: Path | None) -> str | None:
    """--inference-key-file's key (private: see cnn_deploy_core.secrets), or None: inference open."""
    if key_file is None:
        return None
    from cnn_deploy_core.secrets import SecretFileError, read_key_file

    try:
        return read_key_file(key_file, "inference key file")
    except SecretFileError as e:
        raise ServingError(str(e)) from None


def admin_key(explicit: str | None, key_file: Path | None = None) -> str:
    """--admin-key, else --admin-key-file (private: see cnn_deploy_core.secrets), else
    $TRITON_ADMIN_KEY, else a random one."""
    if explicit and key_file:
        raise ServingError("give --admin-key or --admin-key-file, not both")
    if key_file:
        from cnn_deploy_core.secrets import SecretFileError, read_key_file

        try:
            return read_key_file(key_file, "admin key file")
        except SecretFileError as e:
            raise ServingError(str(e)) from None
    return explicit or os.environ.get("TRITON_ADMIN_KEY") or secrets.token_urlsafe(18)


def pid_alive(pid: int, what: str = "tritonserver") -> bool:
    """Is `pid` a running `what` (tritonserver; "serving" for a supervisor)? A recorded pid may
    have been reused since (a reboot)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not a server we started
    try:
        return what in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True  # no /proc (not Linux): trust the signal check


def model_table(http_url: str, key: str) -> list[dict]:
    """Every model in the repository with its state and, when not ready, Triton's reason."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(
        http_url.removeprefix("http://"), connection_timeout=5, network_timeout=10
    )
    try:
        return client.get_model_repository_index(headers={ADMIN_HEADER: key})
    except InferenceServerException as e:
        raise ServingError(f"cannot list models at {http_url}: {e.message()}") from e
    except Exception as e:  # socket errors and timeouts of the HTTP client library
        raise ServingError(f"cannot list models at {http_url}: {e.__class__.__name__}: {e}") from e
    finally:
        client.close()


def reload_model(http_url: str, key: str, model: str, timeout: float = 600.0) -> None:
    """Ask a running server to reload one model from the repository (explicit model control).

    Triton keeps serving the loaded versions until the new configuration is ready, so a rollback
    or a new version takes effect without a failed request.
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(
        http_url.removeprefix("http://"), connection_timeout=10, network_timeout=timeout
    )
    try:
        client.load_model(model, headers={ADMIN_HEADER: key})
    except InferenceServerException as e:
        raise ServingError(f"the server at {http_url} could not reload {model}: {e.message()}") from e
    except Exception as e:
        raise ServingError(f"cannot reach {http_url} to reload {model}: {e.__class__.__name__}: {e}") from e
    finally:
        client.close()


def replica_options(opts: ServerOptions, replicas: int) -> list[ServerOptions]:
    """Replica k's options: every port shifted by 3k; each knows how many share the cores."""
    if replicas < 1:
        raise ServingError(f"--replicas must be >= 1, got {replicas}")
    return [
        replace(
            opts,
            http_port=opts.http_port + 3 * k,
            grpc_port=opts.grpc_port + 3 * k,
            metrics_port=opts.metrics_port + 3 * k,
            replicas=replicas,
        )
        for k in range(replicas)
    ]


def _log_name(k: int, opts: ServerOptions, detach: bool) -> str:
    if not detach:
        return f"triton-{opts.http_port}.log"
    return LOG_NAME if k == 0 else f"triton-{k + 1}.log"


def start(
    opts: ServerOptions,
    *,
    detach: bool,
    timeout: float = 600.0,
    state_dir: Path | None = None,
    replicas: int = 1,
    policy: RestartPolicy | None = None,
) -> tuple[list[TritonProcess], ServerState]:
    """Start `replicas` servers, wait until all are ready (or stop them all), record them.

    In the foreground the servers are our children (supervise them with `supervise`); detached,
    a supervisor process of their own starts them, and the list returned is empty.
    """
    state_dir = state_dir or paths.state_dir()
    existing = ServerState.load(state_file(state_dir))
    if existing and (
        any(pid_alive(r["pid"]) for r in existing.all()) or pid_alive(existing.supervisor_pid, "serving")
    ):
        raise ServingError(
            f"a server is already running (pid {existing.pid}, {existing.http_url}); "
            "stop it with `python -m serving down`"
        )
    every = replica_options(opts, replicas)
    for o in every:
        check_ports(o)
    logs = [state_dir / _log_name(k, o, detach) for k, o in enumerate(every)]
    if detach:
        return [], _start_detached(every, logs, policy or RestartPolicy(), timeout, state_dir)
    processes: list[TritonProcess] = []
    try:
        for o, log in zip(every, logs, strict=True):
            processes.append(TritonProcess(o, log_path=log).start())
        for process in processes:
            process.wait_ready(timeout)
    except BaseException:
        for process in processes:
            process.stop()
        raise
    records = [Replica(k, p.opts, p.log_path, p, state="ready").record() for k, p in enumerate(processes)]
    state = record_replicas(state_file(state_dir), partial_record(opts, os.getpid(), state_dir), records)
    return processes, state


def _start_detached(
    every: list[ServerOptions], logs: list[Path], policy: RestartPolicy, timeout: float, state_dir: Path
) -> ServerState:
    """Start the supervisor process and wait until it records every replica ready (or dies)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    spec = state_dir / SPEC_NAME
    fd = os.open(spec, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(spec_to_json(every, logs, policy, timeout))
    path = state_file(state_dir)
    path.unlink(missing_ok=True)
    log_path = state_dir / SUPERVISOR_LOG
    # The package's own folder first: `-m serving.supervisor` must import this very code.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")])),
    }
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "serving.supervisor", str(spec)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # Ctrl-C in this terminal must not reach it
        )  # fmt: skip
    deadline = time.monotonic() + timeout + 30
    while time.monotonic() < deadline:
        state = ServerState.load(path) if path.exists() else None
        if state is not None and state.supervisor_pid == child.pid:
            return state
        if child.poll() is not None:
            spec.unlink(missing_ok=True)
            raise ServingError(f"the servers did not start: {_last_line(log_path)} (log: {log_path})")
        time.sleep(0.25)
    child.terminate()  # it stops the servers it started
    raise ServingError(f"the servers were not ready after {timeout:.0f}s; see {log_path}")


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def supervise(
    processes: list[TritonProcess],
    state_dir: Path | None = None,
    policy: RestartPolicy | None = None,
    say=None,
) -> Supervisor:
    """A supervisor of the foreground servers `start` returned; it keeps the state file current.
    `run()` it; `stop_all()` when done (idempotent)."""
    path = state_file(state_dir)
    fixed = partial_record(processes[0].opts, os.getpid(), path.parent)
    replicas = [Replica(k, p.opts, p.log_path, p, state="ready") for k, p in enumerate(processes)]
    kwargs = {"say": say} if say else {}
    return Supervisor(
        replicas, policy=policy, on_change=lambda records: record_replicas(path, fixed, records), **kwargs
    )


def replica_ready(replica: dict) -> bool:
    return pid_alive(replica["pid"]) and is_ready(replica["http_url"])


def status(state_dir: Path | None = None) -> tuple[ServerState | None, bool]:
    """The recorded server(s), and whether every replica is ready."""
    state = ServerState.load(state_file(state_dir))
    if state is None:
        return None, False
    return state, all(replica_ready(r) for r in state.all())


def down(timeout: float = 30.0, state_dir: Path | None = None) -> str:
    """Stop every recorded replica: through its supervisor when one runs (so that it does not
    restart them), else SIGTERM each (Triton drains in-flight requests), SIGKILL after `timeout`."""
    path = state_file(state_dir)
    state = ServerState.load(path)
    pids = [r["pid"] for r in state.all()] if state else []
    pids = [pid for pid in pids if pid_alive(pid)]
    supervised = state and state.supervisor_pid != os.getpid() and pid_alive(state.supervisor_pid, "serving")
    if supervised:
        os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout + 10
        while pid_alive(state.supervisor_pid, "serving") and time.monotonic() < deadline:
            _reap(state.supervisor_pid)
            time.sleep(0.2)
    for pid in list(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pids.remove(pid)
    if not pids and not supervised:
        forget(path)
        return "no server running"
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        for pid in pids:
            _reap(pid)
        time.sleep(0.2)
    for pid in pids:
        if pid_alive(pid):
            kill_tree(pid)  # its backend stubs too: they outlive a SIGKILLed server
    for replica in state.all():  # what a killed (or crashed) server could not remove
        remove_shm_regions(urlsplit(replica["grpc_url"]).port)
    forget(path)
    stopped = [str(state.supervisor_pid)] if supervised else []
    return f"stopped server pid {', '.join(map(str, pids or [r['pid'] for r in state.all()]))}" + (
        f" (supervisor pid {stopped[0]})" if stopped else ""
    )


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # only succeeds if we are its parent; harmless otherwise
    except ChildProcessError:
        pass
