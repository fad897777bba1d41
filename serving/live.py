"""Change a repository that a running local server serves, one unit of variants at a time.

`serving repo` and `serving rollback` rewrite a model's files and those of its variants (see
serving/repository/units.py); on a running server (every replica the state file lists) each model
that changed is then reloaded through the admin API, in dependency order, and checked READY at
exactly the versions its config names before the command reports success. If one reload fails, the
previous files come back, the models are reloaded back to them, and the command fails naming the
model: a server never serves half a rollback. Version directories are pruned only afterwards, and
never one that a server still serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cnn_deploy_core.layout import IMAGE_SUFFIX, INT8_SUFFIX, TRT_SUFFIX
from cnn_deploy_core.registry import Architecture
from serving import ServingError
from serving.repository.configs import DEFAULT_CONFIG
from serving.repository.placement import prune_unit
from serving.repository.units import Snapshot, int8_retired, intended_versions, ready_verdict, unit_models

T = TypeVar("T")


class ReloadError(ServingError):
    """A model did not come back READY at its intended versions on a running server."""


@dataclass(frozen=True)
class LiveServer:
    """The ready replicas of the local server that serves a repository (from its state file)."""

    urls: tuple[str, ...]  # HTTP URLs
    admin_key: str
    config_name: str


@dataclass
class Applied:
    """What a change did on the server: models reloaded (per replica, in order), unloaded, pruned."""

    reloaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    urls: tuple[str, ...] = ()
    pruned: dict[str, list[int]] = field(default_factory=dict)


def find(repository: Path, state_dir: Path | None = None) -> LiveServer | None:
    """The running local server of this repository, if any (replicas not serving are left out:
    they load the repository's files when they start; one serving with a model that failed to load
    is in, so that a reload can mend it)."""
    from serving.local import replica_serving, status

    state, _ = status(state_dir)
    if state is None or Path(state.repository).resolve() != repository.resolve():
        return None
    urls = tuple(r["http_url"] for r in state.all() if replica_serving(r))
    return LiveServer(urls, state.admin_key, state.config_name) if urls else None


def served(live: LiveServer | None) -> dict[str, set[int]]:
    """Model -> the versions READY on any replica."""
    from serving.local import model_table

    out: dict[str, set[int]] = {}
    for url in live.urls if live else ():
        for e in model_table(url, live.admin_key):
            if e.get("state") == "READY" and e.get("version"):
                out.setdefault(e["name"], set()).add(int(e["version"]))
    return out


def servable(model_dir: Path, config_name: str) -> bool:
    """Has this model a config for a server started with `--model-config-name=config_name`?
    (A `_trt` model has a gpu config only: a CPU server cannot load it, and is not asked to.)"""
    return (model_dir / "configs" / f"{config_name}.pbtxt").is_file() or (
        model_dir / DEFAULT_CONFIG
    ).is_file()


def _admin(url: str, action: str, model: str, key: str) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from serving.triton import ADMIN_HEADER

    client = httpclient.InferenceServerClient(
        url.removeprefix("http://"), connection_timeout=10, network_timeout=600
    )
    try:
        getattr(client, f"{action}_model")(model, headers={ADMIN_HEADER: key})
    except InferenceServerException as e:
        reason = one_line(e.message() or str(e))
        raise ReloadError(f"{model}: the server at {url} could not {action} it: {reason}") from e
    except Exception as e:  # socket errors and timeouts of the HTTP client library
        raise ReloadError(f"{model}: cannot reach {url} to {action} it: {e.__class__.__name__}: {e}") from e
    finally:
        client.close()


def one_line(message: str, limit: int = 400) -> str:
    """Triton's load error on one line: without the backend's Python traceback ("At: ...")."""
    text = " ".join(message.split("\n\nAt:")[0].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reload_one(live: LiveServer, url: str, repository: Path, model: str) -> None:
    """Load `model` from the repository on one replica and check it READY at its intended versions."""
    from serving.local import model_table

    if not (repository / model).is_dir():
        _admin(url, "unload", model, live.admin_key)
        return
    intended = intended_versions(repository / model, live.config_name)
    _admin(url, "load", model, live.admin_key)
    try:
        index = model_table(url, live.admin_key)
    except ServingError as e:
        raise ReloadError(f"{model}: {e}") from e
    problem = ready_verdict(model, intended, index)
    if problem:
        raise ReloadError(f"{problem} on {url}")


def _order(archs: list[Architecture], repository: Path, changed: list[str], config_name: str) -> list[str]:
    """The changed models in load order, unit by unit; an image ensemble reloads with its parts."""
    order: list[str] = []
    for arch in archs:
        unit = unit_models(arch, repository)
        parts_changed = any(m in changed for m in unit if not m.endswith(IMAGE_SUFFIX))
        for model in unit:
            wanted = model in changed or (model.endswith(IMAGE_SUFFIX) and parts_changed)
            if wanted and model not in order and servable(repository / model, config_name):
                order.append(model)
    for model in changed:  # created by the change and gone again, or a model of no unit now
        if model not in order and not (repository / model).is_dir():
            order.append(model)
    return order


def apply(
    repository: Path,
    archs: list[Architecture],
    change: Callable[[], T],
    *,
    live: LiveServer | None,
    reload: bool = True,
    keep: int | None = None,
) -> tuple[T, Applied]:
    """Run `change` (which rewrites the units of `archs`), reload what changed on `live`, then prune.

    On a failed reload the unit's files are restored and reloaded, and ReloadError says which
    model failed and that the previous versions serve again."""
    names = [m for a in archs for m in (*unit_models(a, repository), *_variants(a))]
    snap = Snapshot.take(repository, names)
    try:
        result = change()
    except BaseException:
        snap.restore(names)
        raise
    applied = Applied(urls=live.urls if live and reload else ())
    after = [m for a in archs for m in unit_models(a, repository)]
    changed = snap.changed(after)
    retired = [a.name + INT8_SUFFIX for a in archs if int8_retired(a, repository)]
    if live and reload:
        order = _order(archs, repository, changed, live.config_name)
        done: list[tuple[str, str]] = []
        try:
            for url in live.urls:  # one replica after the other: the others keep serving meanwhile
                for model in order:
                    done.append((url, model))
                    reload_one(live, url, repository, model)
                for model in retired:
                    if (repository / model).is_dir():
                        done.append((url, model))
                        _admin(url, "unload", model, live.admin_key)
        except ReloadError as e:
            raise ReloadError(_undo(e, snap, after, live, repository, done)) from e
        applied.reloaded, applied.unloaded = order, [m for m in retired if (repository / m).is_dir()]
    # Pruned only now: a version directory a server still serves is never deleted.
    still = served(live)
    for arch in archs:
        applied.pruned[arch.name] = prune_unit(arch, repository, keep, still)
    return result, applied


def _variants(arch: Architecture) -> list[str]:
    return [arch.name + s for s in ("", INT8_SUFFIX, TRT_SUFFIX, IMAGE_SUFFIX)]


def _undo(
    error: ReloadError,
    snap: Snapshot,
    after: list[str],
    live: LiveServer,
    repository: Path,
    done: list[tuple[str, str]],
) -> str:
    """Restore the files, reload every model touched back to them; the message for the user."""
    snap.restore(after)
    problems = []
    for url, model in done:
        try:
            if (repository / model).is_dir() and not servable(repository / model, live.config_name):
                continue
            reload_one(live, url, repository, model)
        except ServingError as e:
            problems.append(str(e))
    message = f"reload failed: {error}; the previous files are back"
    if problems:
        return message + f", but reloading them failed too: {'; '.join(problems)}"
    return message + " and every model serves its previous versions again"


def version_rows(index: list[dict], intended: dict[str, tuple[int, ...] | None]) -> list[dict]:
    """Per model of a server's repository index: the versions READY there and those the files on
    disk ask for (None: no config for this server, e.g. a `_trt` model on CPU). `agrees` False
    flags a server that serves other versions than its repository says (after `--no-reload`, a
    failed load, or files changed by hand)."""
    rows: dict[str, dict] = {}
    for e in index:
        row = rows.setdefault(e["name"], {"served": [], "reasons": {}})
        version = int(e["version"]) if str(e.get("version") or "").isdigit() else None
        if e.get("state") == "READY" and version is not None:
            row["served"].append(version)
        elif e.get("reason") not in (None, "", "unloaded"):
            row["reasons"][version] = one_line(str(e["reason"]), 200)
    out = []
    for name, row in rows.items():
        disk = intended.get(name)
        served = sorted(row["served"])
        # Why a version the files ask for is not served (a failed load of a version no config
        # names any more is history, not a problem).
        reasons = [r for v, r in row["reasons"].items() if v is None or v in (disk or ())]
        out.append(
            {
                "model": name,
                "served": served,
                "on_disk": sorted(disk) if disk is not None else None,
                "agrees": served == sorted(disk or ()),
                "reason": "; ".join(reasons),
            }
        )
    return out


def versions_of(repository: Path, index: list[dict], config_name: str) -> list[dict]:
    """version_rows for a running server: what each model's files ask for, read from disk."""
    intended: dict[str, tuple[int, ...] | None] = {}
    for name in {e["name"] for e in index}:
        model_dir = repository / name
        try:
            ok = model_dir.is_dir() and servable(model_dir, config_name)
            intended[name] = intended_versions(model_dir, config_name) if ok else None
        except ServingError:
            intended[name] = None
    return version_rows(index, intended)
