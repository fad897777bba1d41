"""The load test's report as a typed, versioned schema: what `python -m clients loadtest` writes and
what the tuner, the drills, the benchmarks and the report read.

    report = LoadTestReport.from_json(path.read_text())
    step = report.steps[0]
    step.inferences_per_s, step.latency_ms.p99, step.verified, step.wrong, step.errors

Whether a run was sound is decided by one pure function over this report,
:func:`cnn_deploy_core.judge.problems`, each caller with its own objectives.

Readers use the attributes, never the JSON's keys: a renamed field then fails at import or in a
type checker, not silently as a missing key. The JSON carries `schema_version`; a reader refuses a
report of another version with :class:`ReportSchemaError` instead of misreading it. Adding a field
with a default is compatible (older reports read with the default); renaming or removing one bumps
SCHEMA_VERSION. numpy only.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

from cnn_deploy_core import CnnDeployError

SCHEMA_VERSION = 2  # 1: the first report, without a version field; 2: this schema


class ReportSchemaError(CnnDeployError):
    """A load-test report that this code cannot read: another schema version, or malformed."""


@dataclass(frozen=True)
class Latency:
    """Percentiles in milliseconds, and how many samples they rest on."""

    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    count: int = 0

    @classmethod
    def of(cls, seconds: list[float]) -> Latency | None:
        if not seconds:
            return None
        p50, p90, p95, p99 = np.percentile(np.asarray(seconds) * 1e3, [50, 90, 95, 99]).tolist()
        return cls(p50, p90, p95, p99, max(seconds) * 1e3, len(seconds))


@dataclass(frozen=True)
class ServerBreakdown:
    """Triton's own view of the measured windows: deltas of its statistics, averaged per request."""

    requests: int
    failures: int
    inferences: int
    executions: int
    avg_batch: float | None  # inferences per execution: what dynamic batching achieved
    queue_ms: float | None
    compute_input_ms: float | None
    compute_infer_ms: float | None
    compute_output_ms: float | None

    @classmethod
    def between(cls, before: dict[str, int], after: dict[str, int]) -> ServerBreakdown:
        d = {k: after.get(k, 0) - before.get(k, 0) for k in after}

        def avg(name: str) -> float | None:
            return d[f"{name}_ns"] / d[f"{name}_count"] / 1e6 if d.get(f"{name}_count") else None

        return cls(
            requests=d["success_count"],
            failures=d["fail_count"],
            inferences=d["inference_count"],
            executions=d["execution_count"],
            avg_batch=d["inference_count"] / d["execution_count"] if d["execution_count"] else None,
            queue_ms=avg("queue"),
            compute_input_ms=avg("compute_input"),
            compute_infer_ms=avg("compute_infer"),
            compute_output_ms=avg("compute_output"),
        )


def flatten_statistics(stats: dict) -> dict[str, int]:
    """Triton's per-model statistics JSON as flat ints (over gRPC the int64s arrive as strings)."""

    def num(*path: str) -> int:
        node = stats
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        try:
            return int(node)
        except (TypeError, ValueError):
            return 0  # proto JSON omits zero fields

    flat = {"inference_count": num("inference_count"), "execution_count": num("execution_count")}
    for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        flat[f"{name}_count"] = num("inference_stats", name, "count")
        flat[f"{name}_ns"] = num("inference_stats", name, "ns")
    return flat


