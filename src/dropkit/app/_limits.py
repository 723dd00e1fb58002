"""How much a ``dropkit`` command may ask for: bounds on the flags and a memory estimate up front.

A flag such as ``--hidden 1000000000`` or ``--mc-samples 1000000000`` is not a typo the
allocator should discover after minutes of training: :func:`check_memory` estimates the peak
memory of a sweep from the sizes involved and refuses, in one line, a sweep that cannot fit.
"""

from __future__ import annotations

import os

from dropkit.app.errors import DataError

__all__ = ["FLAG_LIMITS", "available_memory", "check_memory", "sweep_bytes"]

# The largest value each flag accepts: far above any sensible use, far below what breaks things.
FLAG_LIMITS: dict[str, float] = {
    "hidden": 1_000_000,
    "epochs": 1_000_000,
    "batch_size": 10_000_000,
    "seeds": 10_000,
    "mc_samples": 100_000,
    "lr": 10.0,
    "train_size": 10_000_000,
    "threads": max(os.cpu_count() or 1, 1),
}
_FLOAT32 = 4


def sweep_bytes(rows: int, test_rows: int, features: int, outputs: int, hidden: int, batch_size: int,
                mc_samples: int) -> int:
    """Estimated peak bytes of one training run of the MLP, float32 throughout.

    Parameters ``P = (F + 1) H + (H + 1) C`` are held four times (weights, gradients and Adam's
    two moments); the loss over all training rows holds about three ``(N, H)`` activations; MC
    dropout runs ``T`` replicas of the held-out rows in one batch, about three ``(T N_test, H)``
    activations plus the ``(T, N_test, C)`` outputs and their softmax.

    Example:
        >>> sweep_bytes(100, 50, 4, 2, 8, 32, 10) > 0
        True
    """
    params = (features + 1) * hidden + (hidden + 1) * outputs
    training = 4 * params + 3 * max(rows, batch_size) * (hidden + features)
    mc = mc_samples * test_rows * (features + 3 * hidden + 3 * outputs)
    data = 2 * (rows + test_rows) * (features + 1)
    return _FLOAT32 * (training + mc + data)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), None where unknown.

    Example:
        >>> m = available_memory()
        >>> m is None or m > 0
        True
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, available: int | None = None) -> None:
    """Raise :class:`DataError` when ``needed`` bytes exceed the memory available.

    Args:
        needed: the estimate, for instance from :func:`sweep_bytes`.
        what: the settings that need it, named in the message.
        available: bytes available (default: :func:`available_memory`).

    Example:
        >>> check_memory(10 * 2**30, "--hidden 1000000", available=2**30)
        Traceback (most recent call last):
        ...
        dropkit.app.errors.DataError: --hidden 1000000 needs about 10.0 GiB of memory; 1.0 GiB is available
    """
    available = available_memory() if available is None else available
    if available is not None and needed > available:
        raise DataError(f"{what} needs about {needed / 2**30:.1f} GiB of memory; "
                        f"{available / 2**30:.1f} GiB is available")
