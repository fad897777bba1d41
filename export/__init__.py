"""Export stage: torchvision architectures to verified, optimized ONNX graphs.

Importing this package (or :mod:`export.registry`, :mod:`export.golden`,
:mod:`export.preprocess`) must not import torch: the clients use those modules.
"""

__version__ = "0.1.0"


class ExportError(Exception):
    """A user-facing export failure; the CLI prints it as one line and exits non-zero."""


class UnknownArchitectureError(ExportError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
