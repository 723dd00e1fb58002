"""Standard output and error that may go away: the command finishes its work and ends quietly.

A reader that closes its end of a pipe early (``head``, a pager that is quit, ``| true``) makes
the next write fail with EPIPE; a terminal that goes away sends SIGHUP and then fails writes
with EIO. Unix tools end quietly in both cases. The ``dropkit`` command does too, but only after
the work it was asked for is done and its files are published: a sweep that took an hour is
never lost because its table could not be printed.

While :func:`guarded` is active:

* ``sys.stdout`` and ``sys.stderr`` are wrappers whose writes never raise for a closed reader:
  the first failure marks the stream broken, points its file descriptor at ``/dev/null`` (so
  the interpreter's final flush has nowhere to fail) and drops that write and every later one;
* SIGHUP is recorded instead of ending the process.

:attr:`Guard.exit_code` then says how the command ends: 129 (128 + SIGHUP) after a hang-up,
141 (128 + SIGPIPE, what a shell reports for a tool killed by SIGPIPE) after a broken pipe,
otherwise the command's own code.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO

__all__ = ["EXIT_HANGUP", "EXIT_PIPE", "Guard", "guarded"]

EXIT_HANGUP = 128 + 1  # SIGHUP
EXIT_PIPE = 128 + 13  # SIGPIPE
# EPIPE: the reader closed its end; EIO: the terminal is gone; EBADF: the descriptor was closed.
_GONE = (errno.EPIPE, errno.EIO, errno.EBADF, errno.ECONNRESET)


def _is_gone(error: BaseException) -> bool:
    return isinstance(error, BrokenPipeError) or (isinstance(error, OSError) and error.errno in _GONE)


class _Stream:
    """A text stream whose writes and flushes never fail for a reader that went away."""

    def __init__(self, inner: TextIO, guard: Guard) -> None:
        self._inner, self._guard, self.broken = inner, guard, False

    def _gone(self) -> None:
        self.broken = True
        self._guard.broken_pipe = True
        try:  # what is still buffered, and every later write, goes to /dev/null
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._inner.fileno())
            finally:
                os.close(null)
        except (OSError, ValueError, AttributeError):
            pass  # no descriptor (an in-memory stream): dropping the writes is enough

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._inner.write(text)
            except (OSError, ValueError) as e:
                if not (_is_gone(e) or isinstance(e, ValueError)):  # ValueError: the stream was closed
                    raise
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._inner.flush()
            except (OSError, ValueError) as e:
                if not (_is_gone(e) or isinstance(e, ValueError)):
                    raise
                self._gone()

    def isatty(self) -> bool:
        return not self.broken and self._inner.isatty()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


@dataclass
class Guard:
    """What happened to the standard streams while :func:`guarded` was active."""

    broken_pipe: bool = False
    hangup: bool = False
    streams: list[_Stream] = field(default_factory=list)

    def exit_code(self, code: int) -> int:
        """The command's exit code given its own ``code``: an error (non-zero) stays as it is."""
        self.flush()
        if code != 0:
            return code
        if self.hangup:
            return EXIT_HANGUP
        return EXIT_PIPE if self.broken_pipe else code

    def flush(self) -> None:
        """Flush both streams now, so that a closed reader is noticed here and not at exit."""
        for stream in self.streams:
            stream.flush()


@contextmanager
def guarded() -> Iterator[Guard]:
    """Wrap ``sys.stdout`` / ``sys.stderr`` and record SIGHUP for the duration of the block.

    Streams that are None (a descriptor closed at start-up) stay None; outside the main thread
    the SIGHUP handler is not installed (Python allows handlers only there).

    Example:
        >>> import io
        >>> class Closed(io.StringIO):
        ...     def write(self, text):
        ...         raise BrokenPipeError(32, "Broken pipe")
        >>> saved, sys.stdout = sys.stdout, Closed()
        >>> try:
        ...     with guarded() as guard:
        ...         print("the reader has gone")
        ...         code = guard.exit_code(0)
        ... finally:
        ...     sys.stdout = saved
        >>> code
        141
    """
    guard = Guard()
    saved = sys.stdout, sys.stderr
    if sys.stdout is not None:
        sys.stdout = _Stream(sys.stdout, guard)  # type: ignore[assignment]
        guard.streams.append(sys.stdout)  # type: ignore[arg-type]
    if sys.stderr is not None:
        sys.stderr = _Stream(sys.stderr, guard)  # type: ignore[assignment]
        guard.streams.append(sys.stderr)  # type: ignore[arg-type]
    previous = None
    hup = getattr(signal, "SIGHUP", None)
    if hup is not None and threading.current_thread() is threading.main_thread():

        def hung_up(signum: int, frame: FrameType | None) -> None:
            guard.hangup = True

        previous = signal.signal(hup, hung_up)
    try:
        yield guard
    finally:
        guard.flush()
        if previous is not None:
            signal.signal(hup, previous)  # type: ignore[arg-type]
        sys.stdout, sys.stderr = saved
