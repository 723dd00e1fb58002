"""Finding dropout-family modules in a model and reading or writing their rates.

Shared by :mod:`dropkit.patch` and :mod:`dropkit.schedules`. A module belongs to the family if
it is one of torch.nn's dropout classes, one of dropkit's stochastic layers with a float rate,
timm's ``DropPath`` or torchvision's ``StochasticDepth``, ``DropBlock2d`` and ``DropBlock3d``.
The third-party classes are looked up in ``sys.modules`` only: a model that contains one has
already imported its library, and a model that does not never pays for importing it.
"""

from __future__ import annotations

import fnmatch
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
