"""Which NVIDIA GPUs this machine has, as its driver lists them: what a server with KIND_GPU
instances needs, whatever Python packages are installed. `serving tune --device gpu` and `make
gpu-check` ask here before they start anything."""

from __future__ import annotations

import shutil
import subprocess

QUERY = ("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")


def listed(returncode: int, stdout: str) -> list[str]:
    """The GPUs in nvidia-smi's CSV answer, one line each; none when it failed."""
    return [line.strip() for line in stdout.splitlines() if line.strip()] if returncode == 0 else []


def nvidia_gpus() -> tuple[list[str], str]:
    """(the GPUs nvidia-smi lists as "name, driver, memory", why there are none when it lists none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "no NVIDIA driver: nvidia-smi not found"
    try:
        query = subprocess.run([smi, *QUERY], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return [], "nvidia-smi did not answer within 30 s"
    except OSError as e:  # found but not runnable (permissions, a broken driver install)
        return [], f"nvidia-smi could not run: {e}"
    gpus = listed(query.returncode, query.stdout)
    return gpus, "" if gpus else f"nvidia-smi: {query.stderr.strip() or 'no GPU listed'}"
