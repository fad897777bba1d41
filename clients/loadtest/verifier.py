"""Checking every answer, off the timing path.

The generator's event loop only hands each answer's bytes to a verifier; decoding and comparing
happen in a separate process, so a comparison never delays another request's timestamp (a thread
would: it holds the GIL, and Python switches threads every 5 ms). Every answer is still checked:
a step's counts are read after its last answer was handed over.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import subprocess
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from clients import LoadTestError
from clients.loadtest.transport import decode_output
from clients.loadtest.workload import Workload

MAX_EXAMPLES = 5


@dataclass
class Counts:
    verified: int = 0
    wrong: int = 0
    examples: list[dict] = field(default_factory=list)
    cpu_s: float = 0.0  # the verifier's CPU time so far (a process-wide figure)


class _Checker:
    """Decode and compare answers; shared by the in-process and the out-of-process verifier."""

    def __init__(self, workload: Workload, output_shape: tuple[int, ...]):
        self.workload, self.output_shape = workload, output_shape
        self.counts: dict[int, Counts] = defaultdict(Counts)

    def check(self, step: int, item: int, kind: str, data: bytes) -> None:
        counts = self.counts[step]
        ok, max_abs_err = self.workload.verify(item, decode_output(kind, data, self.output_shape))
        counts.verified += 1
        if not ok:
            counts.wrong += 1
            if len(counts.examples) < MAX_EXAMPLES:
                counts.examples.append(
                    {"request": item, "rows": self.workload.rows(item), "max_abs_err": _finite(max_abs_err)}
                )

    def take(self, step: int) -> Counts:
        counts = self.counts.pop(step, Counts())
        counts.cpu_s = time.process_time()
        return counts


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None  # JSON has no inf/nan


class InlineVerifier:
    """Checks each answer where it arrives (tests, and workloads with nothing to check)."""

    def __init__(self, workload: Workload, output_shape: tuple[int, ...]):
        self._checker = _Checker(workload, output_shape)
        self.enabled = workload.enabled

    def submit(self, step: int, item: int, kind: str, data: bytes) -> None:
        if self.enabled:
            self._checker.check(step, item, kind, data)

    def take(self, step: int) -> Counts:
        counts = self._checker.take(step)
        counts.cpu_s = 0.0  # shares the generator's process: already counted there
        return counts

    def close(self) -> None:
        pass


def serve(requests: Connection, replies: Connection) -> None:
    """The child's side: the workload first, then answers until told to stop."""
    workload, output_shape = requests.recv()
    checker = _Checker(workload, output_shape)
    replies.send(time.process_time())  # ready: the CPU its start took, left out of the counts
    while True:
        message = requests.recv()
        if message[0] == "answer":
            checker.check(*message[1:])
        elif message[0] == "take":
            replies.send(checker.take(message[1]))
        else:
            return


class ProcessVerifier:
    """Checks answers in a child process; `submit` costs the loop one non-blocking pipe write.

    When the child falls behind and the pipe is full, answers wait in memory and are written when
    the pipe drains (the event loop watches it): the loop itself never blocks on the verifier.

    The child is `python -m clients.loadtest.verifier_process`, over its stdin and stdout: no
    fork of a process that runs gRPC threads, and no re-import of the caller's `__main__` (which
    multiprocessing's spawn would do, breaking scripts without a main guard).
    """

    def __init__(self, workload: Workload, output_shape: tuple[int, ...]):
        self.enabled = workload.enabled
        self._process = subprocess.Popen(
            [sys.executable, "-m", "clients.loadtest.verifier_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [*sys.path]))},
        )
        self._send = Connection(os.dup(self._process.stdin.fileno()), readable=False)
        self._recv = Connection(os.dup(self._process.stdout.fileno()), writable=False)
        self._process.stdin.close()
        self._process.stdout.close()
        self._send.send((workload, output_shape))
        self._startup_cpu = self._recv.recv()
        self._fd = self._send.fileno()
        os.set_blocking(self._fd, False)
        self._pending: deque[memoryview] = deque()
        self._loop = None

    def submit(self, step: int, item: int, kind: str, data: bytes) -> None:
        if not self.enabled:
            return
        body = pickle.dumps(("answer", step, item, kind, data), protocol=pickle.HIGHEST_PROTOCOL)
        self._pending.append(memoryview(struct.pack("!i", len(body)) + body))  # Connection's framing
        if len(self._pending) == 1:
            self._flush()
            if self._pending:  # the pipe is full: the loop writes the rest when it drains
                self._loop = asyncio.get_running_loop()
                self._loop.add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        while self._pending:
            chunk = self._pending[0]
            try:
                written = os.write(self._fd, chunk)
            except BlockingIOError:
                return
            if written < len(chunk):
                self._pending[0] = chunk[written:]
                return
            self._pending.popleft()
        if self._loop is not None:
            self._loop.remove_writer(self._fd)
            self._loop = None

    def _drain(self) -> None:
        if self._loop is not None:
            self._loop.remove_writer(self._fd)
            self._loop = None
        os.set_blocking(self._fd, True)
        try:
            for chunk in self._pending:
                self._send._send(chunk)  # the blocking write of the Connection, whole chunks
            self._pending.clear()
        finally:
            os.set_blocking(self._fd, False)

    def take(self, step: int) -> Counts:
        """Every answer of `step` handed over so far, checked (waits for the backlog)."""
        try:
            self._drain()
            os.set_blocking(self._fd, True)
            try:
                self._send.send(("take", step))
            finally:
                os.set_blocking(self._fd, False)
            counts = self._recv.recv()
        except (OSError, EOFError) as e:  # the child died: its counts are lost, so is the run's proof
            code = self._process.poll()
            raise LoadTestError(
                f"the verifier process stopped (exit code {code}): answers of step {step} were not "
                f"all checked ({type(e).__name__})"
            ) from e
        counts.cpu_s -= self._startup_cpu
        return counts

    def close(self) -> None:
        try:
            self._drain()
            os.set_blocking(self._fd, True)
            self._send.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._send.close()
        self._recv.close()
