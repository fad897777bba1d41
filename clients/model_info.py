"""What a client learns from the server about a model: names, shapes, batch size, preprocessing."""

from __future__ import annotations

import json
from dataclasses import dataclass

from export.layout import PARAM_PREFIX
from export.preprocess import Preprocessing

_DTYPES = {"TYPE_FP32": "FP32", "TYPE_FP16": "FP16", "TYPE_UINT8": "UINT8", "TYPE_INT64": "INT64"}


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

    @property
    def preprocessing(self) -> Preprocessing:
        raw = self.parameters.get(PARAM_PREFIX + "preprocessing")
        return Preprocessing.from_dict(json.loads(raw)) if raw else Preprocessing()

    @property
    def precision(self) -> str:
        return self.parameters.get(PARAM_PREFIX + "precision", "fp32")

    @property
    def weights_source(self) -> str | None:
        return self.parameters.get(PARAM_PREFIX + "weights_source")

    @property
    def weights_random(self) -> bool:
        return self.parameters.get(PARAM_PREFIX + "weights_random") == "true"

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
            input_datatype=_DTYPES.get(inp.get("data_type", "TYPE_FP32"), "FP32"),
            output_name=out["name"],
            output_dims=tuple(int(d) for d in out["dims"]),
            max_batch_size=int(config.get("max_batch_size", 0)),
            has_labels=bool(out.get("label_filename")),
            parameters={k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()},
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
