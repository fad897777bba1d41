"""The load generator: concurrency sweeps and request rates, with every answer checked.

    from clients.loadtest import LoadTestConfig, run_loadtest
    report = run_loadtest(LoadTestConfig(url="grpc://localhost:8001", model="resnet18"))

`config` (what to do, the only defaults), `workload` (what is sent, how answers are checked),
`prepare` (model, workload, transport, statistics reader), `transport` and `replicas` (the wire),
`verifier` (answers checked off the timing path), `measure` (windows, stability, a step's
figures), `runner` (the run), `verdict` (the exit code of what cnn_deploy_core.judge found),
`report` and `table` (the files and the terminal summary), `cli`.
The report's typed schema is :mod:`cnn_deploy_core.loadtest_report`, which the tuner, drills and
benchmarks read; whether a run was sound is :mod:`cnn_deploy_core.judge`'s to say.
"""

from clients import LoadTestError
from clients.loadtest.config import ARRIVALS, MODES, LoadTestConfig
from clients.loadtest.runner import Progress, run_loadtest, run_loadtest_async
from clients.loadtest.workload import Workload, build_workload
from cnn_deploy_core.judge import Objectives

__all__ = [
    "ARRIVALS",
    "MODES",
    "LoadTestConfig",
    "LoadTestError",
    "Objectives",
    "Progress",
    "Workload",
    "build_workload",
    "run_loadtest",
    "run_loadtest_async",
]
