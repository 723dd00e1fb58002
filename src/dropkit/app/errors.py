"""The errors the ``dropkit`` command owns, and its one-line argument parser.

The command reports these two kinds of error in one line on stderr with exit code 2 (and
argparse's usage errors, through :class:`Parser`, the same way); every other exception, a
``ValueError`` raised by the library included, is a bug and ends in a traceback.

* :class:`UsageError`: options that are valid one by one but not with each other or with the
  data (``--train-size`` that leaves no test rows, ``dropkit bench --sizes 0``).
* :class:`DataError`: a problem with the user's data or files (text in a feature column, a
  damaged model file, an output that would overwrite an input), or a run larger than the
  memory the machine has.
"""

from __future__ import annotations

import argparse

__all__ = ["UsageError", "DataError", "Parser"]


class UsageError(ValueError):
    """Options the command cannot run with; its message is one line meant for the user.

    Example:
        >>> str(UsageError("--train-size must leave test rows"))
        '--train-size must leave test rows'
    """


class DataError(ValueError):
    """A problem with the user's data or files; its message is one line meant for the user.

    Example:
        >>> issubclass(DataError, ValueError) and not issubclass(DataError, UsageError)
        True
    """


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the usage first, which makes two lines).

    Example:
        >>> Parser(prog="dropkit x").parse_args(["--nope"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
