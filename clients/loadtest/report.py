"""What a load test reports: typed results, and the same report as JSON, CSV, PNG and a rich table.

The writers take the report's dict (`LoadTestReport.to_dict()`, i.e. the JSON), so a saved report
can be rendered again without rerunning. numpy, matplotlib (Agg) and rich only.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.table import Table

from clients.loadtest.config import Slo
from cnn_deploy_core.fsutil import atomic_write_bytes, atomic_write_text, ensure_writable_dir


def error_kinds(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(errors.items())) or "none"


@dataclass(frozen=True)
class SloResult:
    objectives: dict
    passed: bool
    violations: list[str]


def evaluate(slo: Slo, steps: list[StepResult], totals: Totals) -> SloResult:
    """Which objectives the run missed, one line each."""
    violations = []
    if slo.p99_ms is not None:
        bad = [s for s in steps if s.latency_ms is None or s.latency_ms.p99 > slo.p99_ms]
        if bad:
            worst = max((s.latency_ms.p99 for s in bad if s.latency_ms), default=None)
            detail = "no successful response" if worst is None else f"worst {worst:.2f} ms"
            violations.append(f"p99 latency above {slo.p99_ms:g} ms at {_labels(bad)} ({detail})")
    if slo.max_error_rate is not None:
        bad = [s for s in steps if s.error_rate > slo.max_error_rate]
        if bad:
            worst = max(bad, key=lambda s: s.error_rate)
            violations.append(
                f"error rate above {slo.max_error_rate:g} at {_labels(bad)} "
                f"(worst {worst.error_rate:.3g}: {error_kinds(worst.errors)})"
            )
    if slo.max_wrong is not None and totals.wrong > slo.max_wrong:
        violations.append(
            f"{totals.wrong} wrong answers of {totals.verified} verified (allowed {slo.max_wrong})"
        )
    return SloResult(objectives=asdict(slo), passed=not violations, violations=violations)


def _labels(steps: list[StepResult]) -> str:
    return ", ".join(s.label for s in steps)


@dataclass(frozen=True)
class Latency:
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latency | None:
        if not seconds:
            return None
        p50, p90, p95, p99 = np.percentile(np.asarray(seconds) * 1e3, [50, 90, 95, 99]).tolist()
        return cls(p50, p90, p95, p99, max(seconds) * 1e3)


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
    requests: int  # completed: responses + errors
    responses: int
    inferences: int  # responses × batch size
    inferences_per_s: float
    requests_per_s: float
    latency_ms: Latency | None  # response time: from the scheduled send in rate mode
    service_ms: Latency | None  # service time: from the actual send (the same in concurrency mode)
    samples: int  # answers the percentiles rest on
    errors: dict[str, int]
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


@dataclass
class Totals:
    """Everything the run saw, warm-up and unsettled windows included: no wrong answer is hidden."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    verified: int = 0
    wrong: int = 0
    wrong_examples: list[dict] = field(default_factory=list)


@dataclass
class LoadTestReport:
    command: str
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
    failures: list[str]  # run problems besides the SLO (a step without one good response)
    replicas: list[dict] = field(default_factory=list)  # with several URLs: each one's figures

    @property
    def passed(self) -> bool:
        return self.slo.passed and not self.failures

    def to_dict(self) -> dict:
        return asdict(self)


# ---- writers: they take the report's dict, i.e. its JSON ----

CSV_COLUMNS = (
    "mode",
    "level",
    "label",
    "stable",
    "windows",
    "samples",
    "requests",
    "inferences_per_s",
    "requests_per_s",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "error_rate",
    "error_kinds",
    "verified",
    "wrong",
    "server_queue_ms",
    "server_compute_input_ms",
    "server_compute_infer_ms",
    "server_compute_output_ms",
    "server_avg_batch",
    "offered_rate",
    "achieved_rate",
    "schedule_lag_p99_ms",
    "capped",
    "service_p50_ms",
    "service_p99_ms",
    "generator_cpu_ms_per_request",
    "verifier_cpu_ms_per_request",
)


