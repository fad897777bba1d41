"""The nvidia-pytriton wheel: where it keeps the real `tritonserver`, its libraries and the Python
backend, and the backend directory we build from it (the wheel has no ONNX Runtime backend: ours,
serving/triton_side/onnxruntime/model.py, is a Python-based backend under that name)."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from serving import ServingError

BACKEND_SOURCE = Path(__file__).parent / "triton_side" / "onnxruntime" / "model.py"
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def python_refusal(version: tuple[int, int]) -> str | None:
    """Why the server cannot run on this Python, or None. The wheel's Triton Python backend reads
    numpy 1.x arrays only (under numpy 2 every tensor arrives garbled), and numpy 1.x has no build
    for Python 3.13, so the serving extra leaves the wheel out there (pyproject.toml)."""
    if version >= (3, 13):
        return (
            f"the server runs on Python 3.11 and 3.12, not {version[0]}.{version[1]}: its Triton "
            "Python backend needs numpy 1.x, which has no build for Python 3.13 or later"
        )
    return None


@dataclass(frozen=True)
class Wheel:
    """Where the nvidia-pytriton wheel keeps the server, its libraries and the Python backend."""

    root: Path

    @classmethod
    def find(cls) -> Wheel:
        refusal = python_refusal(sys.version_info[:2])
        if refusal:
            raise ServingError(refusal)
        try:
            import pytriton
        except ImportError:
            raise ServingError(
                "nvidia-pytriton is not installed; it provides tritonserver (pip install -e .)"
            ) from None
        root = Path(pytriton.__file__).parent / "tritonserver"
        wheel = cls(root)
        for path in (wheel.binary, wheel.python_backend / "libtriton_python.so", wheel.stub):
            if not path.exists():
                raise ServingError(f"the nvidia-pytriton wheel lacks {path}")
        return wheel

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / PYTHON_VERSION / "triton_python_backend_stub"


def prepare_backends(target: Path, wheel: Wheel | None = None) -> Path:
    """A Triton backend directory: the wheel's Python backend + our Python-based `onnxruntime`."""
    wheel = wheel or Wheel.find()
    python_dir, ort_dir = target / "python", target / "onnxruntime"
    python_dir.mkdir(parents=True, exist_ok=True)
    ort_dir.mkdir(parents=True, exist_ok=True)
    for src in (
        wheel.python_backend / "libtriton_python.so",
        wheel.python_backend / "triton_python_backend_utils.py",
        wheel.stub,
    ):
        dst = python_dir / src.name
        if (
            not dst.exists()
            or dst.stat().st_mtime < src.stat().st_mtime
            or dst.stat().st_size != src.stat().st_size
        ):
            shutil.copy2(src, dst)
    # Replaced atomically and only when it changed: replicas share this folder, and a replica's
    # backend may be importing model.py while the next one starts.
    dst = ort_dir / "model.py"
    if not dst.exists() or dst.read_bytes() != BACKEND_SOURCE.read_bytes():
        tmp = dst.with_name(f".model.py.{os.getpid()}")
        shutil.copy2(BACKEND_SOURCE, tmp)
        os.replace(tmp, dst)
    return target


def environment(wheel: Wheel) -> dict[str, str]:
    env = dict(os.environ)
    # The backend stub finds its libraries next to the wheel and the shared libpython it embeds
    # in this interpreter's LIBDIR (outside the loader's paths for pyenv and uv builds), and its
    # embedded interpreter takes its prefix (hence site-packages: onnxruntime, numpy) from the
    # first `python3` on PATH, so this environment's bin directory goes first, as pytriton does.
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [str(wheel.libs), libdir, env.get("LD_LIBRARY_PATH")])
    )
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")  # ORT sizes its own pools; no OpenMP oversubscription
    return env
