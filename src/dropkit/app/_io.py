"""Output files of the ``dropkit`` command: checked before any work, written atomically.

The command's promise, kept here in one place:

* every output path is checked before training starts (a typo costs nothing);
* an input file is never an output (paths are compared after resolving links);
* an existing result is never replaced without ``--force``;
* everything is written under a temporary name beside its final place and renamed when
  complete, all outputs of one command together, with Ctrl-C held back during the renames, so
  an interrupted command leaves either nothing or the complete set.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from dropkit.app.errors import DataError

__all__ = ["Outputs", "held_interrupts"]


@contextmanager
def held_interrupts(reraise: bool = True) -> Iterator[None]:
    """Hold back SIGINT for the duration of the block; a Ctrl-C received meanwhile is raised after it
    (``reraise=True``) or dropped, for a block that completes the work the user asked for.

    Outside the main thread (where Python cannot install signal handlers) the block runs as is.

    Example:
        >>> with held_interrupts():
        ...     done = True
        >>> done
        True
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and reraise:
        raise KeyboardInterrupt


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


def _check_writable(path: Path, flag: str) -> None:
    """Check that ``path``'s folder exists or can be made, by creating and removing a probe file."""
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise DataError(f"{flag} {path}: {ancestor} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dropkit-probe-", dir=ancestor)
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot write in {ancestor} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _temp_name(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@dataclass
class Outputs:
    """The outputs of one command: declared (and checked) up front, staged, then committed together.

    Args:
        inputs: the files the command reads; none may be an output or lie inside an output folder.
        force: allow replacing an existing output (a folder is replaced as a whole).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> outputs = Outputs(inputs=[], force=False)
        >>> target = outputs.file(d / "out.csv", "--output")
        >>> with outputs.staged() as staged:
        ...     _ = staged[target].write_text("a\\n1\\n")
        >>> sorted(p.name for p in d.iterdir())
        ['out.csv']
    """

    inputs: list[Path]
    force: bool = False
    _files: list[Path] = field(default_factory=list)
    _folders: list[Path] = field(default_factory=list)

    def _check_common(self, path: Path, flag: str) -> None:
        for source in self.inputs:
            if _same(path, source):
                raise DataError(f"{flag} {path} is an input file of this command; choose another path")
        for other in self._files + self._folders:
            a, b = path.resolve(), other.resolve()
            if _same(path, other) or b in a.parents or a in b.parents:
                raise DataError(f"{flag} {path} overlaps another output ({other}); choose separate paths")

    def file(self, path: Path, flag: str) -> Path:
        """Declare an output file: it must not be an input, a folder, or (without force) exist."""
        path = Path(path)
        self._check_common(path, flag)
        if path.is_dir():
            raise DataError(f"{flag} {path} is a folder; give a file name")
        if path.exists() and not self.force:
            raise DataError(f"{flag} {path} exists; pass --force to replace it")
        _check_writable(path, flag)
        self._files.append(path)
        return path

    def folder(self, path: Path, flag: str) -> Path:
        """Declare an output folder: not a file; if it exists and holds anything, only with force,
        and never when an input file lies inside it."""
        path = Path(path)
        self._check_common(path, flag)
        if path.exists() and not path.is_dir():
            raise DataError(f"{flag} {path} exists and is not a folder")
        if path.is_dir() and any(path.iterdir()):
            if not self.force:
                raise DataError(f"{flag} {path} exists and is not empty; pass --force to replace it, "
                                "or choose a new folder")
            inside = [s for s in self.inputs if path.resolve() in s.resolve().parents]
            if inside:
                raise DataError(f"{flag} {path} holds the input {inside[0]}; --force would delete it")
        _check_writable(path / "probe", flag)
        self._folders.append(path)
        return path

    @contextmanager
    def staged(self) -> Iterator[dict[Path, Path]]:
        """Yield ``{final path: temporary path}`` for every declared output; on a clean exit rename them
        all into place (SIGINT held back), otherwise remove every temporary and every folder made."""
        made: list[Path] = []
        staged: dict[Path, Path] = {}
        try:
            for path in self._files + self._folders:
                for parent in reversed(path.parents):
                    if not parent.exists():
                        parent.mkdir()
                        made.append(parent)
            for path in self._files:
                staged[path] = _temp_name(path, "partial")
            for path in self._folders:
                staged[path] = _temp_name(path, "partial")
                staged[path].mkdir()
            yield staged
            with held_interrupts(reraise=False):  # once renaming starts, the set is completed
                self._commit(staged)
        except BaseException:
            with held_interrupts():
                for temp in staged.values():
                    _remove(temp)
                for parent in reversed(made):
                    if parent.is_dir() and not any(parent.iterdir()):
                        parent.rmdir()
            raise

    def _commit(self, staged: dict[Path, Path]) -> None:
        replaced = []
        for final, temp in staged.items():
            if final.is_dir():  # an empty folder, or one that force allows replacing
                old = _temp_name(final, "old")
                final.rename(old)
                replaced.append(old)
            os.replace(temp, final)
        for old in replaced:
            _remove(old)
