"""The one error classifier: any failure of a call to Triton -> one typed :mod:`clients` error.

Used by the client (:mod:`clients.aio`), the load generator's transports and the failure drills, so
all three count and retry alike. It is keyed on status codes (gRPC's `StatusCode`, the HTTP status,
the Python exception type), not on message text, with two exceptions where Triton's code alone is
ambiguous: a request the queue policy refused (queue full or timed out in the queue: sent as
UNAVAILABLE / 503, like an unreachable server) and a model that is known but not loaded (sent as a
plain error).

What each class means for a retry:

- :class:`ServerUnavailableError`: the request never reached a server (refused, DNS, connect
  timeout) or the server went away under it. Safe to send again, to another replica too
  (inference is idempotent).
- :class:`RequestTimeoutError`: sent, and no answer within the timeout. Never retried: the request
  may still be running, and a retry would multiply the load on a server already too slow.
- :class:`ServerOverloadedError`: the server's queue policy refused it (its queue was full, or it
  waited in the queue past the policy's timeout). Never retried, never failed over: load shed by a
  queue policy is a failure to count, not a server to route around.
- :class:`ModelNotFoundError`: the server does not know the name. :class:`ModelNotReadyError`: it
  knows the model but cannot serve it (loading, failed to load, version not served).
- :class:`BadInputError`: the server rejected the request (shape, datatype, batch size).
- :class:`clients.keys.KeyRequiredError`: the API needs a key (Triton's restricted APIs); not retried.
- :class:`InferenceError`: anything else.
"""

from __future__ import annotations

import asyncio
import re

from clients import (
    BadInputError,
    ClientError,
    InferenceError,
    LoadTestError,
    ModelNotFoundError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerOverloadedError,
    ServerUnavailableError,
)
from clients.keys import KeyRequiredError, restricted_error

__all__ = [
    "BadInputError",
    "ClientError",
    "InferenceError",
    "KeyRequiredError",
    "LoadTestError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "RequestTimeoutError",
    "ServerOverloadedError",
    "ServerUnavailableError",
    "classify",
    "classify_status",
    "safe_to_resend",
]

# gRPC status codes by name; HTTP statuses as their numbers in text: one table for both.
_UNAVAILABLE = {"UNAVAILABLE", "502", "503"}
_TIMEOUT = {"DEADLINE_EXCEEDED", "504"}
_BAD_INPUT = {"INVALID_ARGUMENT", "OUT_OF_RANGE", "FAILED_PRECONDITION", "400", "413", "422"}
_NOT_FOUND = {"NOT_FOUND", "404"}
_OVERLOADED = {"RESOURCE_EXHAUSTED", "429"}
# Triton's wording for the states its codes do not tell apart (checked against 2.51's messages):
# its queue policy refuses a request when the queue is full or when it waited past the timeout.
_SHED = ("exceeds maximum queue size", "request timeout expired")
_NOT_LOADED = ("is not ready", "not at ready state", "no available versions", "unavailable version")
# A version the server does not serve counts as "not ready", as the client's own version check says.
_VERSION_MISSING = re.compile(r"version \S+ is not found")


def safe_to_resend(error: ClientError) -> bool:
    """Whether the failed request may be sent again (to this or another replica): only when it
    never reached a server, or the server went away under it."""
    return isinstance(error, ServerUnavailableError)


def classify_status(
    code: str | int | None,
    message: str,
    target: object,
    model: str | None = None,
    *,
    connected: bool | None = None,
) -> ClientError:
    """A server's answer that carried an error: `code` is a gRPC status name ("UNAVAILABLE",
    "StatusCode.UNAVAILABLE") or an HTTP status (404, "404"); `connected=False` says the
    connection to `target` was never established (a gRPC channel still connecting)."""
    code = str(code or "").removeprefix("StatusCode.").upper()
    lowered = message.lower()
    if key_error := restricted_error(message, target):  # gRPC sends it as UNAVAILABLE: not "unreachable"
        return key_error
    if any(s in lowered for s in _SHED) or code in _OVERLOADED:
        # Sent as UNAVAILABLE, but the server is up: not "unreachable", and not retried (a retry
        # adds load where there is too much).
        return ServerOverloadedError(f"{model}: the server at {target} is overloaded: {message}")
    # About a model, not the server ("Server is not ready" is the server's state: unavailable).
    not_loaded = "model" in lowered and (
        any(s in lowered for s in _NOT_LOADED) or bool(_VERSION_MISSING.search(lowered))
    )
    if code in _NOT_FOUND or "unknown model" in lowered or not_loaded:
        if not_loaded:
            return ModelNotReadyError(
                f"model {model!r} is not ready at {target} (it may have failed to load; "
                "see the server log or `python -m serving status`)"
            )
        return ModelNotFoundError(f"model {model!r} is not served at {target}")
    if code in _TIMEOUT:
        if connected is False:  # the deadline passed while connecting: nothing was sent
            return ServerUnavailableError(f"Triton server at {target} is unreachable: connect timed out")
        return RequestTimeoutError(f"request to {target} timed out")
    if code in _UNAVAILABLE:
        return ServerUnavailableError(f"Triton server at {target} is unreachable: {message}")
    if code in _BAD_INPUT:
        return BadInputError(f"{model}: request rejected by the server: {message}")
    return InferenceError(f"{model}: server error ({code or 'no status'}): {message}")


def classify(
    error: BaseException, target: object, model: str | None = None, *, connected: bool | None = None
) -> ClientError:
    """Any exception from a call to the server at `target` (an Endpoint or "host:port") as our typed
    error; raise it `from error`. `connected`: whether the transport knows its connection was up
    when the call failed (None: unknown); see :func:`classify_status`.

    Takes tritonclient's InferenceServerException, grpc's RpcError, aiohttp's and the OS's
    connection errors, timeouts, and anything else (an InferenceError naming it): never raises.
    """
    if isinstance(error, ClientError):
        return error
    status = _status(error)
    if status is not None:
        return classify_status(*status, target, model, connected=connected)
    name = type(error).__name__
    transport = _aiohttp_kind(error)
    if transport == "connect":
        return ServerUnavailableError(f"Triton server at {target} is unreachable: {name}: {error}")
    if transport == "broken":  # the server went away mid-answer: idempotent, so resendable
        return ServerUnavailableError(f"Triton server at {target} dropped the connection: {name}: {error}")
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        if connected is False:
            return ServerUnavailableError(f"Triton server at {target} is unreachable: connect timed out")
        return RequestTimeoutError(f"request to {target} timed out")
    if isinstance(error, OSError):  # refused, reset, no route: the OS's connection errors
        return ServerUnavailableError(f"Triton server at {target} is unreachable: {name}: {error}")
    return InferenceError(f"{model}: unexpected error talking to {target}: {name}: {error}")


def _status(error: BaseException) -> tuple[str, str] | None:
    """(code, message) of an error the server (or gRPC) reported with a status."""
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        return str(error.status() or ""), error.message() or str(error)
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpc comes with tritonclient[grpc]
        return None
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code = error.code()
        return (code.name if code is not None else ""), (error.details() or "")
    return None


def _aiohttp_kind(error: BaseException) -> str | None:
    """ "connect" when aiohttp never got a connection (refused, DNS, connect timeout), "broken" when
    it lost one during the exchange, else None."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        return None
    if isinstance(error, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return "connect"
    # ServerTimeoutError is a ClientConnectionError too, but a read timeout: the caller's timeout.
    if isinstance(error, aiohttp.ClientPayloadError) or (
        isinstance(error, aiohttp.ClientConnectionError) and not isinstance(error, TimeoutError)
    ):
        return "broken"
    return None
