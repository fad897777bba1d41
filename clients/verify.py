"""`verify`: send each model's golden set to a live server and compare within its tolerance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clients import ClientError
from clients.sync import TritonClient
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.golden import TOLERANCE_PARAM, GoldenSet
from cnn_deploy_core.layout import GOLDEN_FILE, IMAGE_SUFFIX, INT8_SUFFIX, TRT_SUFFIX
from cnn_deploy_core.metrics import Comparison, compare, sensitivity
from cnn_deploy_core.registry import names


@dataclass
class VerifyResult:
    model: str
    version: str
    precision: str
    samples: int
    comparison: Comparison | None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.comparison is not None and self.comparison.passed

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "version": self.version,
            "precision": self.precision,
            "samples": self.samples,
            "passed": self.passed,
            "error": self.error,
            "comparison": self.comparison.to_dict() if self.comparison else None,
        }


def golden_path(repository: Path, model: str, version: str) -> Path:
    return repository / model / version / GOLDEN_FILE


def served_models(client: TritonClient) -> list[str]:
    """The registry's architectures and their variants (TensorRT plans, INT8, image ensembles) that
    the server has ready."""
    suffixes = ("", TRT_SUFFIX, INT8_SUFFIX, IMAGE_SUFFIX)
    candidates = [name + suffix for name in names() for suffix in suffixes]
    return client.ready_models(candidates)


def _load_golden(repository: Path, exported: str, version: str) -> GoldenSet:
    golden = GoldenSet.load(golden_path(repository, exported, version))
    guard = sensitivity(golden.outputs)
    if not guard.passed:  # a reference that ignores its input would pass a wrong server too
        raise ClientError(f"the golden set cannot detect errors: {guard.describe()}")
    return golden


def verify_version(client: TritonClient, model: str, version: str, repository: Path) -> VerifyResult:
    """One served version against its own golden set (every version describes itself).

    An image ensemble (`<name>_image`) gets the golden set's encoded photos, and must answer as
    the tensor model's default version does for the same photos preprocessed by the client.
    """
    precision = "?"
    try:
        tolerance = None  # the precision's own, unless the config names another (TOLERANCE_PARAM)
        if model.endswith(IMAGE_SUFFIX):
            tensor = client.model_info(model.removesuffix(IMAGE_SUFFIX))
            version, precision = tensor.latest_version or "1", tensor.precision
            golden = _load_golden(repository, tensor.name, version)
            if not golden.encoded:
                raise ClientError("the golden set has no encoded photos (exported before images were served)")
            expected = golden.outputs[golden.encoded_rows]
            got = client.infer_images(model, golden.encoded)
        else:
            info = client.model_info(model, version)
            precision, tolerance = info.precision, info.parameters.get(TOLERANCE_PARAM)
            golden = _load_golden(repository, model.removesuffix(TRT_SUFFIX), version)
            expected = golden.outputs
            got = client.infer(model, golden.inputs, version=version)
        atol, rtol = golden.tolerance(tolerance or precision)
        cmp = compare(expected, got, atol=atol, rtol=rtol)
        return VerifyResult(model, version, precision, len(expected), cmp)
    except CnnDeployError as e:
        return VerifyResult(model, version, precision, 0, None, str(e))
    except Exception as e:  # an unreadable golden set is that model's failure, not the run's
        return VerifyResult(model, version, precision, 0, None, f"{e.__class__.__name__}: {e}")


def verify(client: TritonClient, models: list[str] | None, repository: Path) -> list[VerifyResult]:
    """Every served version of each model (default: every registered model that is ready)."""
    models = models or served_models(client)
    if not models:
        raise ClientError(f"no registered model is ready at {client.where}")
    results = []
    for model in models:
        if model.endswith(IMAGE_SUFFIX):  # the ensemble follows its tensor model's default version
            results.append(verify_version(client, model, "", repository))
            continue
        info = client.model_info(model)
        for version in sorted(info.versions, key=int, reverse=True) or ["1"]:
            results.append(verify_version(client, model, version, repository))
    return results
