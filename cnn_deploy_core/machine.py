"""What the machine is, read from /proc: CPU instruction sets, process memory. Every benchmark prints
the instruction sets beside its figures (INT8 and GFLOP/s depend on them), and every memory figure
we report is the same measure (PSS)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cnn_deploy_core.secrets import redact_argv

# The instruction sets that change our figures (ORT's kernels, INT8 speed-ups).
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")


def cpu_flags() -> list[str]:
    """The instruction sets of FLAGS_OF_INTEREST that this CPU has (empty where /proc is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("flags")), "").split())
    return [f for f in FLAGS_OF_INTEREST if f in flags]


def cpu_model() -> str:
    """The CPU's model name (INT8 gains depend on the CPU family, not only on its flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    names = (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
    return next(names, "unknown")


def _proc_mb(pid: int, name: str, field: str) -> float | None:
    """A kB figure from /proc/<pid>/<name> (the line starting `field:`) in MB; None when gone."""
    try:
        text = (Path("/proc") / str(pid) / name).read_text()
    except OSError:
        return None
    return next((int(ln.split()[1]) for ln in text.splitlines() if ln.startswith(f"{field}:")), 0) / 1024


def rss_mb(pid: int) -> float | None:
    """A process's resident memory in MB, from /proc; None when it is gone."""
    return _proc_mb(pid, "status", "VmRSS")


def pss_mb(pid: int) -> float | None:
    """A process's proportional set size in MB (shared pages divided among the processes sharing
    them), from /proc; None when it is gone. Summed over a server and its backend processes, which
    share the Python backend's memory pool, it counts the pool once; their RSS counts it twice."""
    return _proc_mb(pid, "smaps_rollup", "Pss")


def processes_where(name: str, matches: Callable[[bytes], bool]) -> list[int]:
    """The pids whose /proc/<pid>/<name> (e.g. "status", "cmdline") `matches`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            content = (proc / name).read_bytes()
        except OSError:
            continue
        if matches(content):
            found.append(int(proc.name))
    return found


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Triton's backend stubs), from /proc."""
    return processes_where("status", lambda status: f"\nPPid:\t{pid}\n".encode() in status)


def tree_pss_mb(pid: int) -> float | None:
    """PSS of a process and its children in MB (a server and its backend stubs): the one memory
    measure of the drills, the report and the benchmarks. None when the process is gone."""
    own = pss_mb(pid)
    if own is None:
        return None
    return own + sum(pss_mb(c) or 0.0 for c in children(pid))  # a stub gone meanwhile: 0


# The packages whose versions move our figures; looked up in the installed metadata, never imported
# (the core must not import torch).
PROVENANCE_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "torch", "tritonclient", "nvidia-pytriton", "numpy")


def memory_gib() -> float | None:
    """The machine's memory in GiB, from /proc/meminfo; None where it is not readable."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    kib = next((int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("MemTotal:")), None)
    return None if kib is None else round(kib / 1024**2, 1)


def usable_cores() -> int:
    """The cores this process may run on (its affinity), which is what a benchmark gets."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def invoked_command() -> str:
    """The command line this process runs, as a user would type it (`python -m cnn_deploy ...`):
    every option included, so that the figure it measures can be measured again, but a secret's
    value (an option like --admin-key, a URL's password) redacted: reports are shared."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(["python", *redact_argv(argv[1:])])


def provenance(command: str | None = None) -> dict:
    """Where and how a figure was measured: every benchmark report carries this under "provenance",
    and docs/benchmarks.md refuses a report without it (a figure means nothing without its machine).
    `command`: the command line to record (default: this process's own, `invoked_command()`,
    with its secrets redacted)."""
    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "machine": {
            "cpu_model": cpu_model(),
            "instruction_sets": cpu_flags(),
            "cores": usable_cores(),
            "memory_gib": memory_gib(),
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command or invoked_command(),
        "python": platform.python_version(),
        "packages": versions,
    }
