"""What a load test is asked to do (LoadTestConfig); it checks itself. What the run must meet is
cnn_deploy_core.judge.Objectives.

The dataclass defaults are the load test's only defaults: the CLI reads its own from them (and the
objectives' from Objectives).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from clients import LoadTestError
from clients.endpoints import parse_urls
from clients.tls import NO_TLS, TlsOptions, check_schemes

MODES = ("concurrency", "rate")
ARRIVALS = ("constant", "poisson")
INPUTS = ("tensor", "image")  # image: encoded photos to <model>_image, preprocessed by the server
SHARED_MEMORY = ("none", "system")
STABLE_WINDOWS = 3  # perf_analyzer's rule: the last 3 windows must agree


@dataclass(frozen=True)
class LoadTestConfig:
    url: str  # one URL, or several comma-separated: replicas of one repository
    model: str
    mode: str = "concurrency"
    levels: tuple[float, ...] = (1, 2, 4, 8)  # concurrencies, or request rates in req/s
    arrival: str = "constant"  # rate mode: "constant" or "poisson" inter-arrival times
    batch_size: int = 1
    warmup_s: float = 2.0
    window_s: float = 3.0
    stability: float = 0.10  # fraction of the mean
    max_windows: int = 10
    max_step_s: float = 60.0
    max_outstanding: int = 64  # rate mode: cap on requests in flight
    verify_fraction: float = 1.0
    repository: Path | None = None  # golden sets; None: model_repository in the project
    golden: Path | None = None  # overrides <repository>/<model>/<version>/golden.npz
    timeout: float = 30.0  # per request, seconds
    seed: int = 0
    input: str = "tensor"
    shared_memory: str = "none"  # system: inputs and outputs through system shared memory (gRPC)
    admin_key: str | None = field(default=None, repr=False)  # shared memory is an admin API; no repr
    min_samples: int = 200  # latency samples a step's percentiles rest on, at least (time allowing)
    failover: bool = True  # several URLs: an unreachable replica's request goes once to another
    verify: bool = True  # False (--no-verify): answers are not checked, and the report says so
    tls: TlsOptions = NO_TLS  # grpcs:// and https://: the CA, and a client certificate for mutual TLS
    api_key: str | None = field(default=None, repr=False)  # keyed inference: never in a report or repr

    def __post_init__(self) -> None:
        check_schemes(self.tls, [e.ssl for e in parse_urls(self.url)])  # a bad URL raises too
        if self.mode not in MODES:
            raise LoadTestError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.arrival not in ARRIVALS:
            raise LoadTestError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if not self.levels or any(not v > 0 for v in self.levels):
            raise LoadTestError(f"--{self.mode} values must be positive, got {list(self.levels)}")
        if self.mode == "concurrency" and any(v != int(v) for v in self.levels):
            raise LoadTestError(f"--concurrency values must be whole numbers, got {list(self.levels)}")
        if self.batch_size < 1:
            raise LoadTestError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.window_s <= 0 or self.warmup_s < 0 or self.timeout <= 0:
            raise LoadTestError("--window-s and --timeout must be > 0, --warmup-s >= 0")
        if not 0 < self.stability <= 1:
            raise LoadTestError(f"--stability must be in (0, 100] percent, got {self.stability * 100:g}")
        if self.max_windows < STABLE_WINDOWS:
            raise LoadTestError(
                f"--max-windows must be >= {STABLE_WINDOWS} (stability compares the last "
                f"{STABLE_WINDOWS}), got {self.max_windows}"
            )
        needed = self.warmup_s + STABLE_WINDOWS * self.window_s
        if self.max_step_s < needed:
            raise LoadTestError(
                f"--max-step-s {self.max_step_s:g} is shorter than warm-up + "
                f"{STABLE_WINDOWS} windows ({needed:g} s): no step could finish"
            )
        if self.max_outstanding < 1:
            raise LoadTestError(f"--max-outstanding must be >= 1, got {self.max_outstanding}")
        if not 0 <= self.verify_fraction <= 1:
            raise LoadTestError(f"--verify-fraction must be in [0, 1], got {self.verify_fraction}")
        if self.input not in INPUTS:
            raise LoadTestError(f"--input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        if self.shared_memory not in SHARED_MEMORY:
            raise LoadTestError(f"--shared-memory must be one of {', '.join(SHARED_MEMORY)}")
        if self.shared_memory == "system" and self.protocol != "grpc":
            raise LoadTestError("--shared-memory system needs a grpc:// URL")
        if self.min_samples < 1:
            raise LoadTestError(f"--min-samples must be >= 1, got {self.min_samples}")

    @property
    def protocol(self) -> str:
        return parse_urls(self.url)[0].protocol

    def label(self, level: float) -> str:
        return f"c={int(level)}" if self.mode == "concurrency" else f"{level:g}/s"


def default(name: str, cls: type = LoadTestConfig):
    """A field's default, for the CLI's own defaults and help texts."""
    (f,) = [f for f in fields(cls) if f.name == name]
    if f.default is MISSING:
        raise KeyError(f"{cls.__name__}.{name} has no default")
    return f.default
