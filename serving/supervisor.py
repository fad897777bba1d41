"""Keep local replicas alive, as a container runtime's restart policy or systemd's `Restart=` does.

A replica that dies (crash, OOM kill, SIGKILL) is logged with its exit status, its leftovers are
cleaned (the Python backend stubs it leaves orphaned, its shared-memory regions), and it is
started again after a backoff while the others keep serving. One that keeps dying (5 times in a
minute by default) is left down and reported, never restarted in a hot loop. Ctrl-C / SIGTERM
(and `serving down`) stop every replica.

In the foreground `serving up` runs the supervisor itself; with `--detach` it runs in a small
process of its own (`python -m serving.supervisor SPEC`), recorded in the state file, whose
children the servers are — only a parent learns a child's exit status.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnn_deploy_core.machine import processes_where
from serving import ServingError
from serving.triton import ServerOptions, TritonProcess, is_ready, remove_shm_regions, shm_prefix

POLL_S = 0.5


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a replica that died, and when to give up on it."""

    max_crashes: int = 5  # this many deaths within `window_s` and the replica is left down
    window_s: float = 60.0
    first_backoff_s: float = 1.0  # doubled for each recent death, up to max_backoff_s
    max_backoff_s: float = 30.0
    ready_timeout_s: float = 600.0  # a restart not ready by then counts as a death

    def backoff(self, recent_crashes: int) -> float:
        """Seconds to wait before the next start, given the deaths within the window (>= 1)."""
        return min(self.first_backoff_s * 2 ** max(recent_crashes - 1, 0), self.max_backoff_s)

    def gives_up(self, crash_times: list[float], now: float) -> bool:
        """True when the replica died `max_crashes` times within the last `window_s` seconds."""
        return sum(1 for t in crash_times if now - t <= self.window_s) >= self.max_crashes


def describe_exit(returncode: int | None) -> str:
    """A process's end in words: 'killed by SIGKILL', 'exit code 1'."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def orphan_stubs(grpc_port: int) -> list[int]:
    """The Python backend stubs a dead server on `grpc_port` left behind: they ignore SIGTERM and
    poll their parent's shared memory for good (see TritonProcess.kill). Found by the per-server
    shared-memory prefix on their command line, since they are no longer the server's children."""
    prefix = shm_prefix(grpc_port).encode()
    return processes_where("cmdline", lambda cmd: b"triton_python_backend_stub" in cmd and prefix in cmd)


