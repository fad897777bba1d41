"""`verify`: send each model's golden set to a live server and compare within its tolerance.

Without `--model`, every model the server's repository configures is accounted for (Triton's
repository index, an admin API): a model or version that is not READY fails with Triton's reason;
a READY one is checked against its golden set; one that no golden set describes is listed as
skipped, saying why (a preprocessing step checked through its `<name>_image` ensemble, a model of
your own without a golden set), and fails nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clients import ClientError, ServerUnavailableError
from clients.keys import KeyRequiredError
from clients.sync import TritonClient
from clients.tls import TlsError
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.golden import TOLERANCE_PARAM, GoldenSet, golden_path, has_golden
from cnn_deploy_core.layout import IMAGE_SUFFIX, INT8_SUFFIX, TRT_SUFFIX
from cnn_deploy_core.metrics import Comparison, compare, sensitivity
from cnn_deploy_core.registry import names

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
READY = "READY"
# Triton keeps a version that its config's version policy no longer serves in the index, as
# UNAVAILABLE "unloaded": retired on purpose (a rollback), not broken, while another version serves.
RETIRED_REASON = "unloaded"
# Failures of the server itself (unreachable, a failed TLS handshake, a key it wants): no model can
# be checked, so they end the whole command in one line instead of failing each model in turn.
SERVER_ERRORS = (ServerUnavailableError, TlsError, KeyRequiredError)


@dataclass
class VerifyResult:
    model: str
    version: str
    precision: str
    samples: int
    comparison: Comparison | None
    error: str | None = None
    skipped: str | None = None  # why no golden set checks this model (then it fails nothing)

    @property
    def passed(self) -> bool:
        return self.error is None and self.comparison is not None and self.comparison.passed

    @property
    def status(self) -> str:
        return SKIP if self.skipped else PASS if self.passed else FAIL

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "version": self.version,
            "precision": self.precision,
            "samples": self.samples,
            "status": self.status,
            "passed": self.passed,
            "error": self.error,
            "skipped": self.skipped,
            "comparison": self.comparison.to_dict() if self.comparison else None,
        }


def registered_names() -> set[str]:
    """The registry's architectures and their variants (TensorRT plans, INT8, image ensembles):
    each must answer its golden set."""
    return {name + suffix for name in names() for suffix in ("", TRT_SUFFIX, INT8_SUFFIX, IMAGE_SUFFIX)}


@dataclass(frozen=True)
class Plan:
    """What `verify` does with each model of the repository index (see `plan`)."""

    check: list[str]  # READY models, each checked against its golden set (every served version)
    failed: list[VerifyResult]  # not READY, with Triton's reason
    skipped: list[VerifyResult]  # READY, and no golden set describes them


def one_line(reason: str) -> str:
    """Triton's reason on one line, without the Python backend's traceback ("At: ...")."""
    return " ".join(reason.split("\n\nAt:")[0].split())


def plan(index: list[dict], registered: set[str], golden: set[str], steps: dict[str, str]) -> Plan:
    """Every model of Triton's repository index accounted for (verdict).

    `registered`: names that must answer a golden set; `golden`: other names the repository has a
    golden set for; `steps`: a composing model -> the ensemble that checks it.
    """
    by_name: dict[str, list[dict]] = {}
    for entry in index:
        by_name.setdefault(entry["name"], []).append(entry)
    check, failed, skipped = [], [], []
    for name in sorted(by_name):
        entries = by_name[name]
        serving = any(e.get("state") == READY for e in entries)
        for e in entries:
            state, reason = e.get("state") or "UNKNOWN", one_line(e.get("reason") or "")
            if state == READY or (serving and reason == RETIRED_REASON):
                continue
            failed.append(
                VerifyResult(
                    name, e.get("version", ""), "?", 0, None, f"{state}: {reason or 'no reason given'}"
                )
            )
        if not serving:
            continue
        if name in registered or name in golden:
            check.append(name)
        elif name in steps:
            skipped.append(VerifyResult(name, "", "?", 0, None, skipped=f"checked through {steps[name]}"))
        else:
            skipped.append(VerifyResult(name, "", "?", 0, None, skipped="no golden set in the repository"))
    return Plan(check, failed, skipped)


def _load_golden(repository: Path, exported: str, version: str, parameters: dict[str, str]) -> GoldenSet:
    """The golden set the served config names (golden_path): the answers of the very file it serves."""
    golden = GoldenSet.load(golden_path(repository, exported, version, parameters))
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
            golden = _load_golden(repository, tensor.name, version, tensor.parameters)
            if not golden.encoded:
                raise ClientError("the golden set has no encoded photos (exported before images were served)")
            expected = golden.outputs[golden.encoded_rows]
            got = client.infer_images(model, golden.encoded)
        else:
            info = client.model_info(model, version)
            precision, tolerance = info.precision, info.parameters.get(TOLERANCE_PARAM)
            golden = _load_golden(repository, model.removesuffix(TRT_SUFFIX), version, info.parameters)
            expected = golden.outputs
            got = client.infer(model, golden.inputs, version=version)
        atol, rtol = golden.tolerance(tolerance or precision)
        cmp = compare(expected, got, atol=atol, rtol=rtol)
        return VerifyResult(model, version, precision, len(expected), cmp)
    except SERVER_ERRORS:
        raise
    except CnnDeployError as e:
        return VerifyResult(model, version, precision, 0, None, str(e))
    except Exception as e:  # an unreadable golden set is that model's failure, not the run's
        return VerifyResult(model, version, precision, 0, None, f"{e.__class__.__name__}: {e}")


def verify_models(client: TritonClient, models: list[str], repository: Path) -> list[VerifyResult]:
    """Every served version of each named model against its golden set."""
    results = []
    for model in models:
        if model.endswith(IMAGE_SUFFIX):  # the ensemble follows its tensor model's default version
            results.append(verify_version(client, model, "", repository))
            continue
        try:
            info = client.model_info(model)
        except SERVER_ERRORS:
            raise
        except CnnDeployError as e:  # not served: this model's failure, the others are still checked
            results.append(VerifyResult(model, "", "?", 0, None, str(e)))
            continue
        for version in sorted(info.versions, key=int, reverse=True) or ["1"]:
            results.append(verify_version(client, model, version, repository))
    return results


def _steps(client: TritonClient, index: list[dict]) -> dict[str, str]:
    """Composing model -> the image ensemble that checks it, for the READY ensembles."""
    steps: dict[str, str] = {}
    for name in sorted(
        {e["name"] for e in index if e.get("state") == READY and e["name"].endswith(IMAGE_SUFFIX)}
    ):
        try:
            composing = client.model_info(name).composing
        except SERVER_ERRORS:
            raise
        except CnnDeployError:
            continue  # the ensemble's own check reports it
        for step in composing:
            steps.setdefault(step, name)
    return steps


def verify(
    client: TritonClient, models: list[str] | None, repository: Path, *, admin_key: str | None = None
) -> list[VerifyResult]:
    """The named models, or (none named) every model of the server's repository index: a model
    that is not READY fails with Triton's reason (the index is an admin API: it needs the key)."""
    if models:
        return verify_models(client, models, repository)
    if not admin_key:
        raise ClientError(
            f"listing every model of {client.where} (Triton's repository index) needs the admin key: "
            "give --admin-key-file or $TRITON_ADMIN_KEY, or name the models with --model"
        )
    index = client.repository_index(admin_key)
    if not index:
        raise ClientError(f"the server at {client.where} has no model in its repository")
    others = {e["name"] for e in index if has_golden(repository, e["name"])}
    todo = plan(index, registered_names(), others, _steps(client, index))
    return todo.failed + verify_models(client, todo.check, repository) + todo.skipped


