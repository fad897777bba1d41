"""Rich consoles shared by the CLIs: tables on stdout, progress and errors on stderr (torch-free)."""

from __future__ import annotations

import os
import signal
import sys
import threading

from rich.console import Console

from cnn_deploy_core import CnnDeployError

# Piped output (CI logs, README examples) gets a readable width instead of rich's 80 columns.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 120)


def error(message: str) -> None:
    """One clear line on stderr (no markup parsing of the message itself)."""
    stderr.print("[red]error:[/red] ", end="")
    stderr.print(message, markup=False, highlight=False)


# A stage run without its extra: the module that is missing -> what to install.
EXTRAS = {
    "torch": "export",
    "torchvision": "export",
    "onnx": "export",
    "onnxscript": "export",
    "onnx_ir": "export",
    "onnxruntime": "cpu",
    "pytriton": "serving",
}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that what the command started (a throwaway server, a
    load generator, temporary files) is stopped and removed on the way out, as after Ctrl-C."""


def _terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


def dispatch(commands: dict, args, user_errors: tuple[type[BaseException], ...] = (CnnDeployError,)) -> int:
    """Run `commands[args.command]`; a user error is one line on stderr and exit code 1; SIGTERM
    unwinds the command like Ctrl-C (exit code 143) instead of killing it where it stands."""
    own = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if own else None
    try:
        return commands[args.command](args)
    except Terminated:
        stderr.print("terminated")
        return 128 + signal.SIGTERM
    except user_errors as e:
        error(str(e))
        return 1
    except ModuleNotFoundError as e:  # the client-only install runs a stage that needs an extra
        top = (e.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        extra = EXTRAS[top]
        hint = "'cnn-deploy[cpu]' (or [gpu])" if extra == "cpu" else f"'cnn-deploy[{extra}]'"
        error(f"`{args.command}` needs {top}, which is not installed: pip install {hint}")
        return 1
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return 130
    except Exception as e:  # a bug, not a user error: still one line, the trace on request
        if os.environ.get("CNN_DEPLOY_DEBUG"):
            raise
        error(f"unexpected {e.__class__.__name__}: {e} (set CNN_DEPLOY_DEBUG=1 for the traceback)")
        return 1
    finally:
        if own:  # None: a handler not installed from Python; the default is the closest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
