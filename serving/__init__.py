"""Serving stage: a Triton model repository, and the real tritonserver run locally on CPU.

`python -m serving repo|up|status|down|rollback`. Install with `pip install 'cnn-deploy[serving,cpu]'`.
"""

from cnn_deploy_core import CnnDeployError


class ServingError(CnnDeployError):
    """A user-facing serving failure; the CLI prints it as one line and exits non-zero."""
