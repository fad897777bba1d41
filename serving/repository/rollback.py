"""`serving rollback`: serve an earlier version alone, until an export is placed again."""

from __future__ import annotations

from pathlib import Path

from cnn_deploy_core.registry import Architecture
from serving import ServingError
from serving.repository.placement import prune_unit, write_configs
from serving.repository.state import ModelState
from serving.repository.versions import REQUIRED_FILES, served_versions, versions


def rollback(
    arch: Architecture, repository: Path, to: int | None = None, *, defer_prune: bool = False
) -> tuple[int, int]:
    """Serve an earlier version alone: `to`, or the newest one older than the current default.
    Returns (previous default, now served). Undone by placing an export again.

    Every variant moves with it (placement.write_configs); `defer_prune`: the INT8 model of a
    version without one stays until the caller has reloaded a running server (prune_unit)."""
    model_dir = repository / arch.name
    state = ModelState.load(model_dir)
    current = served_versions(model_dir, state.pinned)[0].number
    older = [n for n in versions(model_dir) if n < current]
    target = to if to is not None else (older[-1] if older else None)
    if target is None:
        raise ServingError(f"{arch.name}: version {current} is the oldest there is; nothing to roll back to")
    if target not in versions(model_dir):
        raise ServingError(
            f"{arch.name}: no version {target} (have {', '.join(map(str, versions(model_dir)))})"
        )
    missing = [f for f in REQUIRED_FILES if not (model_dir / str(target) / f).is_file()]
    if missing:
        raise ServingError(f"{arch.name}: version {target} is incomplete (missing {', '.join(missing)})")
    state.pinned = target
    try:
        write_configs(arch, model_dir, state)
        state.save(model_dir)
        if not defer_prune:
            prune_unit(arch, repository, None)
    except OSError as e:
        raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from e
    return current, target
