"""Checking every answer, off the timing path.

The generator's event loop only hands each answer's bytes to a verifier; decoding and comparing
happen in a separate process, so a comparison never delays another request's timestamp (a thread
would: it holds the GIL, and Python switches threads every 5 ms). Every answer is still checked:
a step's counts are read after its last answer was handed over.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import defaultdict
from dataclasses import dataclass, field

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


def _serve(conn, workload: Workload, output_shape: tuple[int, ...]) -> None:
    checker = _Checker(workload, output_shape)
    while True:
        message = conn.recv()
        if message[0] == "answer":
            checker.check(*message[1:])
        elif message[0] == "take":
            conn.send(checker.take(message[1]))
        else:
            return


class ProcessVerifier:
    """Checks answers in a child process; `submit` costs the loop one pipe write."""

    def __init__(self, workload: Workload, output_shape: tuple[int, ...]):
        self.enabled = workload.enabled
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs gRPC threads
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, workload, output_shape), name="loadtest-verifier", daemon=True
        )
        self._process.start()
        child.close()

    def submit(self, step: int, item: int, kind: str, data: bytes) -> None:
        if self.enabled:
            self._conn.send(("answer", step, item, kind, data))

    def take(self, step: int) -> Counts:
        """Every answer of `step` handed over so far, checked (waits for the backlog)."""
        self._conn.send(("take", step))
        return self._conn.recv()

    def close(self) -> None:
        try:
            self._conn.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()
