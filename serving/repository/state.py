"""`<repo>/<name>/serving.json`: how a model is served, kept across placements and rollbacks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnn_deploy_core.fsutil import atomic_write_text
from serving import ServingError
from serving.repository.configs import CpuPlan

STATE_FILE = "serving.json"


@dataclass
class ModelState:
    """`<repo>/<name>/serving.json`: what a regenerated config must keep (rollback re-writes configs)."""

    cpu: CpuPlan = field(default_factory=CpuPlan)
    tensorrt: bool = False
    pinned: int | None = None  # set by rollback: serve only this version
    tuned: dict | None = None  # set by `serving tune`: the winner, regenerated with every placement

    @classmethod
    def load(cls, model_dir: Path) -> ModelState:
        path = model_dir / STATE_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(
                cpu=CpuPlan(**data["cpu"]),
                tensorrt=bool(data["tensorrt"]),
                pinned=data["pinned"],
                tuned=data.get("tuned"),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ServingError(f"{path} is unreadable ({e}); delete it to start from the defaults") from e

    def save(self, model_dir: Path) -> None:
        atomic_write_text(model_dir / STATE_FILE, json.dumps(asdict(self), indent=2) + "\n")
