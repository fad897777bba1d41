"""Typed load-test reports built by hand, for the judges' unit tests: one sound run by default, and a
keyword for each way a run can go wrong."""

from __future__ import annotations

from cnn_deploy_core.loadtest_report import (
    Latency,
    LoadTestReport,
    ReplicaResult,
    ServerBreakdown,
    SloResult,
    StepResult,
    Totals,
)


def server(executions: int = 25) -> ServerBreakdown:
    return ServerBreakdown(
        requests=100, failures=0, inferences=100, executions=executions,
        avg_batch=4.0 if executions else None, queue_ms=0.1, compute_input_ms=0.1,
        compute_infer_ms=5.0, compute_output_ms=0.1,
    )  # fmt: skip


def step(
    *, label="c=4", responses=100, verified=100, wrong=0, errors=None, dropped=0, p99_all_ms=9.0,
    executions=25,
) -> StepResult:  # fmt: skip
    """One step; `errors` are those after warm-up (its all_errors)."""
    errors = dict(errors or {})
    requests = responses + sum(errors.values())
    return StepResult(
        mode="concurrency", level=4, label=label, stable=True, windows=3, windows_run=3, duration_s=3.0,
        requests=requests, responses=responses, inferences=responses, inferences_per_s=50.0,
        requests_per_s=50.0, latency_ms=Latency(5, 6, 7, 9, 10, responses) if responses else None,
        service_ms=None, samples=responses, errors=errors, error_rate=0.0, verified=verified, wrong=wrong,
        server=server(executions) if executions is not None else None, generator_cpu_ms_per_request=None,
        verifier_cpu_ms_per_request=None, window_log=[], all_requests=requests, all_responses=responses,
        all_errors=errors, all_error_rate=sum(errors.values()) / max(requests, 1),
        latency_all_ms=Latency(5, 6, 7, p99_all_ms, 10, requests) if requests else None, dropped=dropped,
    )  # fmt: skip


def report(
    *,
    steps: list[StepResult] | None = None,
    warmup_errors: dict | None = None,
    warmup_responses: int = 0,
    enabled: bool = True,
    failures=(),
    replicas: list[ReplicaResult] | None = None,
    **step_kwargs,
) -> LoadTestReport:
    """A run of `steps` (default: one `step(**step_kwargs)`); `warmup_errors` and `warmup_responses`
    happened in warm-ups only (the run's totals count them, no step does)."""
    steps = steps if steps is not None else [step(**step_kwargs)]
    errors: dict[str, int] = dict(warmup_errors or {})
    for s in steps:
        for k, v in s.all_errors.items():
            errors[k] = errors.get(k, 0) + v
    responses = sum(s.all_responses for s in steps) + warmup_responses
    totals = Totals(
        requests=responses + sum(errors.values()), errors=errors,
        verified=sum(s.verified for s in steps) + (warmup_responses if enabled else 0),
        wrong=sum(s.wrong for s in steps), responses=responses, dropped=sum(s.dropped for s in steps),
    )  # fmt: skip
    return LoadTestReport(
        command="python -m clients loadtest", url="grpc://x:1", protocol="grpc", model="resnet18",
        version="1", batch_size=1, mode="concurrency", arrival=None, started_at="2026-01-01T00:00:00",
        duration_s=5.0, settings={},
        verification={"enabled": enabled, "reason": None if enabled else "--no-verify"},
        steps=steps, totals=totals, slo=SloResult({}, True, []), generator={}, generator_capacity=None,
        failures=list(failures), replicas=list(replicas or []),
    )  # fmt: skip


def replica(url: str, responses: int = 50, errors: dict | None = None, failovers: int = 0) -> ReplicaResult:
    return ReplicaResult(url=url, responses=responses, errors=dict(errors or {}), failovers=failovers)
