"""What the drills measure with: replicas of one repository (killed and restarted at will), a load
test that runs its whole time with something bad done beside it, the server tree's memory sampled
as PSS, and the time each failed request took to fail. Nothing here judges (see judges.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from cnn_deploy.harness import READY_TIMEOUT_S
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.console import stderr
from cnn_deploy_core.machine import tree_pss_mb

LOAD_TIMEOUT_S = 10.0  # the clients' per-request timeout during the drills
HANG_MARGIN_S = 60.0  # a load test past its time + timeout + this hangs


@dataclass(frozen=True)
class QueuePolicy:
    """Triton's per-model queue policy, so an overloaded server sheds load instead of queueing it
    without bound: a request beyond `max_queue_size` is refused at once, and one that waited in the
    queue longer than `timeout_s` is rejected (never run late)."""

    max_queue_size: int
    timeout_s: float


def with_queue_policy(repository: Path, model: str, policy: QueuePolicy, config_name: str = "cpu") -> None:
    """Add `policy` to the dynamic batcher of `model` in a scratch repository, through Triton's
    protobuf (the config stays data, validated by parsing back)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from serving.config import parse_pbtxt

    path = repository / model / "configs" / f"{config_name}.pbtxt"
    config = parse_pbtxt(path.read_text())
    queue = config.dynamic_batching.default_queue_policy
    queue.max_queue_size = policy.max_queue_size
    queue.default_timeout_microseconds = int(policy.timeout_s * 1e6)
    queue.timeout_action = model_config_pb2.ModelQueuePolicy.REJECT
    queue.allow_timeout_override = False
    text = text_format.MessageToString(config)
    parse_pbtxt(text)
    path.write_text(text)


def memory_mb(pid: int) -> float | None:
    """A tritonserver and its backend processes (Triton's Python stubs are its children), their PSS
    summed: the pool they both map counts once (summed RSS counted it twice). None when it could not
    be read (the server gone meanwhile): no sample, never a 0 that a judge would take for one."""
    return tree_pss_mb(pid) or None


class Replicas:
    """N tritonservers of one repository on consecutive port blocks; killed, restarted at will."""

    def __init__(self, repository: Path, scratch: Path, count: int, cpus: tuple[int, ...] = ()):
        from serving.local import replica_options
        from serving.triton import ServerOptions, free_port_block

        base = free_port_block(3 * count)
        opts = ServerOptions(
            repository=repository,
            http_port=base,
            grpc_port=base + 1,
            metrics_port=base + 2,
            backend_dir=scratch / "backends",
            cpus=cpus,
        )  # admin APIs behind a random key (ServerOptions), all replicas the same
        self.options = replica_options(opts, count)
        self.scratch = scratch
        self.processes: list = []

    def __enter__(self) -> Replicas:
        from serving.triton import serve_all

        # serving's one way to start servers: they load side by side, and all stop if one fails.
        logs = [self._log(k) for k in range(len(self.options))]
        self.processes = serve_all(self.options, logs, READY_TIMEOUT_S)
        return self

    def _log(self, k: int) -> Path:
        return self.scratch / f"triton-{k + 1}.log"

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for p in self.processes:
            p.stop()

    @property
    def grpc_urls(self) -> list[str]:
        return [o.grpc_url for o in self.options]

    def pid(self, k: int = 0) -> int:
        return self.processes[k].process.pid

    def kill(self, k: int) -> None:
        """SIGKILL replica k with its backend processes: what a node or container failure does."""
        self.processes[k].kill()

    def restart(self, k: int) -> float:
        """Start replica k again (after a kill); seconds until it is ready."""
        from serving.triton import serve

        started = time.perf_counter()
        self.processes[k].stop()
        self.processes[k] = serve(self.options[k], self._log(k), READY_TIMEOUT_S)
        return time.perf_counter() - started

    def alive(self, k: int = 0) -> bool:
        from serving.triton import is_ready

        return self.processes[k].process.poll() is None and is_ready(self.options[k].http_url)