@dataclass(frozen=True)
class StepResult:
    mode: str
    level: float  # the concurrency, or the offered rate in req/s
    label: str
    stable: bool
    windows: int  # windows merged into the result (the last 3)
    windows_run: int
    duration_s: float  # of the merged windows
    requests: int  # completed in the merged windows: responses + errors
    responses: int
    inferences: int  # responses × batch size
    inferences_per_s: float
    requests_per_s: float
    latency_ms: Latency | None  # response time: from the scheduled send in rate mode
    service_ms: Latency | None  # service time: from the actual send (the same in concurrency mode)
    samples: int  # answers the percentiles rest on
    errors: dict[str, int]  # in the merged windows (see all_errors for every request after warm-up)
    error_rate: float
    verified: int
    wrong: int
    server: ServerBreakdown | None
    generator_cpu_ms_per_request: float | None  # the generator process's CPU time, the whole step
    verifier_cpu_ms_per_request: float | None  # the verifier process's, per checked answer
    window_log: list[dict]  # every window's throughput and p99, to see how it settled
    offered_rate: float | None = None  # rate mode
    achieved_rate: float | None = None  # rate mode: requests sent per second
    schedule_lag_ms: dict | None = None  # rate mode: p50/p99/max of (send - scheduled)
    capped: int | None = None  # rate mode: sends that waited for a free slot under --max-outstanding
    kept_up: bool | None = None  # rate mode: sends went out on schedule (see schedule_lag_ms, capped)
    # Every request that ended after the warm-up, discarded windows and the end-of-step drain
    # included: what the error rate and the SLO are judged on (the merged windows alone could
    # leave failures out).
    all_requests: int = 0
    all_responses: int = 0
    all_errors: dict[str, int] = field(default_factory=dict)
    all_error_rate: float = 0.0
    # Response time of every request after warm-up, each failure counted at its time to failure
    # (as k6 and Locust do): a step full of timeouts cannot pass a latency objective.
    latency_all_ms: Latency | None = None
    dropped: int = 0  # rate mode: scheduled before the step ended but never sent (k6's dropped_iterations)
    # An image ensemble: Triton's breakdown per composing model (preprocessing, network), as
    # perf_analyzer shows it; `server` is the ensemble's own.
    composing: dict[str, ServerBreakdown] = field(default_factory=dict)


@dataclass
class Totals:
    """Everything the run saw, warm-up and unsettled windows included: no wrong answer is hidden."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    verified: int = 0
    wrong: int = 0
    wrong_examples: list[dict] = field(default_factory=list)
    responses: int = 0
    dropped: int = 0  # rate mode: scheduled but never sent


@dataclass(frozen=True)
class ReplicaResult:
    """One replica's share of a run over several URLs (all steps, warm-up included)."""

    url: str
    responses: int
    errors: dict[str, int]
    failovers: int  # requests it could not take that went to another replica
    service_ms: dict | None = None  # p50, p99 of its answers


@dataclass(frozen=True)
class SloResult:
    """The verdict of cnn_deploy_core.judge as the report records it."""

    objectives: dict
    passed: bool
    violations: list[str]  # every problem the judge found, one line each
    # The problems that mean the run itself failed (failed requests, wrong or unverified answers,
    # a lost replica, nothing measured) rather than missed a latency objective.
    failing: list[str] = field(default_factory=list)


@dataclass
class LoadTestReport:
    command: str  # as run, secrets redacted
    url: str
    protocol: str
    model: str
    version: str | None
    batch_size: int
    mode: str
    arrival: str | None
    started_at: str
    duration_s: float
    settings: dict
    verification: dict
    steps: list[StepResult]
    totals: Totals
    slo: SloResult
    generator: dict
    generator_capacity: dict | None
    failures: list[str]  # what went wrong in the run itself (a sweep that stopped), judged as problems
    replicas: list[ReplicaResult] = field(default_factory=list)  # with several URLs: each one's figures
    schema_version: int = SCHEMA_VERSION
    provenance: dict = field(default_factory=dict)  # cnn_deploy_core.machine.provenance

    @property
    def passed(self) -> bool:
        """The verdict recorded with the report; callers with their own objectives ask
        cnn_deploy_core.judge.problems instead."""
        return self.slo.passed and not self.failures

    @property
    def verified(self) -> bool:
        """Whether answers were checked at all (False: `--no-verify`, the report says so)."""
        return bool(self.verification.get("enabled"))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> LoadTestReport:
        """The report a `to_dict()` gave (or its JSON parsed); refuses another schema version."""
        if not isinstance(data, dict):
            raise ReportSchemaError(f"a load-test report is a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            found = "no schema_version" if version is None else f"schema_version {version!r}"
            raise ReportSchemaError(
                f"load-test report has {found}; this code reads schema_version {SCHEMA_VERSION}: "
                "rerun `python -m clients loadtest` to write it again"
            )
        return _build(cls, data, "report")

    @classmethod
    def from_json(cls, text: str) -> LoadTestReport:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ReportSchemaError(f"load-test report is not valid JSON: {e}") from None
        return cls.from_dict(data)


# ---- reading: dicts back into the dataclasses, by their type hints ----

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(cls: type, data: Any, where: str):
    if not isinstance(data, dict):
        raise ReportSchemaError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    hints, kwargs = _hints(cls), {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _value(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ReportSchemaError(f"{where}: field {f.name!r} is missing")
    return cls(**kwargs)


def _value(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _value(inner, value, where)
    if is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        return [_value(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, inner = typing.get_args(hint) or (Any, Any)
        return {k: _value(inner, v, f"{where}.{k}") for k, v in value.items()}
    return value
