"""Before the load: what the model takes, what is sent and how it is checked, the transport, and
the reader of Triton's statistics (the model's, and for an ensemble each composing model's)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

from clients import BadInputError, ClientError, LoadTestError
from clients.aio import AsyncTritonClient
from clients.endpoints import parse_urls
from clients.keys import ADMIN_KEY_ENV, api_headers, from_env, local_server_key
from clients.loadtest.config import LoadTestConfig
from clients.loadtest.replicas import ReplicaSet
from clients.loadtest.transport import GrpcTransport, HttpTransport, Payloads
from clients.loadtest.workload import Workload, build_workload
from clients.model_info import ModelInfo
from cnn_deploy_core.console import stderr
from cnn_deploy_core.loadtest_report import flatten_statistics

StatsFn = Callable[[], Awaitable[dict[str, dict[str, int]] | None]]
NOT_VERIFIED = "--no-verify was given"


def _payloads(model: str, version: str, info: ModelInfo, workload: Workload) -> Payloads:
    return Payloads(
        model=model,
        version=version,
        input_name=info.input_name,
        datatype=info.input_datatype,
        output_name=info.output_name,
        output_shape=info.output_dims,
        batches=workload.batches,
    )


def _warn(message: str) -> None:
    stderr.print(message, markup=False, highlight=False)


def admin_key(config: LoadTestConfig, endpoint) -> str | None:
    """--admin-key(-file), else $TRITON_ADMIN_KEY (to loopback or over TLS only: clients.keys), else
    the key of the local server at this endpoint."""
    if config.admin_key:
        return config.admin_key
    return from_env(ADMIN_KEY_ENV, [endpoint], warn=_warn) or local_server_key(endpoint)


def make_transport(config: LoadTestConfig, payloads: Payloads, slots: int):
    """One transport, or with several URLs a ReplicaSet of one per replica."""
    endpoints = parse_urls(config.url)
    if len(endpoints) == 1:
        return _transport(config, endpoints[0], payloads, slots)
    transports = [_transport(config, e, payloads, slots) for e in endpoints]
    return ReplicaSet(transports, [str(e) for e in endpoints], failover=config.failover)


def _transport(config: LoadTestConfig, endpoint, payloads: Payloads, slots: int):
    if endpoint.protocol == "grpc":
        return GrpcTransport(
            endpoint.address,
            payloads,
            slots=slots,
            timeout=config.timeout,
            shared_memory=config.shared_memory == "system",
            admin_key=admin_key(config, endpoint) if config.shared_memory == "system" else None,
            ssl=endpoint.ssl,
            tls=config.tls,
            headers=api_headers(config.api_key, "grpc"),
        )
    scheme = "https" if endpoint.ssl else "http"
    return HttpTransport(
        f"{scheme}://{endpoint.address}",
        payloads,
        slots=slots,
        timeout=config.timeout,
        ssl_context=config.tls.ssl_context() if endpoint.ssl and config.tls.given else None,
        headers=api_headers(config.api_key, "http"),
    )


def checked(workload: Workload, config: LoadTestConfig) -> Workload:
    """Verification is on unless `--no-verify` says otherwise: a model whose answers cannot be
    checked is an error, not a run that silently checks nothing."""
    if not config.verify:
        return replace(workload, check="none", reason=NOT_VERIFIED)
    if not workload.enabled:
        raise LoadTestError(
            f"{config.model}: its answers cannot be verified ({workload.reason}); give --golden FILE, "
            "or --no-verify to measure without checking"
        )
    return workload


async def prepare(
    client: AsyncTritonClient, config: LoadTestConfig
) -> tuple[Workload, str, Payloads, ModelInfo]:
    """The workload (checked), the served version and the prebuilt requests."""
    info = await client.model_info(config.model)  # ModelNotFoundError / ServerUnavailableError
    if info.max_batch_size < 1:
        raise LoadTestError(
            f"{config.model}: the model has no batch dimension (max_batch_size 0); "
            "the load test needs a batching model"
        )
    if config.batch_size > info.max_batch_size:
        raise BadInputError(
            f"{config.model}: batch size {config.batch_size} exceeds the model's "
            f"max_batch_size {info.max_batch_size}"
        )
    if info.latest_version is None:
        raise LoadTestError(f"{config.model}: the server reports no version for it")
    tensor = None
    if info.input_datatype == "BYTES":  # an image ensemble: the tensor model's golden set applies
        tensor = await client.model_info(config.model.removesuffix("_image"))
    workload = build_workload(
        info,
        batch_size=config.batch_size,
        seed=config.seed,
        golden=config.golden,
        repository=config.repository,
        tensor=tensor,
    )
    workload = checked(workload, config)
    # An ensemble has one version and follows its model's default version: ask for the default.
    version = "" if tensor is not None else info.latest_version
    return workload, info.latest_version, _payloads(config.model, version, info, workload), info


def statistics_reader(
    client: AsyncTritonClient, config: LoadTestConfig, version: str, composing: tuple[str, ...] = ()
) -> tuple[StatsFn, list[AsyncTritonClient]]:
    """A reader of Triton's statistics for the model (and each composing model of an ensemble),
    every replica's summed: a round-robin client would ask a different replica at each window
    boundary, and differences between two servers' counters mean nothing. Also returns the extra
    clients it opened, for the caller to close."""
    endpoints = parse_urls(config.url)
    per_replica = (
        [client]
        if len(endpoints) == 1
        else [
            AsyncTritonClient(
                str(e),
                timeout=config.timeout,
                retries=0,
                tls=config.tls,
                headers=api_headers(config.api_key, e.protocol),
            )
            for e in endpoints
        ]
    )
    models = [(config.model, version), *((m, "") for m in composing)]

    async def one(c: AsyncTritonClient, model: str, v: str) -> dict[str, int]:
        # Every loaded version of a composing model: the ensemble may call any of them.
        entries = await c.model_statistics(model, v)
        flats = [flatten_statistics(e) for e in entries] or [flatten_statistics({})]
        return {k: sum(f[k] for f in flats) for k in flats[0]}

    async def stats() -> dict[str, dict[str, int]] | None:
        try:
            results = await asyncio.gather(*(one(c, m, v) for c in per_replica for m, v in models))
        except ClientError:
            return None  # a replica is down: no breakdown; the client-side numbers still stand
        summed: dict[str, dict[str, int]] = {}
        for (model, _), flat in zip([mv for _ in per_replica for mv in models], results, strict=True):
            into = summed.setdefault(model, dict.fromkeys(flat, 0))
            for k, v in flat.items():
                into[k] += v
        return summed

    return stats, [c for c in per_replica if c is not client]
