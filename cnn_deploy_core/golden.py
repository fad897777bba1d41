"""The golden set: inputs + PyTorch reference outputs + tolerances, saved beside each model.

numpy only (no torch): the clients load it to verify a live server.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.layout import GOLDEN_FILE, IMAGE_SUFFIX, PARAM_PREFIX, TRT_SUFFIX

# A served config's parameter naming the golden tolerance it is held to, when its precision's own
# does not fit the runtime: the TensorRT INT8 config says "int8_cross_runtime".
TOLERANCE_PARAM = PARAM_PREFIX + "tolerance"
INT8_CROSS_RUNTIME = "int8_cross_runtime"
# A served config's parameter naming its golden set, a file in the served version's folder: the set
# made by the very file the config serves. `<name>_int8` holds two (its cpu config serves the UINT8
# file, answered by the folder's golden.npz; its gpu config the S8S8 file, by golden.int8.s8s8.npz).
GOLDEN_PARAM = PARAM_PREFIX + "golden"


def golden_path(repository: Path, model: str, version: str, parameters: Mapping[str, str]) -> Path:
    """The golden set a served config answers to (verdict on the name it gives): the file its
    GOLDEN_PARAM names in `<repository>/<model>/<version>/`, golden.npz where it names none."""
    name = parameters.get(GOLDEN_PARAM) or GOLDEN_FILE
    if Path(name).name != name or not name.endswith(".npz"):
        raise CnnDeployError(
            f"{model}: its config's {GOLDEN_PARAM} {name!r} is not a golden set file name, like {GOLDEN_FILE}"
        )
    return repository / model / version / name


def has_golden(repository: Path, model: str) -> bool:
    """Whether a golden set in the repository describes `model` (an image ensemble and a TensorRT
    plan answer to their tensor model's). The server's readiness and `clients verify` both ask it."""
    base = model.removesuffix(IMAGE_SUFFIX).removesuffix(TRT_SUFFIX)
    return any((repository / base).glob(f"*/{GOLDEN_FILE}"))


@dataclass
class GoldenSet:
    architecture: str
    inputs: np.ndarray  # float32 NCHW, already preprocessed
    outputs: np.ndarray  # float32 N x classes, PyTorch eager on CPU
    case_names: list[str]  # one per row: "random-0", "photo:chelsea.png", ...
    # precision (or a named variant, e.g. "int8_cross_runtime") -> {"atol", "rtol"}, plus, where the
    # export derived it from the model's own clean error, "measured_rel_err" and "margin".
    tolerances: dict[str, dict[str, float]]
    meta: dict[str, str] = field(default_factory=dict)
    # The photos as encoded files, for models that take images (`<name>_image`): file i's
    # expected output is outputs[encoded_rows[i]] (the same photo, preprocessed by the client).
    encoded: list[bytes] = field(default_factory=list)
    encoded_rows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.outputs) or len(self.inputs) != len(self.case_names):
            raise ValueError("golden set: inputs, outputs and case names differ in length")
        if len(self.encoded) != len(self.encoded_rows) or any(
            not 0 <= r < len(self.outputs) for r in self.encoded_rows
        ):
            raise ValueError("golden set: encoded images and their rows do not match")

    def tolerance(self, key: str | None) -> tuple[float, float]:
        """(atol, rtol) for a precision or named tolerance; FP32's when the set has no such entry
        (a golden set exported before that precision existed)."""
        fallback = self.tolerances.get("fp32") or next(iter(self.tolerances.values()))
        tol = self.tolerances.get(key or "") or fallback
        return float(tol["atol"]), float(tol["rtol"])

    def save(self, path: str | Path) -> None:
        header = {
            "architecture": self.architecture,
            "case_names": self.case_names,
            "tolerances": self.tolerances,
            "meta": self.meta,
            "encoded_rows": self.encoded_rows,
        }
        sizes = np.array([len(b) for b in self.encoded], dtype=np.int64)
        with open(path, "wb") as f:
            np.savez(
                f,
                inputs=self.inputs.astype(np.float32),
                outputs=self.outputs.astype(np.float32),
                header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                encoded=np.frombuffer(b"".join(self.encoded), dtype=np.uint8),
                encoded_sizes=sizes,
            )

    @classmethod
    def load(cls, path: str | Path) -> GoldenSet:
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(data["header"].tobytes().decode())
                encoded: list[bytes] = []
                if "encoded" in data.files:
                    blob, offset = data["encoded"].tobytes(), 0
                    for size in data["encoded_sizes"].tolist():
                        encoded.append(blob[offset : offset + size])
                        offset += size
                return cls(
                    architecture=header["architecture"],
                    inputs=data["inputs"],
                    outputs=data["outputs"],
                    case_names=list(header["case_names"]),
                    tolerances=header["tolerances"],
                    meta=header.get("meta", {}),
                    encoded=encoded,
                    encoded_rows=list(header.get("encoded_rows", [])),
                )
        except FileNotFoundError:
            raise CnnDeployError(f"golden set not found: {path}") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # JSONDecodeError is a ValueError
            raise CnnDeployError(f"golden set {path} is unreadable: {e}") from e
