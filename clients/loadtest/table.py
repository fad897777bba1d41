"""The load test's summary for a terminal: one table row per step plus the run's totals, and the
lines under it (verification, errors, the server's time per composing model, the verdict)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from cnn_deploy_core.judge import error_kinds


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_table(report: dict) -> Table:
    """One row per step; two-line headers keep it within 120 columns."""
    rate = report["mode"] == "rate"
    table = Table(
        title=f"load test: {report['model']} v{report['version']} ({report['protocol']}, "
        f"batch {report['batch_size']})",
        caption="latency: ms at the client, from the scheduled send in rate mode (svc: from the actual "
        "send), over the stable windows; p99 all: every request after warm-up, failures at their time to "
        "failure (what --p99-ms judges); errors: every request after warm-up; srv: Triton's statistics, "
        "ms per request and inferences per execution",
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
        "p99\nall",
        *(["svc\np50", "svc\np99"] if rate else []),
        "sam-\nples",
        "re-\nquests",
        "errors",
        *(["drop-\nped"] if rate else []),
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
        errors = sum((s.get("all_errors") or {}).values())
        cells = [s["label"], "yes" if s["stable"] else "[yellow]no[/]", f"{s['inferences_per_s']:.1f}"]
        if report["batch_size"] > 1:
            cells.append(f"{s['requests_per_s']:.1f}")
        if rate:
            cells += [f"{s['achieved_rate']:.1f}", _ms((s["schedule_lag_ms"] or {}).get("p99"))]
        service = s.get("service_ms") or {}
        cells += [
            *(_ms(lat.get(k)) for k in ("p50", "p90", "p99", "max")),
            _ms((s.get("latency_all_ms") or {}).get("p99")),
            *([_ms(service.get("p50")), _ms(service.get("p99"))] if rate else []),
            str(s.get("samples", "-")),
            str(s.get("all_requests", "-")),
            f"[red]{errors}[/]" if errors else "0",
            *([f"[yellow]{s['dropped']}[/]" if s.get("dropped") else "0"] if rate else []),
            str(s["verified"]),
            f"[red]{s['wrong']}[/]" if s["wrong"] else "0",
            _ms(server.get("queue_ms")),
            _ms(server.get("compute_infer_ms")),
            "-" if server.get("avg_batch") is None else f"{server['avg_batch']:.2f}",
        ]
        table.add_row(*cells)
    table.add_row(*_totals_row(report, columns), end_section=True)
    return table


def _totals_row(report: dict, columns: list[str]) -> list[str]:
    """The whole run, warm-up included: what the per-step rows cannot hide."""
    totals = report["totals"]
    errors = sum(totals["errors"].values())
    cells = dict.fromkeys(columns, "")
    cells["load"] = "[bold]run total[/]"
    cells["re-\nquests"] = str(totals["requests"])
    cells["errors"] = f"[red]{errors}[/]" if errors else "0"
    cells["veri-\nfied"] = str(totals["verified"])
    cells["wrong"] = f"[red]{totals['wrong']}[/]" if totals["wrong"] else "0"
    if "drop-\nped" in cells:
        cells["drop-\nped"] = str(totals.get("dropped", 0))
    return [cells[c] for c in columns]


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
    """The lines printed under the table: verification, errors, generator, replicas, the verdict and
    each problem the judge found."""
    verification = report["verification"]
    if verification.get("enabled"):
        lines = [f"verification: {escape(verification['summary'])}"]
    else:
        lines = [f"[yellow]answers NOT VERIFIED[/]: {escape(verification.get('reason') or 'disabled')}"]
    totals = report["totals"]
    lines.append(
        f"run total (warm-up included): {totals['requests']} requests, "
        f"{sum(totals['errors'].values())} failed ({error_kinds(totals['errors'])}), "
        f"{totals['verified']} verified, {totals['wrong']} wrong"
        + (f", {totals.get('dropped', 0)} dropped (never sent)" if report["mode"] == "rate" else "")
    )
    if totals["wrong"]:
        first = totals["wrong_examples"][0]
        lines.append(
            f"[red]wrong answers: {totals['wrong']} of {totals['verified']} verified[/] "
            f"(first: request {first['request']}, golden rows {first['rows']}, "
            f"max |error| {first['max_abs_err']})"
        )
    for s in report["steps"]:
        if s.get("all_errors"):
            lines.append(f"errors at {s['label']} (after warm-up): {error_kinds(s['all_errors'])}")
        if s.get("dropped"):
            lines.append(
                f"[yellow]{s['label']}: {s['dropped']} requests dropped[/]: scheduled before the step "
                "ended and never sent (every slot of --max-outstanding was busy)"
            )
        lines += composing_lines(s)
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
    n = len(slo["violations"])
    verdict = "[green]passed[/]" if slo["passed"] else f"[red]failed[/] ({n} problem{'' if n == 1 else 's'})"
    lines.append(f"objectives ({describe_objectives(slo['objectives'])}): {verdict}")
    lines += [f"  [red]-[/] {escape(line)}" for line in slo["violations"]]
    return lines


def describe_objectives(o: dict) -> str:
    """The objectives a run was judged by, in words (a report's `slo.objectives`)."""
    rate, wrong, dropped = o.get("max_error_rate", 0), o.get("max_wrong", 0), o.get("max_dropped", 0)
    parts = [
        "no failed request" if not rate else f"error rate <= {rate:g}",
        "no wrong answer" if not wrong else f"<= {wrong} wrong",
    ]
    if o.get("allowed_errors"):
        parts.append(f"{', '.join(o['allowed_errors'])} allowed")
    if o.get("verify", True):
        parts.append("every answer verified" if o.get("every_answer_verified", True) else "answers verified")
    if dropped is not None:
        parts.append("none dropped" if not dropped else f"<= {dropped} dropped")
    if not o.get("tolerate_replica_loss"):
        parts.append("every replica answering")
    if o.get("p99_ms") is not None:
        parts.append(f"p99 <= {o['p99_ms']:g} ms")
    return ", ".join(parts)


def composing_lines(step: dict) -> list[str]:
    """An image ensemble's time per composing model (preprocessing vs network), as perf_analyzer
    shows it: where an image request's time goes inside the server."""
    lines = []
    for model, b in (step.get("composing") or {}).items():
        lines.append(
            f"  {step['label']} {model}: {b['requests']} requests, queue {_ms(b['queue_ms'])} ms, "
            f"compute input {_ms(b['compute_input_ms'])} ms, infer {_ms(b['compute_infer_ms'])} ms, "
            f"output {_ms(b['compute_output_ms'])} ms"
            + ("" if b.get("avg_batch") is None else f", batch {b['avg_batch']:.2f}")
        )
    return lines
