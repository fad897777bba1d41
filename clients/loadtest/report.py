"""What a load test writes: the report (its typed schema lives in cnn_deploy_core.loadtest_report) as
JSON, CSV and PNG files, readable by their owner and group only (0640: a report names servers and
models; secrets are redacted before it is built, see cnn_deploy_core/secrets.py).

The writers take the report's dict (`LoadTestReport.to_dict()`, i.e. the JSON), so a saved report
can be rendered again without rerunning. numpy, matplotlib (Agg) and rich only. The table and the
lines under it are in table.py.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from clients.loadtest.table import summary_lines, summary_table
from cnn_deploy_core.fsutil import atomic_write_bytes, ensure_writable_dir
from cnn_deploy_core.judge import error_kinds
from cnn_deploy_core.loadtest_report import (  # re-exported: the schema lives in the core
    SCHEMA_VERSION,
    Latency,
    LoadTestReport,
    ReportSchemaError,
    ServerBreakdown,
    SloResult,
    StepResult,
    Totals,
    flatten_statistics,
)

__all__ = [  # the schema's dataclasses, re-exported for the callers that imported them from here
    "SCHEMA_VERSION",
    "Latency",
    "LoadTestReport",
    "ReportSchemaError",
    "ServerBreakdown",
    "SloResult",
    "StepResult",
    "Totals",
    "error_kinds",
    "flatten_statistics",
    "summary_lines",
    "summary_table",
    "to_csv",
    "to_json",
    "to_png",
    "write_reports",
]


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
    "all_requests",
    "all_errors",
    "all_error_rate",
    "p99_all_ms",
    "dropped",
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
    row["all_errors"] = sum((step.get("all_errors") or {}).values())
    row["p99_all_ms"] = (step.get("latency_all_ms") or {}).get("p99")
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


REPORT_MODE = 0o640  # owner and group: never world-readable


def write_private(path: Path, data: bytes, mode: int = REPORT_MODE) -> None:
    """Atomically and with `mode` from the start: never readable by others, even for a moment."""
    atomic_write_bytes(path, data, mode)


def write_reports(report: dict, output: Path) -> ReportPaths:
    """JSON, CSV and PNG in `output`, each written atomically, mode 0640."""
    paths = ReportPaths.for_model(output, report["model"])
    ensure_writable_dir(output)
    write_private(paths.json, to_json(report).encode())
    write_private(paths.csv, to_csv(report).encode())
    write_private(paths.png, to_png(report))
    return paths
