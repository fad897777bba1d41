"""Clients for the served models: gRPC/HTTP, sync and asyncio, classification, verify, load test.

No torch here: a client machine needs numpy, Pillow and tritonclient only.
"""


class ClientError(Exception):
    """A user-facing client failure; the CLI prints it as one line and exits non-zero."""


class ServerUnavailableError(ClientError):
    """The server cannot be reached (down, wrong address) after the bounded retries."""


class ModelNotFoundError(ClientError):
    """The server does not know the model."""


class ModelNotReadyError(ClientError):
    """The server knows the model but it is not ready (loading, or failed to load)."""


class BadInputError(ClientError):
    """The request was rejected: wrong shape, dtype, batch size, or an unreadable image."""


class InferenceError(ClientError):
    """Any other failure reported by the server for one request."""
