"""Where the servers are: URLs (the scheme picks gRPC or HTTP), several of them for replicas, and
the one round-robin with passive health checking that the client and the load generator share."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from clients import ClientError
from clients.tls import add_tls_arguments

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
DEFAULT_URL = "grpc://127.0.0.1:8001"  # `python -m serving up` binds to loopback


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "grpc" | "http"
    host: str
    port: int
    ssl: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}{'s' if self.ssl else ''}://{self.address}"


def parse_url(url: str) -> Endpoint:
    """`grpc://host:8001`, `http://host:8000` (and grpcs/https); the scheme picks the protocol."""
    parsed = urlparse(url if "://" in url else f"//{url}")
    scheme = parsed.scheme.lower()
    protocols = {
        "grpc": ("grpc", False),
        "grpcs": ("grpc", True),
        "http": ("http", False),
        "https": ("http", True),
    }
    if scheme not in protocols:
        raise ClientError(f"unsupported URL {url!r}: use grpc://HOST:PORT or http://HOST:PORT")
    protocol, ssl = protocols[scheme]
    try:
        port = parsed.port or DEFAULT_PORTS[protocol]
    except ValueError:
        raise ClientError(f"invalid port in URL {url!r}") from None
    if not parsed.hostname:
        raise ClientError(f"no host in URL {url!r}")
    return Endpoint(protocol, parsed.hostname, port, ssl)


def parse_urls(urls: str | Sequence[str]) -> list[Endpoint]:
    """One or more URLs (a list, or comma-separated), all of one protocol, each once."""
    items = [urls] if isinstance(urls, str) else list(urls)
    parts = [u.strip() for item in items for u in item.split(",") if u.strip()]
    if not parts:
        raise ClientError("no server URL given")
    endpoints = [parse_url(u) for u in parts]
    if len({e.protocol for e in endpoints}) > 1:
        raise ClientError(
            f"all URLs must use one protocol (grpc or http), got {', '.join(map(str, endpoints))}"
        )
    if len(set(endpoints)) < len(endpoints):
        raise ClientError(f"a URL is given twice: {', '.join(map(str, endpoints))}")
    return endpoints


def add_url_argument(parser) -> None:
    """`--url`, repeatable (or comma-separated): the replicas a command spreads its calls over."""
    parser.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help=f"grpc://HOST:PORT or http://HOST:PORT (default {DEFAULT_URL}); repeat it, or separate "
        "with commas, for replicas of one repository: round-robin with failover; grpcs:// for TLS",
    )
    add_tls_arguments(parser)  # wherever a URL is taken, so is how to trust it


def url_from_args(values: list[str] | None) -> str:
    """What `--url` gave, as one comma-separated string (validated)."""
    url = ",".join(values or [DEFAULT_URL])
    parse_urls(url)
    return url


class RoundRobin:
    """Round-robin over n endpoints with passive health checking: one that failed is skipped for
    `cooldown` seconds, then tried again; when all are down, the one back soonest is the best bet.
    Shared by the client and the load generator's ReplicaSet, so both fail over alike."""

    def __init__(self, n: int, cooldown: float):
        self.cooldown = cooldown
        self.down_until = [0.0] * n  # monotonic time until which an endpoint is skipped
        self.position = 0

    def pick(self, skip: set[int] | tuple[int, ...] = ()) -> int:
        """The next endpoint, passing over those in `skip` and those down (unless all are)."""
        n, now = len(self.down_until), time.monotonic()
        order = [(self.position + k) % n for k in range(n)]
        fresh = [i for i in order if i not in skip] or order
        healthy = [i for i in fresh if self.down_until[i] <= now]
        i = healthy[0] if healthy else min(fresh, key=lambda j: self.down_until[j])
        self.position = (i + 1) % n
        return i

    def failed(self, i: int) -> None:
        self.down_until[i] = time.monotonic() + self.cooldown

    def succeeded(self, i: int) -> None:
        self.down_until[i] = 0.0

    def healthy(self) -> list[int]:
        now = time.monotonic()
        return [i for i, until in enumerate(self.down_until) if until <= now]


def describe(endpoints: Sequence[Endpoint]) -> str:
    return ", ".join(map(str, endpoints))