@dataclass
class Replica:
    """One supervised server: its process and its history."""

    index: int
    opts: ServerOptions
    log_path: Path
    process: TritonProcess | None = None
    state: str = "starting"  # starting | ready | restarting | down
    restarts: int = 0
    last_exit: str | None = None
    crash_times: list[float] = field(default_factory=list)
    due: float = 0.0  # restarting: when to start again; starting: when to give up waiting

    @property
    def name(self) -> str:
        return f"replica {self.index + 1} ({self.opts.http_url})"

    def record(self) -> dict:
        """What the state file says of it (read by status, down, rollback, the tests)."""
        pid = self.process.process.pid if self.process and self.process.process else 0
        return {
            "pid": pid,
            "http_url": self.opts.http_url,
            "grpc_url": self.opts.grpc_url,
            "metrics_url": self.opts.metrics_url,
            "log": str(self.log_path),
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


class Supervisor:
    """Watches started replicas; restarts the ones that die; stops them all when told to."""

    def __init__(
        self,
        replicas: list[Replica],
        *,
        policy: RestartPolicy | None = None,
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
        on_change: Callable[[list[dict]], None] = lambda records: None,
    ):
        self.replicas = replicas
        self.policy = policy or RestartPolicy()
        self.say = say
        self.on_change = on_change

    def records(self) -> list[dict]:
        return [r.record() for r in self.replicas]

    def run(self) -> int:
        """Supervise until Ctrl-C / SIGTERM (exit 0 after stopping every replica) or until every
        replica is down for good (exit 1)."""

        def terminate(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            while any(r.state != "down" for r in self.replicas):
                if self.step(time.monotonic()):
                    self.on_change(self.records())
                time.sleep(POLL_S)
            self.say("every replica is down for good: stopping")
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop_all()

    def step(self, now: float) -> bool:
        """One look at every replica; True when something changed."""
        changed = False
        for r in self.replicas:
            if r.state in ("ready", "starting") and r.process and r.process.process.poll() is not None:
                self._died(r, describe_exit(r.process.process.returncode), now)
                changed = True
            elif r.state == "starting" and is_ready(r.opts.http_url):
                r.state = "ready"
                if r.restarts:
                    self.say(f"{r.name} ready again (restart {r.restarts})")
                changed = True
            elif r.state == "starting" and now >= r.due:
                r.process.kill()
                self._died(r, f"not ready after {self.policy.ready_timeout_s:.0f} s", now)
                changed = True
            elif r.state == "restarting" and now >= r.due:
                self._start(r, now)
                changed = True
        return changed

    def _died(self, r: Replica, how: str, now: float) -> None:
        r.last_exit = how
        r.crash_times = [t for t in r.crash_times if now - t <= self.policy.window_s] + [now]
        pid = r.process.process.pid if r.process and r.process.process else "?"
        self._clean(r)
        if self.policy.gives_up(r.crash_times, now):
            r.state = "down"
            self.say(
                f"{r.name} (pid {pid}) died: {how}; {len(r.crash_times)} deaths within "
                f"{self.policy.window_s:.0f} s: left down (see {r.log_path})"
            )
            return
        wait = self.policy.backoff(len(r.crash_times))
        r.state, r.due = "restarting", now + wait
        self.say(f"{r.name} (pid {pid}) died: {how}; restarting in {wait:.0f} s (log: {r.log_path})")

    def _clean(self, r: Replica) -> None:
        """What a dead server leaves: its orphaned backend stubs and shared-memory regions."""
        for stub in orphan_stubs(r.opts.grpc_port):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(stub, signal.SIGKILL)
        if r.process:
            r.process.stop()  # closes its log; removes its regions (the process has ended)
        remove_shm_regions(r.opts.grpc_port)

    def _start(self, r: Replica, now: float) -> None:
        r.restarts += 1
        try:
            r.process = TritonProcess(r.opts, log_path=r.log_path).start()
        except ServingError as e:
            r.process = None
            self._died(r, f"could not start: {e}", now)
            return
        r.state, r.due = "starting", now + self.policy.ready_timeout_s

    def stop_all(self) -> None:
        for r in self.replicas:
            if r.process:
                r.process.stop()
            with contextlib.suppress(OSError):
                for stub in orphan_stubs(r.opts.grpc_port):
                    os.kill(stub, signal.SIGKILL)


# --- the detached supervisor: `python -m serving.supervisor SPEC` ---------------------------------


PATH_OPTIONS = ("tls_cert", "tls_key", "tls_client_ca")  # ServerOptions' optional paths (gRPC TLS)


def spec_to_json(every: list[ServerOptions], logs: list[Path], policy: RestartPolicy, timeout: float) -> str:
    def plain(o: ServerOptions) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()}  # every path

    return json.dumps(
        {
            "replicas": [plain(o) for o in every],
            "logs": [str(p) for p in logs],
            "policy": asdict(policy),
            "timeout": timeout,
        }
    )


def spec_from_json(text: str) -> tuple[list[ServerOptions], list[Path], RestartPolicy, float]:
    spec = json.loads(text)
    every = []
    for d in spec["replicas"]:
        d = {**d, "repository": Path(d["repository"])}
        for key in ("backend_dir", *PATH_OPTIONS):
            d[key] = Path(d[key]) if d.get(key) else None
        for key in ("extra_args", "cpus"):
            d[key] = tuple(d[key])
        d["env"] = tuple(tuple(pair) for pair in d["env"])
        every.append(ServerOptions(**d))
    return every, [Path(p) for p in spec["logs"]], RestartPolicy(**spec["policy"]), float(spec["timeout"])


def main(argv: list[str]) -> int:
    """The detached supervisor: start the replicas (its children), record them, supervise."""
    from serving.local import forget, record_replicas, state_path_of_spec

    spec_path = Path(argv[0])
    try:
        every, logs, policy, timeout = spec_from_json(spec_path.read_text())
    finally:
        spec_path.unlink(missing_ok=True)  # it holds the admin key
    replicas = [Replica(k, o, logs[k]) for k, o in enumerate(every)]
    say = lambda line: print(time.strftime("%H:%M:%S ") + line, flush=True)  # noqa: E731
    state_path = state_path_of_spec(spec_path)
    try:
        for r in replicas:
            r.process = TritonProcess(r.opts, log_path=r.log_path).start()
        for r in replicas:
            r.process.wait_ready(timeout)
            r.state = "ready"
    except BaseException as e:
        for r in replicas:
            if r.process:
                r.process.stop()
        say(f"error: {e}")
        return 1
    record = partial_record(every[0], os.getpid(), state_path.parent)
    record_replicas(state_path, record, [r.record() for r in replicas])
    supervisor = Supervisor(
        replicas,
        policy=policy,
        say=say,
        on_change=lambda records: record_replicas(state_path, record, records),
    )
    say(f"supervising {len(replicas)} replica(s)")
    try:
        return supervisor.run()
    finally:
        forget(state_path)


def partial_record(first: ServerOptions, supervisor_pid: int, state_dir: Path) -> dict:
    """The state-file fields that do not change while supervising (the admin key goes to its own
    private file in `state_dir`, named here)."""
    from serving.local import keep_admin_key

    return {
        "repository": str(first.repository),
        "config_name": first.config_name,
        "admin_key_file": keep_admin_key(state_dir, first.admin_key),
        "supervisor_pid": supervisor_pid,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
