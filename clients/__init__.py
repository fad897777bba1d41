"""Clients for the served models: gRPC/HTTP, asyncio and sync, classification, verify, load test.

The base install (`pip install cnn-deploy`): numpy, Pillow, tritonclient, rich, matplotlib. Never
torch, and never the export or serving stages.
"""

from cnn_deploy_core import CnnDeployError


class ClientError(CnnDeployError):
    """A user-facing client failure; the CLI prints it as one line and exits non-zero."""


class ServerUnavailableError(ClientError):
    """The server cannot be reached (down, wrong address) after the bounded retries."""


class ServerOverloadedError(ClientError):
    """The server refused the request because its queue is full; not retried (that adds load)."""


class RequestTimeoutError(ClientError):
    """The server took longer than the timeout; not retried (the request may still be running)."""


class ModelNotFoundError(ClientError):
    """The server does not know the model."""


class ModelNotReadyError(ClientError):
    """The server knows the model but it is not ready (loading, or failed to load)."""


class BadInputError(ClientError):
    """The request was rejected: wrong shape, dtype, batch size, or an unreadable image."""


class InferenceError(ClientError):
    """Any other failure reported by the server for one request."""


class LoadTestError(ClientError):
    """A load test that cannot run as asked (bad settings, unusable golden set)."""
