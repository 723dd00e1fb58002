"""Finding dropout-family modules in a model and reading or writing their rates.

Shared by :mod:`dropkit.patch` and :mod:`dropkit.schedules`. A module belongs to the family if
it is one of torch.nn's dropout classes, one of dropkit's stochastic layers with a float rate,
timm's ``DropPath``, torchvision's ``StochasticDepth``, ``DropBlock2d`` and ``DropBlock3d``, or
a per-sample drop path of the ``drop_prob`` pattern (see :func:`is_drop_prob_path`: Hugging
Face's ``ConvNextDropPath``, ``SwinDropPath``, ``BeitDropPath``, ``Dinov2DropPath`` and the
other ``*DropPath`` classes of transformers). The third-party classes are looked up in
``sys.modules`` only: a model that contains one has already imported its library, and a model
that does not never pays for importing it.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import re
import sys
from collections.abc import Callable, Iterator, Sequence

from torch import nn

from dropkit.functional._checks import check_p
from dropkit.layers._base import StreamModule

# The torch.nn dropout classes; each keeps its rate in ``p`` and has ``inplace``.
TORCH_DROPOUTS: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

# (module in sys.modules, class name, attribute holding the drop rate)
THIRD_PARTY: tuple[tuple[str, str, str], ...] = (
    ("timm.layers.drop", "DropPath", "drop_prob"),
    ("timm.models.layers.drop", "DropPath", "drop_prob"),
    ("torchvision.ops.stochastic_depth", "StochasticDepth", "p"),
    ("torchvision.ops.drop_block", "DropBlock2d", "p"),
    ("torchvision.ops.drop_block", "DropBlock3d", "p"),
)

ModuleFilter = str | type | Callable[[str, nn.Module], bool] | Sequence[str | type]


def third_party_classes() -> list[tuple[type, str]]:
    """``(class, rate attribute)`` for each third-party family class whose library is imported."""
    found = []
    for module_name, class_name, attr in THIRD_PARTY:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and all(cls is not c for c, _ in found):
            found.append((cls, attr))
    return found


# The per-sample drop path formula, with whitespace removed: keep_prob = 1 - drop_prob, one draw
# per sample (shape (N, 1, ..., 1)), floor(u + keep_prob) as the keep mask, division by keep_prob.
_DROP_PROB_PATH = (
    re.compile(r"keep_prob=1-(?:self\.)?drop_prob"),
    re.compile(r"\(\w+\.shape\[0\],\)\+\(1,\)\*\(\w+\.(?:ndim|dim\(\))-1\)"),
    re.compile(r"torch\.rand\("),
    re.compile(r"floor\w*\((?:\w+\+keep_prob)?\)"),
    re.compile(r"(?:\.div\(keep_prob\)|/keep_prob)"),
)
_CALLS_DROP_PATH = re.compile(r"\bdrop_path\(\w+,self\.drop_prob,self\.training\)")


def _source(obj: object) -> str:
    try:
        return re.sub(r"\s+", "", inspect.getsource(obj))
    except (OSError, TypeError):
        return ""


@functools.lru_cache(maxsize=256)
def is_drop_prob_path(cls: type) -> bool:
    """Whether ``cls`` is a per-sample drop path of the ``drop_prob`` pattern.

    That is: its ``forward`` reads ``self.drop_prob`` and either computes, or calls a function
    ``drop_path`` of its own module that computes, ``x.div(keep_prob) * floor(u + keep_prob)``
    with one uniform ``u`` per sample and ``keep_prob = 1 - drop_prob`` (the formula of
    :func:`dropkit.functional.drop_path` with ``scale_by_keep=True``). Hugging Face's
    ``*DropPath`` classes follow it; the check reads the source, so a class that only shares the
    name is not taken.

    Example:
        >>> is_drop_prob_path(nn.Dropout)
        False
    """
    forward = _source(getattr(cls, "forward", None))
    if "self.drop_prob" not in forward or "scale_by_keep" in forward:
        return False
    body = forward
    if _CALLS_DROP_PATH.search(forward):
        helper = getattr(sys.modules.get(cls.__module__), "drop_path", None)
        body = _source(helper) if callable(helper) else ""
    return all(pattern.search(body) for pattern in _DROP_PROB_PATH)


def drop_prob_path(module: nn.Module) -> bool:
    """Whether ``module`` is a drop path of the ``drop_prob`` pattern with a float rate."""
    rate = module.__dict__.get("drop_prob")
    if not isinstance(rate, float) or isinstance(module, StreamModule):
        return False
    return is_drop_prob_path(type(module))


def rate_attr(module: nn.Module) -> str | None:
    """The name of the attribute holding ``module``'s drop rate, or None if it is not in the family."""
    if isinstance(module, TORCH_DROPOUTS):
        return "p"
    if isinstance(module, StreamModule):
        p = getattr(module, "p", None)
        return "p" if isinstance(p, float) else None
    for cls, attr in third_party_classes():
        if isinstance(module, cls):
            return attr
    if drop_prob_path(module):
        return "drop_prob"
    return None


def get_rate(module: nn.Module) -> float:
    """The drop rate of a family module (ValueError if ``module`` is not one)."""
    attr = rate_attr(module)
    if attr is None:
        raise ValueError(f"{type(module).__name__} is not a dropout-family module")
    return float(getattr(module, attr))


def set_rate(module: nn.Module, p: float) -> None:
    """Set the drop rate of a family module in place after checking ``p`` is in [0, 1]."""
    attr = rate_attr(module)
    if attr is None:
        raise ValueError(f"{type(module).__name__} is not a dropout-family module")
    setattr(module, attr, check_p(p))


def check_filter(spec: object, name: str) -> None:
    """TypeError naming ``spec`` unless it is None, a glob, a class, a callable or a list of those."""
    if spec is None or isinstance(spec, (str, type)) or callable(spec):
        return
    if isinstance(spec, Sequence) and all(isinstance(s, (str, type)) for s in spec):
        return
    raise TypeError(
        f"{name} must be a name pattern, a module class, a callable (name, module) -> bool or a "
        f"list of patterns and classes, got {spec!r}"
    )


def matches(spec: ModuleFilter | None, name: str, module: nn.Module, default: bool) -> bool:
    """Whether ``(name, module)`` passes the filter ``spec`` (``default`` when ``spec`` is None).

    A string is an ``fnmatch`` pattern on the qualified name (``"encoder.*"``), a class matches
    its instances, a callable is called as ``spec(name, module)``, and a list matches if any
    entry does.
    """
    if spec is None:
        return default
    if isinstance(spec, str):
        return fnmatch.fnmatchcase(name, spec)
    if isinstance(spec, type):
        return isinstance(module, spec)
    if callable(spec):
        return bool(spec(name, module))
    return any(matches(s, name, module, default) for s in spec)


def family_modules(
    model: nn.Module, include: ModuleFilter | None = None, exclude: ModuleFilter | None = None
) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` for each family module of ``model`` that passes the filters."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_filter(include, "include")
    check_filter(exclude, "exclude")
    for name, module in model.named_modules():
        if rate_attr(module) is None:
            continue
        if matches(include, name, module, True) and not matches(exclude, name, module, False):
            yield name, module
