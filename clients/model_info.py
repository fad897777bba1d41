"""What a client learns from the server about a model: names, shapes, batch size, preprocessing."""

from __future__ import annotations

import json
from dataclasses import dataclass

from cnn_deploy_core.dtypes import config_to_kserve
from cnn_deploy_core.layout import PARAM_PREFIX
from cnn_deploy_core.preprocess import Preprocessing


@dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: tuple[str, ...]
    input_name: str
    input_dims: tuple[int, ...]  # without the batch dimension
    input_datatype: str  # KServe datatype: "FP32"
    output_name: str
    output_dims: tuple[int, ...]
    max_batch_size: int
    has_labels: bool  # the output has a label file: Triton's classification extension works
    parameters: dict[str, str]
    composing: tuple[str, ...] = ()  # an ensemble's models, in step order (preprocessing, network)

    @property
    def preprocessing(self) -> Preprocessing:
        raw = self.parameters.get(PARAM_PREFIX + "preprocessing")
        return Preprocessing.from_dict(json.loads(raw)) if raw else Preprocessing()

    @property
    def precision(self) -> str:
        return self.parameters.get(PARAM_PREFIX + "precision", "fp32")

    def version_meta(self, version: str | None = None) -> dict[str, str]:
        """One served version's own provenance (weights source, sha, ...); the default version's
        when none is given. Older repositories without per-version records give the model's."""
        version = version or self.latest_version
        per_version = json.loads(self.parameters.get(PARAM_PREFIX + "versions", "{}") or "{}")
        if version in per_version:
            return per_version[version]
        return {
            k: self.parameters[PARAM_PREFIX + k]
            for k in ("weights_source", "weights_random", "model_sha256")
            if PARAM_PREFIX + k in self.parameters
        }

    def weights_source(self, version: str | None = None) -> str | None:
        return self.version_meta(version).get("weights_source")

    def weights_random(self, version: str | None = None) -> bool:
        return self.version_meta(version).get("weights_random") == "true"

    @property
    def latest_version(self) -> str | None:
        return max(self.versions, key=int) if self.versions else None

    @classmethod
    def from_server(cls, metadata: dict, config: dict) -> ModelInfo:
        """From the JSON of the model metadata and model config endpoints (gRPC or HTTP)."""
        config = config.get("config", config)  # gRPC wraps it in {"config": ...}
        (inp,) = config["input"]
        (out,) = config["output"]
        return cls(
            name=metadata["name"],
            versions=tuple(metadata.get("versions", ())),
            input_name=inp["name"],
            input_dims=tuple(int(d) for d in inp["dims"]),
            input_datatype=config_to_kserve(inp.get("data_type", "TYPE_FP32")),
            output_name=out["name"],
            output_dims=tuple(int(d) for d in out["dims"]),
            max_batch_size=int(config.get("max_batch_size", 0)),
            has_labels=bool(out.get("label_filename")),
            parameters={k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()},
            composing=tuple(
                step["model_name"] for step in config.get("ensemble_scheduling", {}).get("step", [])
            ),
        )


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float

    @classmethod
    def parse(cls, entry: bytes | str) -> Prediction:
        """Triton's classification extension answers "score:index:label" (label may hold ':')."""
        text = entry.decode() if isinstance(entry, bytes) else entry
        score, index, *label = text.split(":", 2)
        return cls(label=label[0] if label else "", index=int(index), score=float(score))
