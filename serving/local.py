"""`serving up | status | down`: the local CPU server, in the foreground or detached.

With `--replicas N`, N servers of the same repository on consecutive blocks of ports (replica k
adds 3k to each port: 8000-8002, 8003-8005, ...), for failure drills and for a client that
spreads its load over them (`--url` repeated). One state file records them all; `status`,
`down` and `rollback` act on every replica. A supervisor (serving/supervisor.py) restarts a
replica that dies while the others serve on: the foreground `serving up` itself, or with
`--detach` a small process of its own, recorded in the state file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from cnn_deploy_core import paths
from cnn_deploy_core.secrets import new_key, write_private
from serving import ServingError
from serving.record import (  # noqa: F401  (re-exported: the record's names, for callers)
    ADMIN_KEY_NAME,
    LOG_NAME,
    SPEC_NAME,
    SUPERVISOR_LOG,
    ServerState,
    forget,
    partial_record,
    record_replicas,
    state_file,
)
from serving.supervisor import Replica, RestartPolicy, Supervisor, spec_to_json
from serving.triton import (
    ADMIN_HEADER,
    ServerOptions,
    check_ports,
    is_live,
    kill_tree,
    remove_shm_regions,
    serving_every_model,
)


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
    return explicit or os.environ.get("TRITON_ADMIN_KEY") or new_key()


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
    verify: bool = True,
    say=None,
) -> tuple[Supervisor | None, ServerState]:
    """The one lifecycle of `serving up`: start `replicas` servers, settle each (ready only when every
    model is READY and answered its golden set; a failed model is named, not fatal), record them.

    In the foreground the returned supervisor's servers are our children (`run()` it); detached,
    the same supervisor runs in a process of its own, and None is returned.
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
    policy = policy or RestartPolicy()
    if detach:
        return None, _start_detached(every, logs, policy, timeout, state_dir, verify)
    path = state_file(state_dir)
    fixed = partial_record(opts, os.getpid(), state_dir)
    supervisor = Supervisor(
        [Replica(k, o, log) for k, (o, log) in enumerate(zip(every, logs, strict=True))],
        policy=policy,
        on_change=lambda records: record_replicas(path, fixed, records),
        verify=verify,
        **({"say": say} if say else {}),
    )
    supervisor.start_all(timeout)
    return supervisor, record_replicas(path, fixed, supervisor.records())


def _start_detached(
    every: list[ServerOptions], logs: list[Path], policy: RestartPolicy, timeout: float, state_dir: Path,
    verify: bool,
) -> ServerState:  # fmt: skip
    """Start the supervisor process and wait until it records every replica settled (or dies)."""
    spec = write_private(state_dir / SPEC_NAME, spec_to_json(every, logs, policy, timeout, verify))
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
    deadline = time.monotonic() + timeout + 30 + (600 if verify else 0)
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


def replica_ready(replica: dict, state: ServerState) -> bool:
    """Recorded ready by its supervisor (every model READY and verified), alive and answering so."""
    recorded = replica.get("state", "ready") == "ready" and pid_alive(replica["pid"])
    return recorded and serving_every_model(replica["http_url"], state.admin_key, Path(state.repository))


def replica_serving(replica: dict) -> bool:
    """Started and answering, ready or not (a model that failed to load leaves it unready)."""
    settled = replica.get("state", "ready") in ("ready", "unready")
    return settled and pid_alive(replica["pid"]) and is_live(replica["http_url"])


def status(state_dir: Path | None = None) -> tuple[ServerState | None, bool]:
    """The recorded server(s), and whether every replica is ready."""
    state = ServerState.load(state_file(state_dir))
    if state is None:
        return None, False
    return state, all(replica_ready(r, state) for r in state.all())


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