@dataclass(frozen=True)
class ReportPaths:
    json: Path
    csv: Path
    png: Path

    @classmethod
    def for_model(cls, output: Path, model: str) -> ReportPaths:
        stem = output / f"loadtest-{model}"
        return cls(stem.with_suffix(".json"), stem.with_suffix(".csv"), stem.with_suffix(".png"))


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def csv_row(step: dict) -> dict:
    lat, server, lag = step["latency_ms"] or {}, step["server"] or {}, step["schedule_lag_ms"] or {}
    row = {k: step.get(k) for k in CSV_COLUMNS}
    row.update({f"{k}_ms": lat.get(k) for k in ("p50", "p90", "p95", "p99", "max")})
    row.update(
        {
            f"server_{k}": server.get(k)
            for k in ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms", "avg_batch")
        }
    )
    row["errors"] = sum(step["errors"].values())
    row["error_kinds"] = ";".join(f"{k}={v}" for k, v in sorted(step["errors"].items()))
    row["schedule_lag_p99_ms"] = lag.get("p99")
    service = step.get("service_ms") or {}
    row["service_p50_ms"], row["service_p99_ms"] = service.get("p50"), service.get("p99")
    return row


def to_csv(report: dict) -> str:
    """One row per step."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in report["steps"]:
        writer.writerow(csv_row(step))
    return buffer.getvalue()


def to_png(report: dict) -> bytes:
    """The latency-throughput curve: one point per step, p50 and p99, annotated with the load."""
    import matplotlib

    matplotlib.use("Agg")  # no display: report files are written on servers and in CI
    from matplotlib.figure import Figure

    steps = [s for s in report["steps"] if s["latency_ms"]]
    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.subplots()
    x = [s["inferences_per_s"] for s in steps]
    for key, style in (("p50", "o-"), ("p99", "s--")):
        ax.plot(x, [s["latency_ms"][key] for s in steps], style, label=f"{key} latency")
    for s in steps:
        ax.annotate(
            s["label"],
            (s["inferences_per_s"], s["latency_ms"]["p99"]),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=8,
        )
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("client latency (ms)")
    title = f"{report['model']} v{report['version']} over {report['protocol']}, batch {report['batch_size']}"
    if report.get("generator_capacity"):
        title += f"\ngenerator capacity {report['generator_capacity']['inferences_per_s']:.0f} inferences/s"
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.12, y=0.15)  # room for the annotations at the ends
    # From zero on both axes: a saturated server then shows as the near-vertical wall it is,
    # instead of a zig-zag magnified over a few percent of throughput.
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0, right=max(x, default=1) * 1.15)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_reports(report: dict, output: Path) -> ReportPaths:
    """JSON, CSV and PNG in `output`, each written atomically (temp file + rename)."""
    paths = ReportPaths.for_model(output, report["model"])
    ensure_writable_dir(output)
    atomic_write_text(paths.json, to_json(report))
    atomic_write_text(paths.csv, to_csv(report))
    atomic_write_bytes(paths.png, to_png(report))
    return paths


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_table(report: dict) -> Table:
    """One row per step; two-line headers keep it within 120 columns."""
    rate = report["mode"] == "rate"
    table = Table(
        title=f"load test: {report['model']} v{report['version']} ({report['protocol']}, "
        f"batch {report['batch_size']})",
        caption="latency: ms at the client, from the scheduled send in rate mode (svc: from the actual "
        "send); srv: Triton's statistics, ms per request and inferences per execution",
    )
    columns = [
        "load",
        "stable",
        "infer/s",
        *(["req/s"] if report["batch_size"] > 1 else []),
        *(["sent/s", "lag\np99"] if rate else []),
        "p50",
        "p90",
        "p99",
        "max",
        *(["svc\np50", "svc\np99"] if rate else []),
        "sam-\nples",
        "errors",
        "veri-\nfied",
        "wrong",
        "srv\nqueue",
        "srv\ninfer",
        "srv\nbatch",
    ]
    for name in columns:
        table.add_column(name, justify="left" if name == "load" else "right", no_wrap=True)
    for s in report["steps"]:
        lat, server = s["latency_ms"] or {}, s["server"] or {}
        errors = sum(s["errors"].values())
        cells = [s["label"], "yes" if s["stable"] else "[yellow]no[/]", f"{s['inferences_per_s']:.1f}"]
        if report["batch_size"] > 1:
            cells.append(f"{s['requests_per_s']:.1f}")
        if rate:
            cells += [f"{s['achieved_rate']:.1f}", _ms((s["schedule_lag_ms"] or {}).get("p99"))]
        service = s.get("service_ms") or {}
        cells += [
            *(_ms(lat.get(k)) for k in ("p50", "p90", "p99", "max")),
            *([_ms(service.get("p50")), _ms(service.get("p99"))] if rate else []),
            str(s.get("samples", "-")),
            f"[red]{errors}[/]" if errors else "0",
            str(s["verified"]),
            f"[red]{s['wrong']}[/]" if s["wrong"] else "0",
            _ms(server.get("queue_ms")),
            _ms(server.get("compute_infer_ms")),
            "-" if server.get("avg_batch") is None else f"{server['avg_batch']:.2f}",
        ]
        table.add_row(*cells)
    return table


def _behind(step: dict, max_outstanding: int) -> str:
    lag = _ms((step["schedule_lag_ms"] or {}).get("p99"))
    sent = f"sent {step['achieved_rate']:.1f}/s of {step['offered_rate']:g}/s"
    if step["capped"]:  # requests piled up at the server: it, not the generator, set the pace
        return (
            f"[yellow]{step['label']}: offered rate not delivered[/] ({sent}): {step['capped']} sends "
            f"waited for --max-outstanding {max_outstanding}; schedule lag p99 {lag} ms"
        )
    return (
        f"[yellow]{step['label']}: the generator fell behind its schedule[/] (lag p99 {lag} ms, {sent}): "
        "it may be the bottleneck"
    )


def summary_lines(report: dict) -> list[str]:
    """The lines printed under the table: verification, errors, generator, SLO verdict."""
    lines = [f"verification: {escape(report['verification']['summary'])}"]
    totals = report["totals"]
    if totals["wrong"]:
        first = totals["wrong_examples"][0]
        lines.append(
            f"[red]wrong answers: {totals['wrong']} of {totals['verified']} verified[/] "
            f"(first: request {first['request']}, golden rows {first['rows']}, "
            f"max |error| {first['max_abs_err']})"
        )
    for s in report["steps"]:
        if s["errors"]:
            lines.append(f"errors at {s['label']}: {error_kinds(s['errors'])}")
        if s.get("kept_up") is False:
            lines.append(_behind(s, report["settings"]["max_outstanding"]))
    generator = report.get("generator") or {}
    if generator.get("cpu_ms_per_request") is not None:
        request_kb = (generator.get("request_bytes") or 0) / 1024
        lines.append(
            f"generator: {generator.get('transport')}; "
            f"{generator['cpu_ms_per_request']:.3f} ms CPU and {request_kb:,.1f} KB per request"
        )
    capacity = report.get("generator_capacity")
    if capacity:
        line = (
            f"generator capacity: {capacity['inferences_per_s']:.0f} inferences/s "
            f"({capacity['requests_per_s']:.0f} req/s at {capacity['at']}, identity model)"
        )
        share = report["generator"].get("model_share_of_capacity")
        if share is not None:
            line += f"; the model's best throughput is {share:.0%} of it"
            if share > 0.5:
                line += " [yellow](the generator may be limiting: run it from another machine)[/]"
        lines.append(line)
    for r in report.get("replicas") or []:
        latency = r["service_ms"]
        lines.append(
            f"replica {r['url']}: {r['responses']} answers"
            + (f", p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms" if latency else "")
            + (f", errors {error_kinds(r['errors'])}" if r["errors"] else "")
            + (f", {r['failovers']} sent on to another replica" if r["failovers"] else "")
        )
    slo = report["slo"]
    if any(v is not None for v in slo["objectives"].values()):
        objectives = ", ".join(f"{k}={v:g}" for k, v in slo["objectives"].items() if v is not None)
        verdict = "[green]passed[/]" if slo["passed"] else f"[red]missed[/] ({len(slo['violations'])})"
        lines.append(f"SLO ({objectives}): {verdict}")
    return lines
