"""Who computes on a server's cores right now: a run alone takes them all, runs at once share them.

Each CPU model instance of a server is its own backend process with its own ONNX Runtime session
(serving/threads.py, policy "adapt"). Every instance holds a wide session of its model (every
core) and, once it has run beside others, a narrow twin (its share of the cores). Before each run
it asks this gate:
- nobody else computing: the gate is taken exclusively and the run is wide, so one busy model
  runs as fast as it would alone;
- another run in progress: the run is narrow and shares the gate with the other narrow runs, so
  two busy models compute side by side on their shares instead of fighting over every core (or
  waiting for each other's turn, where the cores idle through each other's request handling).
A narrow run waits only while a wide one finishes (then the next run of that model sees it
waiting and goes narrow too). No run ever waits while holding the gate, so nothing deadlocks.

Two files and flock(2), because the instances are separate processes that Triton starts one by
one and no Python library shares a reader-writer lock between unrelated processes; the kernel
drops a dead process's locks, so a killed instance cannot leave the gate shut.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

BUSY, WANT = "busy", "want"  # held while computing; held (shared) while waiting to compute


class CoreGate:
    def __init__(self, directory: Path | str):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._busy = os.open(directory / BUSY, os.O_RDWR | os.O_CREAT, 0o600)
        self._want = os.open(directory / WANT, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        for fd in (self._busy, self._want):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _alone(self) -> bool:
        """Take the cores exclusively, if nobody computes or waits to (never blocks)."""
        try:
            fcntl.flock(self._want, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a narrow run waits for the cores: it goes next, beside us
        try:
            fcntl.flock(self._busy, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            fcntl.flock(self._want, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def run(self) -> Iterator[bool]:
        """Hold the gate for one run: True if the run has every core to itself (wide)."""
        alone = self._alone()
        if not alone:
            fcntl.flock(self._want, fcntl.LOCK_SH)  # seen by a wide run about to start again
            try:
                fcntl.flock(self._busy, fcntl.LOCK_SH)  # waits only for a wide run to end
            finally:
                fcntl.flock(self._want, fcntl.LOCK_UN)
        try:
            yield alone
        finally:
            fcntl.flock(self._busy, fcntl.LOCK_UN)
