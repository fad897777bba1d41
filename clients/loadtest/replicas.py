"""Several replicas of one repository behind one transport: round-robin with the client's failover
rule (an unreachable replica is left out for a cooldown and its request goes once to another one;
inference is idempotent); timeouts and other errors are counted, never retried."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from clients import ClientError
from clients.endpoints import RoundRobin
from clients.errors import safe_to_resend


@dataclass
class ReplicaFigures:
    """One replica's share of a run (all steps, warm-up included)."""

    url: str
    responses: int = 0
    errors: Counter = field(default_factory=Counter)
    failovers: int = 0  # requests it could not take that went to another replica
    in_flight: int = 0
    service_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        latency = np.asarray(self.service_s) * 1e3
        return {
            "url": self.url,
            "responses": self.responses,
            "errors": dict(self.errors),
            "failovers": self.failovers,
            "service_ms": {"p50": float(np.median(latency)), "p99": float(np.percentile(latency, 99))}
            if len(latency)
            else None,
        }


class ReplicaSet:
    """Transports to replicas of one repository, used round-robin with health-aware failover."""

    def __init__(self, transports: list, urls: list[str], *, cooldown: float = 5.0, failover: bool = True):
        self.transports, self.failover = transports, failover
        self.figures = [ReplicaFigures(url) for url in urls]
        self.description = (
            f"{len(transports)} replicas round-robin"
            + (", failover once to another replica when one is unreachable" if failover else ", no failover")
            + f"; {transports[0].description}"
        )
        self._rotation = RoundRobin(len(transports), cooldown)

    async def open(self) -> None:
        for transport in self.transports:
            await transport.open()

    async def _send(self, i: int, item: int, slot: int) -> tuple[str, bytes]:
        figures = self.figures[i]
        figures.in_flight += 1
        sent = time.perf_counter()
        try:
            result = await self.transports[i].send(item, slot)
        except ClientError as e:
            figures.errors[type(e).__name__] += 1
            if safe_to_resend(e):
                self._rotation.failed(i)
            raise
        finally:
            figures.in_flight -= 1
        figures.service_s.append(time.perf_counter() - sent)
        figures.responses += 1
        self._rotation.succeeded(i)
        return result

    async def send(self, item: int, slot: int) -> tuple[str, bytes]:
        i = self._rotation.pick()
        try:
            return await self._send(i, item, slot)
        except ClientError as e:
            if not (self.failover and safe_to_resend(e)):
                raise
        self.figures[i].failovers += 1
        return await self._send(self._rotation.pick(skip=(i,)), item, slot)

    async def close(self) -> None:
        for transport in self.transports:
            await transport.close()
