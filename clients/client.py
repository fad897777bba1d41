"""One client for Triton over gRPC or HTTP, picked by URL scheme, in asyncio and sync flavours.

    with TritonClient("grpc://localhost:8001") as client:
        client.wait_until_ready("resnet50")
        print(client.classify("resnet50", ["cat.jpg"], top_k=5))

The code lives by job: :mod:`clients.endpoints` (URLs, replicas, round-robin), :mod:`clients.errors`
(the one error classifier), :mod:`clients.aio` (the asyncio client, the one implementation) and
:mod:`clients.sync` (the same client run on a private event loop). This module re-exports the
public names, the import path the rest of the project uses.
"""

from clients.aio import (
    PREPROCESS_CHOICES,
    AsyncTritonClient,
    check_batch,
    chunks,
    encoded,
    load_images,
)
from clients.endpoints import (
    DEFAULT_PORTS,
    DEFAULT_URL,
    Endpoint,
    RoundRobin,
    add_url_argument,
    describe,
    parse_url,
    parse_urls,
    url_from_args,
)
from clients.errors import classify
from clients.sync import TritonClient

translate = classify  # the older public name, kept for callers that import it

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_URL",
    "PREPROCESS_CHOICES",
    "AsyncTritonClient",
    "Endpoint",
    "RoundRobin",
    "TritonClient",
    "add_url_argument",
    "check_batch",
    "chunks",
    "classify",
    "describe",
    "encoded",
    "load_images",
    "parse_url",
    "parse_urls",
    "translate",
    "url_from_args",
]
