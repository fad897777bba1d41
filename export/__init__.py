"""Export stage: torchvision architectures to verified, optimized ONNX graphs (needs PyTorch).

`python -m export build|analyze|compare|benchmark`. Install with `pip install 'cnn-deploy[export,cpu]'`.
"""

from cnn_deploy_core import CnnDeployError, __version__

__all__ = ["ExportError", "__version__"]


class ExportError(CnnDeployError):
    """A user-facing export failure; the CLI prints it as one line and exits non-zero."""
