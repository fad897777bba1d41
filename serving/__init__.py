"""Serving stage: a Triton model repository, and the real tritonserver run locally on CPU."""


class ServingError(Exception):
    """A user-facing serving failure; the CLI prints it as one line and exits non-zero."""
