"""Classes named the way a user imports them: ``torch.nn.Dropout``, ``dropkit.Dropout``."""

from __future__ import annotations

import importlib

__all__ = ["public_name"]


def public_name(cls: type) -> str:
    """The shortest ``package.Class`` path that imports ``cls``, else its defining module's path.

    The module path is walked from its top package down, and the first package that holds
    ``cls`` under its name wins (``torch.nn.modules.dropout.Dropout`` is ``torch.nn.Dropout``).

    Example:
        >>> import torch
        >>> public_name(torch.nn.Dropout)
        'torch.nn.Dropout'
        >>> import dropkit
        >>> public_name(dropkit.Dropout)
        'dropkit.Dropout'
    """
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        path = ".".join(parts[:end])
        try:
            module = importlib.import_module(path)
        except ImportError:
            continue
        if getattr(module, cls.__qualname__, None) is cls:
            return f"{path}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def repr_name(module: object) -> str:
    """The name ``repr`` gives a dropkit module: its public path (``dropkit.Dropout``) for
    dropkit's own classes, the bare class name for any other class (a user's subclass).

    Example:
        >>> import dropkit
        >>> repr_name(dropkit.Dropout(0.1))
        'dropkit.Dropout'
    """
    cls = type(module)
    if cls.__module__ == "dropkit" or cls.__module__.startswith("dropkit."):
        return public_name(cls)
    return cls.__name__