# --- verified once per server start (a container's health check) ---------------------------------


def success_counts(statistics: list[dict]) -> dict[str, int]:
    """'model/version' -> successful inferences since that version was loaded (Triton's statistics;
    gRPC's JSON gives 64-bit counts as strings and leaves zeros out)."""
    return {
        f"{s['name']}/{s.get('version', '')}": int(
            s.get("inference_stats", {}).get("success", {}).get("count", 0)
        )
        for s in statistics
    }


def same_start(verified: dict[str, int], now: dict[str, int]) -> bool:
    """Whether the server still runs the models that were verified (verdict): the success counts
    only grow while a model stays loaded, so a count that went down (or a version that went away)
    means the server restarted or reloaded it since, and it must be verified again. Each check
    records the counts it saw, so a restart goes unnoticed only if, between two checks, the new
    server answered every model more often than the old one had in its whole life."""
    return bool(verified) and all(now.get(key, -1) >= count for key, count in verified.items())


def verify_once(
    client: TritonClient, models: list[str] | None, repository: Path, marker: Path, *, admin_key: str | None
) -> tuple[list[VerifyResult], bool]:
    """Verify once per server start: a full verification unless `marker` records one of this very
    start and the server is ready (strict readiness: every model READY); then no inference is sent.
    Returns the results (empty when the marker held) and whether the marker held."""
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded and recorded.get("where") == client.where:
        ready = client.server_ready()
        now = success_counts(client.model_statistics()) if ready else {}
        if ready and same_start(recorded.get("counts", {}), now):
            _record(marker, client.where, now)
            return [], True
    marker.unlink(missing_ok=True)
    if not client.server_ready():  # still loading, or a model failed: no inference is worth sending
        why = ""
        if not models and admin_key:
            failed = plan(client.repository_index(admin_key), registered_names(), set(), {}).failed
            why = ": " + "; ".join(f"{r.model} {r.error}" for r in failed) if failed else ""
        raise ClientError(f"the server at {client.where} is not ready{why}")
    results = verify(client, models, repository, admin_key=admin_key)
    if all(r.status != FAIL for r in results) and client.server_ready():
        _record(marker, client.where, success_counts(client.model_statistics()))
    return results, False


def _record(marker: Path, where: str, counts: dict[str, int]) -> None:
    # Only models that answered: a count of zero cannot go down, so it cannot tell a restart.
    answered = {k: v for k, v in counts.items() if v > 0}
    atomic_write_text(marker, json.dumps({"where": where, "counts": answered}) + "\n")
