"""A Ctrl-C while the ``dropkit`` command starts (importing torch takes a second or two) ends it
with one line and exit code 130 instead of a traceback from inside an import.

``dropkit/app/__init__.py`` imports this module first (which calls :func:`begin`), then loads
torch and the library, and calls :func:`end`; ``import dropkit`` alone loads nothing heavy, so
the handler is in place before torch starts loading. Only the command is affected: a program that
imports dropkit, or even dropkit.app (for the demo's models), keeps its own SIGINT handling, and
the handler lasts only while the package loads. Nothing has been written at that point, so leaving at once
is safe.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType

__all__ = ["begin", "end", "is_command"]

_previous: list[object] = []


def is_command() -> bool:
    """True when this process is the ``dropkit`` command (``dropkit ...`` or ``python -m dropkit ...``).

    Example:
        >>> is_command()  # the test runner is not the command
        False
    """
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "dropkit":
        return True
    return bool(sys.argv) and Path(sys.argv[0]).name in ("dropkit", "dropkit.exe")


def _interrupted(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("dropkit: interrupted while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(130)


def begin() -> None:
    """Install the start-up SIGINT handler, in the command only.

    Example:
        >>> begin(); end()
    """
    import threading

    if is_command() and threading.current_thread() is threading.main_thread():
        _previous.append(signal.signal(signal.SIGINT, _interrupted))


def end() -> None:
    """Put back the SIGINT handler that :func:`begin` replaced.

    Example:
        >>> end()
    """
    if _previous:
        signal.signal(signal.SIGINT, _previous.pop())  # type: ignore[arg-type]


begin()
