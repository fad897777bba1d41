"""How the load was generated, and with `--self-test` how much the generator itself can generate
(a closed loop against the identity model: the client's capacity, a lower bound on a shared machine)."""

from __future__ import annotations

import numpy as np

from clients.loadtest.config import LoadTestConfig
from cnn_deploy_core.layout import IDENTITY_MODEL


def describe_generator(config: LoadTestConfig, main, self_test) -> dict:
    """How the load was generated and, with a self-test, how much the generator can generate."""
    steps = [s for s in main.steps if s.generator_cpu_ms_per_request is not None]
    info: dict = {
        "engine": "asyncio, one event loop; answers checked in a separate verifier process",
        "transport": main.transport.description,
        "shared_memory": config.shared_memory,
        "retry_during_measurement": False,
        "request_bytes": float(np.mean(main.request_bytes)) if main.request_bytes else None,
        "cpu_ms_per_request": float(np.mean([s.generator_cpu_ms_per_request for s in steps]))
        if steps
        else None,
        "capacity": None,
        "self_test": None,
    }
    if self_test is None:
        return info
    best = max(self_test.steps, key=lambda s: s.inferences_per_s, default=None)
    if best is not None and best.responses:
        # Client and server share this machine's cores here: a lower bound of the client's capacity.
        info["capacity"] = {
            "model": IDENTITY_MODEL,
            "inferences_per_s": best.inferences_per_s,
            "requests_per_s": best.requests_per_s,
            "at": best.label,
        }
        if main is not self_test:
            info["model_share_of_capacity"] = (
                max(s.inferences_per_s for s in main.steps) / best.inferences_per_s
            )
    totals = self_test.totals
    info["self_test"] = {
        "model": IDENTITY_MODEL,
        "verification": self_test.workload.describe(config.verify_fraction)["summary"],
        "verified": totals.verified,
        "wrong": totals.wrong,
        "errors": dict(totals.errors),
        "steps": [
            {
                "label": s.label,
                "inferences_per_s": s.inferences_per_s,
                "requests_per_s": s.requests_per_s,
                "stable": s.stable,
                "p99_ms": s.latency_ms.p99 if s.latency_ms else None,
            }
            for s in self_test.steps
        ],
    }
    return info
