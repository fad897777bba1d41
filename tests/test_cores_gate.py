"""The gate of the "adapt" thread policy (cnn_deploy_core/cores.py): a run alone gets every core, a
run beside another shares them, and nothing waits while holding the gate. Each CoreGate opens its
own files, so two gates in one process lock against each other as two backend processes do."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from cnn_deploy_core.cores import CoreGate


def test_a_run_alone_is_wide_and_runs_beside_it_are_narrow(tmp_path):
    first, second, third = CoreGate(tmp_path), CoreGate(tmp_path), CoreGate(tmp_path)
    with first.run() as alone:
        assert alone  # nobody else computes: every core
    seen: list[bool] = []
    entered = threading.Event()
    release = threading.Event()

    def beside() -> None:
        with second.run() as alone:  # waits for the wide run to end, then shares
            seen.append(alone)
            entered.set()
            release.wait(10)

    with first.run() as alone:
        assert alone
        worker = threading.Thread(target=beside)
        worker.start()
        time.sleep(0.2)
        assert not entered.is_set()  # a narrow run does not start on cores a wide run holds
    assert entered.wait(10) and seen == [False]
    started = time.monotonic()
    with third.run() as alone:  # another run while the narrow one computes: narrow, no waiting
        assert not alone
    with first.run() as alone:
        assert not alone
    assert time.monotonic() - started < 1
    release.set()
    worker.join(10)
    with first.run() as alone:  # everyone gone: wide again
        assert alone
    for gate in (first, second, third):
        gate.close()


def test_a_killed_holder_leaves_the_gate_open(tmp_path):
    """A backend stub SIGKILLed mid-run: the kernel drops its locks, so the next run is wide."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "alone"
        gate = CoreGate(tmp_path)
        assert not gate._alone()  # it holds every core
        holder.kill()
        holder.wait(10)
        with gate.run() as alone:
            assert alone
        gate.close()
    finally:
        holder.kill()


HOLD = """
import sys, time
from cnn_deploy_core.cores import CoreGate
with CoreGate(sys.argv[1]).run() as alone:
    print("alone" if alone else "beside", flush=True)
    time.sleep(60)
"""