class SupervisedReplicas:
    """`python -m serving up --replicas N` in the foreground, as a user runs it: its supervisor
    restarts a replica that dies. Pinned with taskset (the servers inherit it). Read through its
    state file; stopped with Ctrl-C (SIGINT), as a user stops it."""

    def __init__(self, repository: Path, scratch: Path, count: int, cpus: tuple[int, ...] = ()):
        from serving.triton import free_port_block

        self.repository, self.scratch, self.count, self.cpus = repository, scratch, count, cpus
        self.state_dir = scratch / "state"
        self.base = free_port_block(3 * count)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SupervisedReplicas:
        pin = ["taskset", "--cpu-list", ",".join(map(str, self.cpus))] if self.cpus else []
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._out = open(self.scratch / "serving-up.log", "ab")  # closed in stop()
        self.process = subprocess.Popen(
            [*pin, sys.executable, "-m", "serving", "up", "--repository", str(self.repository),
             "--state-dir", str(self.state_dir), "--replicas", str(self.count),
             "--http-port", str(self.base), "--grpc-port", str(self.base + 1),
             "--metrics-port", str(self.base + 2)],
            stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (self.state_dir / "server.json").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self._out.name
                raise CnnDeployError(f"`serving up --replicas {self.count}` did not start; see {log}")
            time.sleep(0.25)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C: every replica stops
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()

    def records(self) -> list[dict]:
        from serving.local import ServerState, state_file

        state = ServerState.load(state_file(self.state_dir))
        return state.all() if state else []

    @property
    def grpc_urls(self) -> list[str]:
        return [r["grpc_url"] for r in self.records()]

    def pid(self, k: int = 0) -> int:
        return self.records()[k]["pid"]

    def kill(self, k: int) -> None:
        """SIGKILL replica k's tritonserver, as the OOM killer would: its supervisor cleans up."""
        os.kill(self.pid(k), signal.SIGKILL)

    def ready_again(self, k: int, old_pid: int) -> bool:
        """Is replica k ready under a new pid (restarted by the supervisor)?"""
        records = self.records()
        return len(records) > k and records[k]["pid"] != old_pid and records[k].get("state") == "ready"

    def alive(self, k: int = 0) -> bool:
        from serving.triton import is_ready

        records = self.records()
        return len(records) > k and is_ready(records[k]["http_url"])


def start_supervised(repository: Path, scratch: Path, count: int, cpus: tuple[int, ...] = ()):
    """Replicas under `serving up`'s own supervisor (the kill drills judge its restart)."""
    return SupervisedReplicas(repository, scratch, count, cpus)


def start_replicas(repository: Path, scratch: Path, count: int, cpus: tuple[int, ...] = ()) -> Replicas:
    """The drills' one way to get servers (a context manager). The seam for a supervisor: what
    replaces it must offer grpc_urls, pid, kill, restart and alive."""
    return Replicas(repository, scratch, count, cpus)


def load(urls: list[str], model: str, repository: Path, window_s: float, **overrides):
    """A load test that runs for its whole max_step_s (it never waits for stability to stop), every
    answer verified."""
    from clients.loadtest import LoadTestConfig

    settings = dict(
        url=",".join(urls),
        model=model,
        repository=repository,
        warmup_s=0.0,
        window_s=window_s,
        max_windows=10_000,
        min_samples=10**9,
        timeout=LOAD_TIMEOUT_S,
        verify_fraction=1.0,
    )
    settings.update(overrides)
    return LoadTestConfig(**settings)


class RequestClock:
    """How long requests took from their send: each failure by error kind, and the slowest answer
    over the whole run (the load test's report keeps no latency for a failure, and its answer
    percentiles cover only its last windows)."""

    def __init__(self) -> None:
        self.failures: dict[str, list[float]] = defaultdict(list)
        self.slowest_answer_s: float | None = None

    def attach(self, transport) -> None:
        from clients import ClientError

        send = transport.send

        async def timed(item: int, slot: int):
            started = time.perf_counter()
            try:
                result = await send(item, slot)
            except ClientError as e:
                self.failures[type(e).__name__].append(time.perf_counter() - started)
                raise
            took = time.perf_counter() - started
            self.slowest_answer_s = max(took, self.slowest_answer_s or 0.0)
            return result

        transport.send = timed  # the runner looks the method up on the instance for every request

    def slowest_failure_s(self, kind: str) -> float | None:
        return max(self.failures[kind], default=None)


class FirstFailure:
    """How many requests were in flight on one replica when the client first saw it fail (that one
    included): what a kill can cost without failover, the client's passive health check working."""

    def __init__(self) -> None:
        self.in_flight: int | None = None

    def attach(self, replicas, k: int) -> None:
        from clients import ClientError

        inner, figures = replicas.transports[k], replicas.figures[k]
        send = inner.send

        async def watched(item: int, slot: int):
            try:
                return await send(item, slot)
            except ClientError:
                if self.in_flight is None:
                    self.in_flight = figures.in_flight  # counted down only after this returns
                raise

        inner.send = watched


def _ticker(every_s: float = 15.0):
    """Progress for the long drills: a line every `every_s` with the current window's figures."""
    started = last = time.perf_counter()

    def tick(p) -> None:
        nonlocal last
        now = time.perf_counter()
        if p.phase == "measure" and now - last >= every_s:
            last = now
            p99 = f", p99 {p.p99_ms:.0f} ms" if p.p99_ms is not None else ""
            line = f"    {now - started:4.0f} s: {p.inferences_per_s:.1f} infer/s{p99}"
            stderr.print(line, highlight=False)

    return tick


async def run_load(config, *, during=None, clock: RequestClock | None = None):
    """Run the load test; `during(transport)` runs beside it from its first request. Bounded: a hang
    raises (a broken promise, not a stuck drill)."""
    from clients.loadtest import run_loadtest_async

    opened: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_open(transport) -> None:
        if clock is not None:
            clock.attach(transport)
        if not opened.done():
            opened.set_result(transport)

    task = asyncio.create_task(run_loadtest_async(config, on_open=on_open, progress=_ticker()))
    extra = None
    if during is not None:
        await asyncio.wait({opened, task}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if not opened.done():  # the load test failed (or never got going) before its first request
            opened.cancel()
            await asyncio.wait_for(task, config.timeout + HANG_MARGIN_S)  # raises its own error
            raise CnnDeployError("the load test ended before it sent a request: nothing was drilled")
        extra = await during(opened.result())
    bound = config.max_step_s + config.timeout + HANG_MARGIN_S
    try:
        report = await asyncio.wait_for(task, bound)
    except TimeoutError:
        raise CnnDeployError(f"the load test did not end within {bound:.0f} s: it hangs") from None
    return report, extra


def run_load_sampling_memory(config, pid: int, every_s: float, clock: RequestClock | None = None) -> tuple:
    """The load test with the server tree's memory (MB) sampled beside it every `every_s` from the
    first request: (report, [(seconds since then, MB), ...])."""
    samples: list[tuple[float, float]] = []

    async def watch(transport):
        t0 = time.perf_counter()

        async def sample():
            while True:
                if (mb := memory_mb(pid)) is not None:
                    samples.append((time.perf_counter() - t0, mb))
                await asyncio.sleep(every_s)

        return asyncio.create_task(sample())

    async def run():
        report, sampler = await run_load(config, during=watch, clock=clock)
        sampler.cancel()
        return report

    return asyncio.run(run()), samples


def capacity(urls: list[str], model: str, repository: Path, window_s: float) -> float:
    """Answers per second at c=4, through the harness: every answer verified, none failed."""
    from cnn_deploy.harness import the_step, verified_step

    config = load(urls, model, repository, window_s, levels=(4,), min_samples=200, max_step_s=20, warmup_s=2)
    return the_step(verified_step(config, "capacity (the drills cannot start)")).requests_per_s


def split_cpus() -> tuple[tuple[int, ...], set[int]]:
    """The servers' CPUs and the load generator's: the last CPU this process may use goes to the
    generator (and its verifier), the others to the servers, as if the client ran on another
    machine. Sharing the cores, a backlog slows the server down (the generator, gRPC and the
    backend copy bigger batches, all on the server's cores), so at 80% of capacity one slow
    minute of a shared machine turns into a backlog that never clears (the soak drill runs at 80%).
    With a single CPU there is nothing to split: ((), set())."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return (), set()
    return tuple(cpus[:-1]), {cpus[-1]}
