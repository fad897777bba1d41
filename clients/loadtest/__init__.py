"""The load generator: concurrency sweeps and request rates, with every answer checked.

    from clients.loadtest import LoadTestConfig, run_loadtest
    report = run_loadtest(LoadTestConfig(url="grpc://localhost:8001", model="resnet18"))

`config` (what to do, the only defaults), `workload` (what is sent, how answers are checked),
`runner` (the measurement), `report` (results and their JSON/CSV/PNG/table), `cli`.
"""

from clients import LoadTestError
from clients.loadtest.config import ARRIVALS, MODES, LoadTestConfig, Slo
from clients.loadtest.runner import Progress, run_loadtest, run_loadtest_async
from clients.loadtest.workload import Workload, build_workload

__all__ = [
    "ARRIVALS",
    "MODES",
    "LoadTestConfig",
    "LoadTestError",
    "Progress",
    "Slo",
    "Workload",
    "build_workload",
    "run_loadtest",
    "run_loadtest_async",
]
