"""cnn-deploy's shared bottom layer: torch-free code that every stage needs.

Registry data, file layout, paths, preprocessing, golden sets, metrics, dtypes, console, pipeline
steps, file utilities and the sample photos. It imports numpy, Pillow and rich only, never one of
the stages (`export`, `serving`, `clients`) above it; `make lint` enforces that.
"""

__version__ = "0.2.0"


class CnnDeployError(Exception):
    """Base of every user-facing error; a CLI prints it as one line and exits non-zero."""


class UnknownArchitectureError(CnnDeployError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
