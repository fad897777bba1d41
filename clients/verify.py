"""`verify`: send each model's golden set to a live server and compare within its tolerance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clients import ClientError
from clients.client import TritonClient
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.golden import GoldenSet
from cnn_deploy_core.layout import GOLDEN_FILE, TRT_SUFFIX
from cnn_deploy_core.metrics import Comparison, compare
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
    """The registry's architectures (and their TensorRT variants) that the server has ready."""
    candidates = [n for name in names() for n in (name, f"{name}_trt")]
    return client.ready_models(candidates)


def verify_version(client: TritonClient, model: str, version: str, repository: Path) -> VerifyResult:
    """One served version against its own golden set (every version describes itself)."""
    precision = "?"
    try:
        precision = client.model_info(model, version).precision
        golden = GoldenSet.load(golden_path(repository, model.removesuffix(TRT_SUFFIX), version))
        tol = golden.tolerances.get(precision) or golden.tolerances["fp32"]
        got = client.infer(model, golden.inputs, version=version)
        cmp = compare(golden.outputs, got, atol=tol["atol"], rtol=tol["rtol"])
        return VerifyResult(model, version, precision, len(golden.inputs), cmp)
    except CnnDeployError as e:
        return VerifyResult(model, version, precision, 0, None, str(e))
    except Exception as e:  # an unreadable golden set is that model's failure, not the run's
        return VerifyResult(model, version, precision, 0, None, f"{e.__class__.__name__}: {e}")


def verify(client: TritonClient, models: list[str] | None, repository: Path) -> list[VerifyResult]:
    """Every served version of each model (default: every registered model that is ready)."""
    models = models or served_models(client)
    if not models:
        raise ClientError(f"no registered model is ready at {client.endpoint}")
    results = []
    for model in models:
        info = client.model_info(model)
        for version in sorted(info.versions, key=int, reverse=True) or ["1"]:
            results.append(verify_version(client, model, version, repository))
    return results
