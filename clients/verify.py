"""`verify`: send each model's golden set to a live server and compare within its tolerance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clients import ClientError
from clients.client import TritonClient
from export import ExportError
from export.golden import GoldenSet
from export.layout import GOLDEN_FILE, TRT_SUFFIX
from export.metrics import Comparison, compare
from export.registry import names


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


def verify_model(client: TritonClient, model: str, repository: Path) -> VerifyResult:
    info = client.model_info(model)
    version = info.latest_version or "1"
    try:
        golden = GoldenSet.load(golden_path(repository, model.removesuffix(TRT_SUFFIX), version))
        tol = golden.tolerances.get(info.precision) or golden.tolerances["fp32"]
        got = client.infer(model, golden.inputs, version=version)
        cmp = compare(golden.outputs, got, atol=tol["atol"], rtol=tol["rtol"])
        return VerifyResult(model, version, info.precision, len(golden.inputs), cmp)
    except (ClientError, ExportError) as e:
        return VerifyResult(model, version, info.precision, 0, None, str(e))
    except Exception as e:  # an unreadable golden set is that model's failure, not the run's
        return VerifyResult(model, version, info.precision, 0, None, f"{e.__class__.__name__}: {e}")


def verify(client: TritonClient, models: list[str] | None, repository: Path) -> list[VerifyResult]:
    models = models or served_models(client)
    if not models:
        raise ClientError(f"no registered model is ready at {client.endpoint}")
    return [verify_model(client, m, repository) for m in models]
