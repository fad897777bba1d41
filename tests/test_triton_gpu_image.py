"""The GPU server image (the Dockerfile's `triton-gpu` target): NVIDIA's Triton image plus exactly
deploy/triton-gpu/requirements.txt, used by the compose GPU `triton` service and the k8s gpu
overlay. No GPU and no NVIDIA registry here: the preprocessing model is run in a bare venv on the
image's Python (3.10) that holds only what the image has for it (its numpy line and that list),
behind a stand-in triton_python_backend_utils."""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnn_deploy_core.images import all_photos
from cnn_deploy_core.preprocess import Preprocessing, preprocess_bytes
from cnn_deploy_core.registry import get
from serving.config import config_to_dict, parse_pbtxt
from serving.repository.variants import place_image_pipeline
from serving.repository.versions import Version

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
REQUIREMENTS = ROOT / "deploy" / "triton-gpu" / "requirements.txt"
# The numpy line NVIDIA's Triton 24.x images ship for the Python backend (numpy<2).
IMAGE_NUMPY = "numpy==1.26.4"
# The image's Python (tritonserver:24.10-py3 is Ubuntu 22.04, python3 3.10): the venv runs on it,
# so a pin without a wheel for it, or a line of the model's code it cannot read, fails here.
IMAGE_PYTHON = (3, 10)


def _image_python() -> str | None:
    """An interpreter of the image's Python version on this machine (pyenv's included), or None."""
    major, minor = IMAGE_PYTHON
    found = [
        shutil.which(f"python{major}.{minor}"),
        *glob.glob(f"{Path.home()}/.pyenv/versions/{major}.{minor}*/bin/python{major}.{minor}"),
    ]
    for candidate in filter(None, found):
        probe = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2])"],
                               capture_output=True, text=True)  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == str(IMAGE_PYTHON):
            return candidate
    return None


def _stages() -> list[tuple[str, str]]:
    """(FROM line, body) of every stage of the Dockerfile, in order."""
    parts = re.split(r"^(FROM .*)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def _pinned() -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in REQUIREMENTS.read_text().splitlines()]
    return [ln for ln in lines if ln]


def test_the_gpu_server_target_is_the_pinned_triton_image_plus_the_requirements_file():
    stages = _stages()
    head, body = stages[-1]  # last: building any other target never pulls NVIDIA's image
    assert head == "FROM ${TRITON_IMAGE} AS triton-gpu"
    assert "COPY deploy/triton-gpu/requirements.txt" in body and "pip3 install" in body and " -r " in body
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    default = re.search(r"^ARG TRITON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE).group(1)
    assert default == compose["engines"]["image"] == compose["triton"]["build"]["args"]["TRITON_IMAGE"]
    assert "!deploy/triton-gpu/requirements.txt" in (ROOT / ".dockerignore").read_text().splitlines()
    # every line pinned: the image is rebuilt the same way
    assert _pinned() and all(re.fullmatch(r"[a-z0-9_.-]+==[0-9][0-9a-z.]*", ln) for ln in _pinned())


def test_compose_and_the_gpu_overlay_run_that_image():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    assert compose["build"]["target"] == "triton-gpu"
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/overlays/gpu/kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert f"{image['newName']}:{image['newTag']}" == compose["image"]


def _place_preprocessing(repository: Path) -> Path:
    """The preprocessing model as `serving repo` places it (model.py and its vendored core)."""
    arch = get("resnet18")
    (repository / arch.name).mkdir(parents=True)
    (repository / arch.name / "labels.txt").write_text("a\nb\n")
    default = Version(1, repository / arch.name / "1", {"preprocessing": Preprocessing().to_dict()}, ())
    place_image_pipeline(arch, default, repository)
    (model,) = [p for p in repository.iterdir() if p.name.startswith("preprocess_")]
    return model


CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys, types
    from pathlib import Path
    import numpy as np

    model_dir, config, image, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    pb = types.ModuleType("triton_python_backend_utils")  # what the Python backend's stub provides

    class TritonError(Exception):
        INVALID_ARG = 3
        def __init__(self, message, code=None):
            super().__init__(message)
            self.code = code

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array
        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.outputs, self.error = list(output_tensors), error

    pb.TritonError, pb.Tensor, pb.InferenceResponse = TritonError, Tensor, InferenceResponse
    pb.get_input_tensor_by_name = lambda request, name: request[name]
    sys.modules["triton_python_backend_utils"] = pb
    spec = importlib.util.spec_from_file_location("model", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": config})
    good = Path(image).read_bytes()
    requests = [{"image": Tensor("image", np.array([good], dtype=object))},
                {"image": Tensor("image", np.array([b"not an image"], dtype=object))}]
    ok, bad = model.execute(requests)
    np.save(out, ok.outputs[0].array)
    print(json.dumps({"error": str(bad.error), "code": bad.error.code,
                      "modules": sorted(m for m in ("PIL", "numpy", "torch", "onnxruntime", "cnn_deploy")
                                        if m in sys.modules)}))
    """
)


def test_the_preprocessing_model_answers_with_only_what_the_gpu_image_installs(tmp_path):
    image_python = _image_python()
    if image_python is None:
        pytest.skip(f"no Python {'.'.join(map(str, IMAGE_PYTHON))} here, the Triton image's")
    venv = tmp_path / "venv"
    subprocess.run([image_python, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary=:all:"]
    install = subprocess.run([*pip, IMAGE_NUMPY, "-r", str(REQUIREMENTS)], capture_output=True, text=True)
    assert install.returncode == 0, f"pip install failed (needs PyPI):\n{install.stderr[-2000:]}"
    frozen = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    assert sorted(frozen.stdout.lower().split()) == sorted([IMAGE_NUMPY, *_pinned()])

    model_dir = _place_preprocessing(tmp_path / "repo")
    config = json.dumps(config_to_dict(parse_pbtxt((model_dir / "configs" / "gpu.pbtxt").read_text())))
    photo = next(p for p in all_photos() if p.suffix == ".png")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "out.npy"
    # -I: no project path, no user site: only the venv's packages and the model's own directory
    run = subprocess.run(
        [str(python), "-I", str(script), str(model_dir), config, str(photo), str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout)
    assert answer["modules"] == ["PIL", "numpy"]
    assert answer["code"] == 3 and answer["error"]  # the bad image fails its own request only
    expected = preprocess_bytes(photo.read_bytes(), Preprocessing())[None]
    assert np.array_equal(np.load(out), expected)
